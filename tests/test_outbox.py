"""The relay's outbox shared by several processes (every front end of `relay.processes`, each
`quarantine release`): one's start removes only a crash's stale temporary files, never
another's write in flight."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from mailgate.filter.store.durable import write_durably
from mailgate.relay.outbox import STALE_AFTER, Outbox

pytestmark = pytest.mark.timeout(120)

# What every front end and every release does with the outbox, in a process of its own.
OPEN_OUTBOX = "import sys; from mailgate.relay.outbox import Outbox; Outbox(sys.argv[1])"
DELIVER_MANY = """\
import sys
from mailgate.relay.outbox import Outbox
for n in range(int(sys.argv[2])):
    # As release_message does: a new Outbox for every message.
    raw = b"Subject: %d\\r\\n\\r\\nbody\\r\\n" % n
    Outbox(sys.argv[1]).deliver(raw, "a@example.com", ["b@example.org"])
"""


def test_a_start_in_another_process_leaves_a_write_in_flight_alone(tmp_path: Path) -> None:
    outbox = Outbox(tmp_path / "outbox")
    halfway, go_on = threading.Event(), threading.Event()

    def chunks() -> Iterator[bytes]:
        yield b"Subject: in flight\r\n\r\n"
        halfway.set()
        go_on.wait(60)
        yield b"the rest of the message\r\n"

    crashed = outbox.tmp / "crashed-long-ago.eml"
    crashed.write_bytes(b"Subject: half a message")
    long_ago = time.time() - STALE_AFTER.total_seconds() - 60
    os.utime(crashed, (long_ago, long_ago))
    final = outbox.path / "in-flight.eml"
    with ThreadPoolExecutor(1) as writer:
        written = writer.submit(write_durably, final, outbox.tmp, chunks())
        assert halfway.wait(60)
        subprocess.run([sys.executable, "-c", OPEN_OUTBOX, str(outbox.path)], check=True)
        go_on.set()
        written.result(60)  # before: FileNotFoundError, its temporary file was taken
    assert final.read_bytes() == b"Subject: in flight\r\n\r\nthe rest of the message\r\n"
    assert not crashed.exists()  # a crash's leftover still goes
    assert list(outbox.tmp.iterdir()) == []


def test_two_processes_delivering_at_once_lose_nothing(tmp_path: Path) -> None:
    folder = tmp_path / "outbox"
    each = 60
    runs = [
        subprocess.Popen([sys.executable, "-c", DELIVER_MANY, str(folder), str(each)])
        for _ in range(2)
    ]
    assert [run.wait(100) for run in runs] == [0, 0]
    assert len(list(folder.glob("*.eml"))) == 2 * each
    assert list((folder / ".tmp").iterdir()) == []

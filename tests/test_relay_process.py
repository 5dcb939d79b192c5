"""`mailgate relay --config FILE` as a real process: startup, a bad file, a clean stop, and
being killed (SIGKILL) while it has a message: during the scan, the quarantine write and the
next hop's DATA."""

from __future__ import annotations

import contextlib
import os
import signal
import smtplib
import sqlite3
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest

from mailgate.filter.store.quarantine import LocalQuarantine
from tests.support.cli import mailgate_process, run_mailgate
from tests.support.net import free_port
from tests.support.processes import ChildProcess, bytes_written, children_of
from tests.support.relay_harness import write_config
from tests.support.samples import message
from tests.support.smtp_client import RECIPIENTS, SENDER, banner, connect, send_to
from tests.support.smtp_sink import SmtpSink
from tests.support.waiting import wait_until

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(name="relay_process")
def relay_process_fixture(tmp_path, pack):
    started: list[ChildProcess] = []

    def run(relay: dict, **engine: object) -> tuple[ChildProcess, int, Path]:
        """`mailgate relay` on a configuration in tmp_path (the same folders every time)."""
        port = free_port()
        config = write_config(
            tmp_path,
            pack,
            {"listen": f"127.0.0.1:{port}", **relay},
            engine={"workers": 1, **engine},
        )
        process = mailgate_process(
            "relay", "--config", str(config.source), log=tmp_path / "relay.log",
            ready=lambda: banner(port).startswith(b"220"),
        )  # fmt: skip
        started.append(process)
        return process.start(), port, tmp_path

    yield run
    for process in started:
        process.stop()


# --- killed with SIGKILL at the three moments a message is in the relay's hands -------------
# Each moment is held open by the relay's surroundings, not guessed by timing: a scan worker
# stopped (SIGSTOP) so no verdict can come, the quarantine's index locked by the test so put
# waits for it, a next hop that stops reading mid-DATA. The client then gets no reply at all
# (it still has the message and sends it again), and no half message is left anywhere.


def in_data(port: int) -> smtplib.SMTP:
    """A session that has had its 354: what is sent next is the message."""
    client = connect(port)
    client.ehlo()
    assert client.mail(SENDER)[0] == 250
    assert client.rcpt(RECIPIENTS[0])[0] == 250
    client.putcmd("data")
    assert client.getreply()[0] == 354
    return client


def kill(relay: ChildProcess) -> None:
    assert relay.process is not None
    relay.process.send_signal(signal.SIGKILL)
    relay.process.wait(10)


def assert_no_reply(client: smtplib.SMTP) -> None:
    with pytest.raises(smtplib.SMTPServerDisconnected):
        client.getreply()
    client.close()


def assert_nothing_kept(folder: Path, sink: SmtpSink | None = None) -> None:
    assert [p for p in (folder / "outbox").rglob("*") if p.is_file()] == []  # .tmp/ included
    assert LocalQuarantine(folder / "quarantine").list() == []
    assert list((folder / "quarantine" / "tmp").iterdir()) == []
    assert sink is None or sink.received == []


def scan_worker(relay: ChildProcess) -> int:
    """The one scan worker (engine.workers: 1): the forkserver's child, the relay's grandchild."""
    [worker] = [pid for child in children_of(relay.pid) for pid in children_of(child)]
    return worker


def test_killed_during_the_scan_nothing_is_kept_and_a_resend_is_held_once(relay_process):
    relay, port, folder = relay_process({}, time_budget=600)
    worker = scan_worker(relay)
    raw = message("quarantine-me please", body="a line of the report\r\n" * 3000)
    os.kill(worker, signal.SIGSTOP)  # it takes the message and gives no verdict
    try:
        client = in_data(port)
        client.send(raw)
        before = bytes_written(relay.pid)
        client.send(b".\r\n")
        # The message written out for the worker (into the memfd it is handed over in): the
        # relay is in the scan, waiting for a verdict that cannot come.
        wait_until(
            lambda: bytes_written(relay.pid) - before >= len(raw),
            30,
            "the relay to hand the message to its scan worker",
        )
        kill(relay)
    finally:
        os.kill(worker, signal.SIGKILL)
    assert_no_reply(client)
    assert_nothing_kept(folder)

    _, port, _ = relay_process({})
    assert send_to(port, raw)[0] == 250  # sent again, as a client does without its 250
    [held] = LocalQuarantine(folder / "quarantine").list()
    assert LocalQuarantine(folder / "quarantine").raw(held.id).endswith(raw)


@contextlib.contextmanager
def index_locked(quarantine: Path) -> Iterator[None]:
    """The quarantine index's write lock held, as another writer would hold it."""
    db = sqlite3.connect(quarantine / "index.sqlite3", isolation_level=None)
    try:
        db.execute("BEGIN IMMEDIATE")
        yield
        db.execute("ROLLBACK")
    finally:
        db.close()


def test_killed_during_the_quarantine_write_nothing_is_listed_and_purge_clears_it(
    relay_process,
):
    relay, port, folder = relay_process({})
    messages = folder / "quarantine" / "messages"
    raw = message("quarantine-me please", body="a line of the report\r\n" * 100)
    with index_locked(folder / "quarantine"):
        client = in_data(port)
        client.send(raw + b".\r\n")
        # put has stored the file durably and waits to record it in the index.
        wait_until(lambda: list(messages.iterdir()), 30, "put to write the message file")
        kill(relay)
    assert_no_reply(client)
    assert_nothing_kept(folder)
    store = LocalQuarantine(folder / "quarantine")
    assert store.count() == 0
    # Whole, but not held: no record, so nobody can list, show or release it; the client
    # sends it again. purge removes such a file (older than its cutoff) with the crashes'
    # other leftovers.
    [unrecorded] = messages.iterdir()
    assert unrecorded.read_bytes().endswith(raw)
    store.purge(timedelta(0), "test")
    assert list(messages.iterdir()) == []

    _, port, _ = relay_process({})
    assert send_to(port, raw)[0] == 250
    [held] = store.list()
    assert store.raw(held.id).endswith(raw)


def test_killed_during_next_hop_data_the_next_hop_gets_no_message(relay_process, sink):
    hop = {"next_hop": {"host": "127.0.0.1", "port": sink.port, "tls": "none", "timeout": 60}}
    relay, port, folder = relay_process(hop)
    # Larger than the relay's socket send buffer can ever grow: when the next hop stops
    # reading, the end of the message is still in the relay's own memory.
    send_buffer_max = int(Path("/proc/sys/net/ipv4/tcp_wmem").read_text().split()[2])
    line = b"x" * 998 + b"\r\n"
    raw = message("hello", body=line * (send_buffer_max // len(line) + 2048))
    sink.faults.stall_mid_data = True
    client = in_data(port)
    client.send(raw + b".\r\n")
    assert sink.stalled.wait(60), "the next hop never got to DATA"
    kill(relay)
    sink.resume()
    wait_until(lambda: not sink.open, 60, "the next hop to see the connection end")
    [partial] = sink.unfinished
    assert partial.startswith(b"Received: ") and b"\r\n.\r\n" not in partial  # the dot never came
    assert_no_reply(client)
    assert_nothing_kept(folder, sink)

    sink.faults.stall_mid_data = False
    _, port, _ = relay_process(hop)
    assert send_to(port, raw)[0] == 250
    [got] = sink.wait_for(1)
    assert got.content.endswith(raw)


def test_relay_process_delivers_and_stops_cleanly(relay_process):
    relay, port, folder = relay_process({})
    assert send_to(port, message("hello"))[0] == 250
    assert len(list((folder / "outbox").glob("*.eml"))) == 1
    assert relay.stop() == 0  # SIGTERM: a clean stop


def test_bad_configuration_names_key_and_line_and_does_not_start(tmp_path):
    config = tmp_path / "mailgate.yaml"
    config.write_text("relay:\n  listen: 127.0.0.1:2525\n  next_hop:\n    tls: sometimes\n")
    result = run_mailgate("relay", "--config", str(config))
    assert result.returncode == 2
    assert "line 4" in result.stderr
    assert "relay.next_hop.tls" in result.stderr

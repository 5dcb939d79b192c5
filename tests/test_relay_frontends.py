"""`relay.processes: 2`: two SMTP front ends on one socket, one audit log and one /metrics
from the parent, signals passed on, and a front end that dies restarted while the other
serves."""

from __future__ import annotations

import contextlib
import json
import os
import signal
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.support.cli import mailgate_process, run_mailgate
from tests.support.net import free_port
from tests.support.processes import children_of
from tests.support.samples import message
from tests.support.scrape import get
from tests.support.smtp_client import banner, send_to
from tests.support.waiting import wait_until

pytestmark = pytest.mark.timeout(120)


def front_ends(pid: int) -> list[int]:
    """The parent's children that are relays and alive (the forkserver of each front end's
    scan workers is a grandchild; a dead front end's cmdline is empty, or it is gone)."""
    return [c for c in children_of(pid) if b"relay" in _cmdline(c)]


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


@pytest.fixture(name="relay")
def relay_fixture(tmp_path: Path):
    port, metrics = free_port(), free_port()
    (tmp_path / "rules").mkdir()
    (tmp_path / "rules" / "policy.yaml").write_text(
        "rules:\n  - id: cards\n    when: [{dlp: credit_card}]\n    action: quarantine\n"
    )
    config = tmp_path / "mailgate.yaml"
    config.write_text(
        f"rules: rules\nrelay: {{listen: '127.0.0.1:{port}', processes: 2}}\n"
        f"engine: {{workers: 1}}\nmetrics: {{listen: '127.0.0.1:{metrics}'}}\n"
        "audit: {path: audit.jsonl}\n"
    )
    relay = mailgate_process(
        "relay", "--config", str(config), log=tmp_path / "relay.log",
        ready=lambda: banner(port).startswith(b"220"),
    )  # fmt: skip
    try:
        relay.start()
        front = children_of(relay.pid)
        yield relay, port, metrics, tmp_path
    finally:
        relay.stop()
        for child in front:  # none left running, whatever the test did to the parent
            with contextlib.suppress(ProcessLookupError):
                os.kill(child, signal.SIGKILL)


def send(port: int, n: int) -> int:
    body = "Card 4111 1111 1111 1111\r\n" if n % 3 == 0 else "Hello\r\n"
    code, text = send_to(port, message(f"m{n}", body), rcpts=("bob@example.net",))
    assert code == 250, text
    return n


def test_front_ends_share_the_port_and_report_to_one_log_and_one_metrics(relay) -> None:
    process, port, metrics, folder = relay
    assert len(front_ends(process.pid)) == 2
    with ThreadPoolExecutor(max_workers=10) as clients:
        assert sorted(clients.map(lambda n: send(port, n), range(30))) == list(range(30))
    wait_until(lambda: get(metrics, "/readyz")[0] == 200, 30, "every front end to be ready")
    assert get(metrics, "/readyz")[0] == 200  # every front end said it is ready
    records = [json.loads(line) for line in (folder / "audit.jsonl").read_text().splitlines()]
    assert sorted(r["action"] for r in records) == ["accept"] * 20 + ["quarantine"] * 10
    _, text = get(metrics, "/metrics")
    assert 'mailgate_messages_total{action="accept",door="relay"} 20.0' in text
    assert 'mailgate_messages_total{action="quarantine",door="relay"} 10.0' in text
    assert 'mailgate_rule_hits_total{mode="enforce",rule="cards"} 10.0' in text

    pid = process.pid
    assert process.stop(timeout=60) == 0  # SIGTERM: a clean stop
    assert front_ends(pid) == []


def test_a_front_end_that_dies_is_restarted_and_mail_flows_meanwhile(relay) -> None:
    """Issue 10 #25: kill -9 of one front end no longer stops the relay. The other serves on,
    a new one takes the slot after a pause, and a slot whose front ends keep dying waits
    twice as long each time (Postfix's master throttles a failing service the same way)."""
    process, port, metrics, folder = relay
    # Both started (one dying before that stops the relay: a relay that cannot start).
    wait_until(lambda: "2 front ends on" in process.log_text(), 90, "both front ends")
    first, second = front_ends(process.pid)
    os.kill(first, signal.SIGKILL)
    # Gone (a connection it had just accepted as it died is lost, as with any MTA's crash).
    wait_until(lambda: first not in front_ends(process.pid), 30, "the front end to die")
    assert [send(port, n) for n in range(1, 4)] == [1, 2, 3]  # the other one serves
    wait_until(lambda: len(front_ends(process.pid)) == 2, 90, "a new front end")
    [replacement] = set(front_ends(process.pid)) - {first, second}
    assert "was killed by SIGKILL after" in process.log_text()
    assert "starting another in 1s" in process.log_text()
    wait_until(lambda: get(metrics, "/readyz")[0] == 200, 90, "every front end to be ready")
    with ThreadPoolExecutor(max_workers=10) as clients:
        assert sorted(clients.map(lambda n: send(port, n), range(4, 24))) == list(range(4, 24))

    os.kill(replacement, signal.SIGKILL)  # dies again soon after its start: a longer pause
    wait_until(lambda: "starting another in 2s" in process.log_text(), 30, "the backoff")
    wait_until(lambda: len(front_ends(process.pid)) == 2, 90, "another front end")
    records = (folder / "audit.jsonl").read_text().splitlines()
    assert len(records) == 23  # every message sent, each audited once by the parent
    assert process.stop(timeout=60) == 0  # and a clean stop of all of it


def test_a_front_end_that_cannot_start_stops_the_relay_at_start(tmp_path: Path) -> None:
    port = free_port()
    (tmp_path / "rules").mkdir()
    (tmp_path / "rules" / "policy.yaml").write_text("rules:\n  - id: [oops\n")
    config = tmp_path / "mailgate.yaml"
    config.write_text(
        f"rules: rules\nrelay: {{listen: '127.0.0.1:{port}', processes: 2}}\n"
        "engine: {workers: 1}\n"
    )
    done = run_mailgate("relay", "--config", str(config))
    assert done.returncode == 2, done.stderr
    assert "rule pack" in done.stderr and "while starting" in done.stderr

"""`relay.processes: 2`: two SMTP front ends on one socket, one audit log and one /metrics
from the parent, signals passed on, and no half relay left running when a front end dies."""

from __future__ import annotations

import contextlib
import json
import os
import signal
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.support.cli import mailgate_process
from tests.support.net import free_port
from tests.support.processes import children_of
from tests.support.samples import message
from tests.support.scrape import get
from tests.support.smtp_client import banner, send_to
from tests.support.waiting import wait_until

pytestmark = pytest.mark.timeout(120)


def front_ends(pid: int) -> list[int]:
    """The parent's children that are relays (the forkserver of each front end's scan
    workers is a grandchild)."""
    return [c for c in children_of(pid) if b"relay" in Path(f"/proc/{c}/cmdline").read_bytes()]


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


def test_a_front_end_that_dies_stops_the_whole_relay(relay) -> None:
    process, port, _metrics, _folder = relay
    first, second = front_ends(process.pid)
    os.kill(first, signal.SIGKILL)
    assert process.process is not None
    assert process.process.wait(60) == 1  # a service manager restarts the whole relay
    assert "exited" in process.log_text()
    with pytest.raises(ProcessLookupError):
        os.kill(second, 0)
    with pytest.raises(OSError):
        send(port, 1)

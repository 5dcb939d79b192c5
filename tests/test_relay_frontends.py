"""`relay.processes: 2`: two SMTP front ends on one socket, one audit log and one /metrics
from the parent, signals passed on, and no half relay left running when a front end dies."""

from __future__ import annotations

import json
import os
import signal
import smtplib
import subprocess
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from support.smtp_sink import free_port
from test_relay_process import MAILGATE, wait_for_banner

pytestmark = pytest.mark.timeout(120)


def children_of(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rpartition(")")[2].split()[1]) == pid:
                found.append(int(entry.name))
    return found


def front_ends(pid: int) -> list[int]:
    """The parent's children that are relays (the forkserver of each front end's scan
    workers is a grandchild)."""
    return [c for c in children_of(pid) if b"relay" in Path(f"/proc/{c}/cmdline").read_bytes()]


def scrape(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as reply:
            return reply.status, reply.read().decode()
    except urllib.error.HTTPError as refused:
        return refused.code, ""


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
    process = subprocess.Popen(
        [MAILGATE, "relay", "--config", str(config)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_for_banner(process, port)
        yield process, port, metrics, tmp_path
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(30)
        for child in children_of(process.pid):
            os.kill(child, signal.SIGKILL)


def send(port: int, n: int) -> int:
    body = b"Card 4111 1111 1111 1111\r\n" if n % 3 == 0 else b"Hello\r\n"
    with smtplib.SMTP("127.0.0.1", port, timeout=60) as client:
        client.sendmail("alice@example.com", ["bob@example.net"], b"Subject: m\r\n\r\n" + body)
    return n


def test_front_ends_share_the_port_and_report_to_one_log_and_one_metrics(relay) -> None:
    process, port, metrics, folder = relay
    assert len(front_ends(process.pid)) == 2
    with ThreadPoolExecutor(max_workers=10) as clients:
        assert sorted(clients.map(lambda n: send(port, n), range(30))) == list(range(30))
    end = time.monotonic() + 30
    while time.monotonic() < end and scrape(metrics, "/readyz")[0] != 200:
        time.sleep(0.2)
    assert scrape(metrics, "/readyz")[0] == 200  # every front end said it is ready
    records = [json.loads(line) for line in (folder / "audit.jsonl").read_text().splitlines()]
    assert sorted(r["action"] for r in records) == ["accept"] * 20 + ["quarantine"] * 10
    _, text = scrape(metrics, "/metrics")
    assert 'mailgate_messages_total{action="accept",door="relay"} 20.0' in text
    assert 'mailgate_messages_total{action="quarantine",door="relay"} 10.0' in text
    assert 'mailgate_rule_hits_total{mode="enforce",rule="cards"} 10.0' in text

    process.send_signal(signal.SIGTERM)
    assert process.wait(60) == 0
    assert front_ends(process.pid) == []


def test_a_front_end_that_dies_stops_the_whole_relay(relay) -> None:
    process, port, _metrics, _folder = relay
    first, second = front_ends(process.pid)
    os.kill(first, signal.SIGKILL)
    assert process.wait(60) == 1  # a service manager restarts the whole relay
    assert "exited" in process.stderr.read()
    with pytest.raises(ProcessLookupError):
        os.kill(second, 0)
    with pytest.raises(OSError):
        send(port, 1)

"""`mailgate relay --config FILE` as a real process: startup, a bad file, a clean stop, and
being killed in the middle of DATA."""

from __future__ import annotations

import signal
import smtplib
from pathlib import Path

import pytest

from mailgate.filter.store.quarantine import LocalQuarantine
from tests.support.cli import mailgate_process, run_mailgate
from tests.support.net import free_port
from tests.support.processes import ChildProcess
from tests.support.relay_harness import write_config
from tests.support.samples import message
from tests.support.smtp_client import banner, connect, send_to

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(name="relay_process")
def relay_process_fixture(tmp_path, pack):
    started: list[ChildProcess] = []

    def run(relay: dict) -> tuple[ChildProcess, int, Path]:
        port = free_port()
        config = write_config(
            tmp_path, pack, {"listen": f"127.0.0.1:{port}", **relay}, engine={"workers": 1}
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


@pytest.mark.parametrize("where", ["outbox", "next_hop"])
def test_relay_killed_mid_data_leaves_no_half_message(relay_process, sink, where):
    settings = {}
    if where == "next_hop":
        settings = {"next_hop": {"host": "127.0.0.1", "port": sink.port, "tls": "none"}}
    relay, port, folder = relay_process(settings)
    raw = message(body="first half\r\n" * 2000)
    client = connect(port)
    client.ehlo()
    assert client.mail("alice@example.com")[0] == 250
    assert client.rcpt("bob@example.org")[0] == 250
    client.putcmd("data")
    assert client.getreply()[0] == 354
    client.send(raw[: len(raw) // 2])
    assert relay.process is not None
    relay.process.send_signal(signal.SIGKILL)
    relay.process.wait(10)
    try:
        client.send(raw[len(raw) // 2 :] + b".\r\n")
        code = client.getreply()[0]
    except (smtplib.SMTPServerDisconnected, OSError):
        code = None
    assert code != 250
    client.close()
    assert [p for p in (folder / "outbox").rglob("*") if p.is_file()] == []  # .tmp/ included
    store = LocalQuarantine(folder / "quarantine")
    assert store.list() == []
    assert list((folder / "quarantine" / "messages").iterdir()) == []
    assert list((folder / "quarantine" / "tmp").iterdir()) == []
    assert sink.received == []


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

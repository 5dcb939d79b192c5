"""`mailgate relay --config FILE` as a real process: startup, a bad file, a clean stop, and
being killed in the middle of DATA."""

from __future__ import annotations

import signal
import smtplib
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from support.relay_fixtures import bg_fixture, pack_fixture, sink_fixture  # noqa: F401
from support.relay_harness import message, write_config
from support.smtp_sink import free_port

from mailgate.filter.store.quarantine import LocalQuarantine

pytestmark = pytest.mark.timeout(120)

MAILGATE = str(Path(sys.executable).with_name("mailgate"))


def start(config_path: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [MAILGATE, "relay", "--config", str(config_path)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


def wait_for_banner(process: subprocess.Popen[str], port: int, deadline: float = 90.0) -> None:
    """Poll until the relay answers (bounded); fail with its stderr if it exits instead."""
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        if process.poll() is not None:
            pytest.fail(f"relay exited with {process.returncode}: {process.stderr.read()}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
                if sock.recv(100).startswith(b"220"):
                    return
        except OSError:
            time.sleep(0.2)
    process.kill()
    pytest.fail("relay did not start in time")


@pytest.fixture(name="relay_process")
def relay_process_fixture(tmp_path, pack):
    started: list[subprocess.Popen[str]] = []

    def run(relay: dict) -> tuple[subprocess.Popen[str], int, Path]:
        port = free_port()
        config = write_config(
            tmp_path, pack, {"listen": f"127.0.0.1:{port}", **relay}, engine={"workers": 1}
        )
        process = start(config.source)
        started.append(process)
        wait_for_banner(process, port)
        return process, port, tmp_path

    yield run
    for process in started:
        if process.poll() is None:
            process.kill()
        process.wait(10)
        process.stderr.close()


@pytest.mark.parametrize("where", ["outbox", "next_hop"])
def test_relay_killed_mid_data_leaves_no_half_message(relay_process, sink, where):
    settings = {}
    if where == "next_hop":
        settings = {"next_hop": {"host": "127.0.0.1", "port": sink.port, "tls": "none"}}
    process, port, folder = relay_process(settings)
    raw = message(body="first half\r\n" * 2000)
    client = smtplib.SMTP("127.0.0.1", port, timeout=30)
    client.ehlo()
    assert client.mail("alice@example.com")[0] == 250
    assert client.rcpt("bob@example.org")[0] == 250
    client.putcmd("data")
    assert client.getreply()[0] == 354
    client.send(raw[: len(raw) // 2])
    process.send_signal(signal.SIGKILL)
    process.wait(10)
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
    process, port, folder = relay_process({})
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
        client.sendmail("alice@example.com", ["bob@example.org"], message("hello"))
    assert len(list((folder / "outbox").glob("*.eml"))) == 1
    process.send_signal(signal.SIGTERM)
    assert process.wait(30) == 0


def test_bad_configuration_names_key_and_line_and_does_not_start(tmp_path):
    config = tmp_path / "mailgate.yaml"
    config.write_text("relay:\n  listen: 127.0.0.1:2525\n  next_hop:\n    tls: sometimes\n")
    result = subprocess.run(
        [MAILGATE, "relay", "--config", str(config)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 2
    assert "line 4" in result.stderr
    assert "relay.next_hop.tls" in result.stderr

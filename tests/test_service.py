"""One life cycle for both doors (filter/ops/service.py), tested on real `mailgate relay` and
`mailgate milter` processes: SIGHUP reopens the audit file, reloads the pack and re-reads the
configuration (a broken one is logged and the running settings stay), SIGTERM stops the door
and every process it started; a door that stops by itself exits 1."""

from __future__ import annotations

import os
import signal
import socket
from pathlib import Path

import pytest
import yaml

from mailgate.filter.scan.pool import ScanPool
from tests.support.cli import mailgate_process, run_mailgate
from tests.support.net import free_port
from tests.support.processes import children_of
from tests.support.relay_harness import write_config
from tests.support.samples import message
from tests.support.scrape import get, scrape, value
from tests.support.skips import NEEDS_PYMILTER
from tests.support.smtp_client import send
from tests.support.waiting import wait_until

pytestmark = pytest.mark.timeout(180)

RULE = """\
rules:
  - id: block-word
    when: [{{subject: {{regex: '(?i){word}'}}}}]
    action: reject
"""
WAIT = 60  # seconds: a reload builds a pack and starts new workers on a shared machine


def door_config(door: str, folder: Path) -> dict:
    settings: dict = {
        "rules": "rules",
        "quarantine": {"path": "quarantine"},
        "engine": {"workers": 1},
        "metrics": {"listen": f"127.0.0.1:{free_port()}"},
        "audit": {"path": "audit.jsonl"},
    }
    if door == "relay":
        settings["relay"] = {"listen": f"127.0.0.1:{free_port()}", "outbox": "outbox"}
    else:
        settings["milter"] = {"socket": f"unix:{folder}/run/milter.sock"}
    return settings


def pack_version(port: int) -> str:
    samples = scrape(port)
    [version] = [dict(labels)["version"] for name, labels in samples if name.endswith("pack_info")]
    return version


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.mark.parametrize("door", ["relay", "milter"])
def test_sighup_and_sigterm_mean_the_same_in_both_doors(door: str, tmp_path: Path) -> None:
    if door == "milter":
        pytest.importorskip("Milter", reason=NEEDS_PYMILTER, exc_type=ImportError)
    (tmp_path / "rules").mkdir()
    (tmp_path / "rules" / "rules.yaml").write_text(RULE.format(word="first-word"))
    settings = door_config(door, tmp_path)
    config = tmp_path / "mailgate.yaml"
    config.write_text(yaml.safe_dump(settings))
    metrics = int(settings["metrics"]["listen"].rpartition(":")[2])
    process = mailgate_process(
        door,
        "--config",
        str(config),
        log=tmp_path / f"{door}.log",
        ready=lambda: get(metrics, "/readyz")[0] == 200,
    ).start()
    try:
        first = pack_version(metrics)
        started = children_of(process.pid)  # the scan pool's processes
        assert started

        # logrotate moved the audit file; the pack changed; SIGHUP.
        (tmp_path / "audit.jsonl").rename(tmp_path / "audit.jsonl.1")
        (tmp_path / "rules" / "rules.yaml").write_text(RULE.format(word="second-word"))
        os.kill(process.pid, signal.SIGHUP)
        wait_until(lambda: pack_version(metrics) != first, WAIT, "the new pack to serve")
        wait_until((tmp_path / "audit.jsonl").exists, WAIT, "the audit file to be reopened")
        samples = scrape(metrics)
        assert value(samples, "mailgate_reloads_total", result="success") == 1

        # A configuration that no longer loads: said so, and the door serves on.
        config.write_text("relay: [unclosed\n")
        os.kill(process.pid, signal.SIGHUP)
        wait_until(
            lambda: "configuration reload failed" in process.log_text(),
            WAIT,
            "the broken configuration to be reported",
        )
        assert "mailgate.yaml" in process.log_text()
        assert get(metrics, "/healthz") == (200, "ok\n")

        pid = process.pid
        assert process.stop(timeout=60) == 0, process.log_tail()
        assert "stopping on SIGTERM" in process.log_text()
        # The forkserver and the resource tracker end when their pipes close.
        wait_until(lambda: not any(map(alive, started)), 10, "the door's processes to end")
        assert not (tmp_path / "run" / "milter.sock").exists()
        assert not alive(pid)
    finally:
        process.stop()


def test_a_milter_whose_socket_cannot_be_opened_exits_1_saying_why(tmp_path: Path) -> None:
    pytest.importorskip("Milter", reason=NEEDS_PYMILTER, exc_type=ImportError)
    (tmp_path / "rules").mkdir()
    (tmp_path / "rules" / "rules.yaml").write_text(RULE.format(word="x"))
    with socket.create_server(("127.0.0.1", 0)) as taken:
        settings = door_config("milter", tmp_path)
        settings["milter"]["socket"] = f"inet:{taken.getsockname()[1]}@127.0.0.1"
        (tmp_path / "mailgate.yaml").write_text(yaml.safe_dump(settings))
        done = run_mailgate("milter", "--config", str(tmp_path / "mailgate.yaml"))
    assert done.returncode == 1, done.stderr
    assert "mailgate milter: " in done.stderr
    assert "stopped" in done.stderr  # what it had started was stopped


def test_a_door_that_cannot_start_exits_2_saying_why(tmp_path: Path) -> None:
    (tmp_path / "rules").mkdir()
    (tmp_path / "rules" / "rules.yaml").write_text("rules:\n  - id: [oops\n")
    (tmp_path / "mailgate.yaml").write_text(yaml.safe_dump(door_config("relay", tmp_path)))
    done = run_mailgate("relay", "--config", str(tmp_path / "mailgate.yaml"))
    assert done.returncode == 2
    assert "mailgate relay: rule pack" in done.stderr and "rules.yaml:" in done.stderr


def test_what_sighup_applies_live_the_relays_fail_open(make_relay, pack, tmp_path) -> None:
    """relay.fail_open is re-read like the milter's fail_mode: the engine cannot answer, 451;
    once the configuration says fail_open, the message is relayed unscanned."""
    relay = make_relay(scanner=ScanPool(pack))  # never started: no verdict for anything
    with relay.client() as client:
        assert send(client, message("hello"))[0] == 451
    relay.relay.reconfigure(write_config(tmp_path / "fresh", pack, {"fail_open": True}))
    with relay.client() as client:
        assert send(client, message("hello"))[0] == 250

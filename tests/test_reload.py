"""Safe hot reload: a good change to the rules folder goes live in a running relay and a running
milter without dropping an SMTP session in progress; a broken change (bad YAML, bad regex, an
example that fails) is refused with file and line, and the old verdicts continue.

The relay runs in-process (the relay test harness, real worker pool, real sockets) with the
watcher noticing the change; the milter runs as `mailgate milter` behind a real Postfix and is
told with SIGHUP, its /metrics saying which pack serves."""

from __future__ import annotations

import json
import os
import queue
import re
import shutil
import signal
from pathlib import Path

import pytest

from mailgate.filter.ops.metrics import Metrics
from mailgate.filter.policy.pack import PackSource
from mailgate.filter.scan.reload import PackReloader, ReloadResult
from tests.support.background_loop import BackgroundLoop
from tests.support.cli import mailgate_process
from tests.support.net import free_port
from tests.support.packs import BLOCK_WORD, subject_rule
from tests.support.postfix import PostfixInstance, milter_settings, shared_temp_dir
from tests.support.relay_harness import RunningRelay, start_pool, write_config
from tests.support.samples import message
from tests.support.scrape import get, scrape, value
from tests.support.skips import needs_root_and_postfix
from tests.support.smtp_client import connect, send
from tests.support.smtp_sink import SmtpSink
from tests.support.waiting import wait_until

pytestmark = pytest.mark.timeout(180)

# The door test pack's block-word rule, with examples: a reload runs them.
PACK = (
    "rules:\n"
    + BLOCK_WORD
    + "    examples: {hit: [examples/reject.eml], miss: [examples/hello.eml]}\n"
)
GOOD = PACK + subject_rule(
    "block-new",
    "forbidden-now",
    "reject",
    "reason: Newly forbidden",
    "examples: {hit: [examples/forbidden.eml], miss: [examples/hello.eml]}",
)
BROKEN = {
    "bad YAML": (GOOD + "  - id: [oops\n", r"rules\.yaml:\d+: YAML syntax error"),
    "bad regex": (
        GOOD
        + "  - id: bad-regex\n    when: [{subject: {regex: '(unclosed'}}]\n    action: reject\n",
        r"rules\.yaml:\d+: \[bad-regex\] subject\.regex",
    ),
    "failing example": (
        GOOD
        + "  - id: block-typo\n    when: [{subject: {regex: 'typo-word'}}]\n    action: reject\n"
        "    examples: {hit: [examples/hello.eml]}\n",
        r"rules\.yaml:\d+: \[block-typo\] .*hello\.eml: expected hit",
    ),
}
WAIT = 60  # seconds: bound for a reload (two pack builds and new workers) to be seen


def write_pack(folder: Path, text: str) -> str:
    """Replace rules.yaml in one rename (as a deployment tool would); the pack's version."""
    examples = folder / "examples"
    examples.mkdir(parents=True, exist_ok=True)
    for name, subject in (("reject", "reject-me"), ("forbidden", "forbidden-now"), ("hello", "hi")):
        if not (examples / f"{name}.eml").exists():  # rewriting them would be a change too
            (examples / f"{name}.eml").write_bytes(message(subject))
    staged = folder.parent / f".{folder.name}-rules.yaml.tmp"  # outside: one event only
    staged.write_text(text)
    os.replace(staged, folder / "rules.yaml")
    return PackSource.read(folder).version


# -------------------------------------------------------------------------------- relay


def test_relay_serves_a_good_change_and_refuses_broken_ones(
    bg: BackgroundLoop, tmp_path: Path
) -> None:
    pack = tmp_path / "pack"
    first = write_pack(pack, PACK)
    pool = start_pool(bg, pack)
    metrics = Metrics()
    results: queue.Queue[ReloadResult] = queue.Queue()

    def on_result(result: ReloadResult) -> None:
        metrics.observe_reload(result)
        results.put(result)

    reloader = PackReloader(pool, pack, on_result=on_result, debounce_ms=100)

    bg.run(reloader.start())
    relay = RunningRelay(bg, write_config(tmp_path / "relay", pack), pool)
    try:
        with relay.client() as client:
            client.ehlo()
            assert send(client, message("forbidden-now"))[0] == 250
            # A session in progress while the pack changes under it.
            assert client.mail("alice@example.com")[0] == 250
            assert client.rcpt("bob@example.org")[0] == 250

            second = write_pack(pack, GOOD)
            result = results.get(timeout=WAIT)
            assert (result.result, result.version, result.trigger) == ("success", second, "change")
            assert pool.pack_version == second != first

            assert client.data(message("forbidden-now")) == (550, b"5.7.1 Newly forbidden")
            assert send(client, message("hello again"))[0] == 250

            for what, (text, problem) in BROKEN.items():
                write_pack(pack, text)
                result = results.get(timeout=WAIT)
                assert result.result == "failure", what
                assert result.version == second
                assert any(re.search(problem, p) for p in result.problems), result.problems
                assert all(p.startswith(f"{pack}/rules.yaml:") for p in result.problems), what
                # The old pack keeps judging, in the same session.
                assert pool.pack_version == second
                assert send(client, message("forbidden-now")) == (550, b"5.7.1 Newly forbidden")
                assert send(client, message("reject-me"))[0] == 550

        # A SIGHUP-style request with nothing changed since the last good pack is a no-op.
        write_pack(pack, GOOD)
        result = results.get(timeout=WAIT)
        assert (result.result, result.version) == ("unchanged", second)
        assert reloader.request("signal").result(WAIT).result == "unchanged"
        registry = metrics.registry
        assert registry.get_sample_value("mailgate_reloads_total", {"result": "success"}) == 1
        assert registry.get_sample_value("mailgate_reloads_total", {"result": "failure"}) == 3
        assert registry.get_sample_value("mailgate_pack_info", {"version": second}) == 1
    finally:
        relay.stop()
        bg.run(reloader.stop())
        bg.run(pool.close())


# ------------------------------------------------------------------------------- milter


@needs_root_and_postfix
def test_milter_behind_postfix_reloads_on_sighup_without_dropping_a_session() -> None:
    # smtpd runs as `postfix` and must reach the socket's folder.
    work = shared_temp_dir("mailgate-reload-test-")
    sink = SmtpSink().start()
    socket = work / "run" / "milter.sock"
    metrics_port = free_port()
    postfix = PostfixInstance(
        relayhost_port=sink.port,
        settings=milter_settings(socket, milter_content_timeout="60s"),
    )
    first = write_pack(work / "pack", PACK)
    (work / "mailgate.yaml").write_text(
        f"""\
rules: pack
quarantine: {{path: quarantine}}
milter: {{socket: 'unix:{socket}', time_budget: 20s}}
engine: {{workers: 1}}
metrics: {{listen: '127.0.0.1:{metrics_port}'}}
audit: {{path: audit.jsonl}}
"""
    )
    milter = mailgate_process(
        "milter",
        "--config",
        str(work / "mailgate.yaml"),
        log=work / "milter.log",
        ready=socket.exists,
    )
    try:
        milter.start()
        postfix.start()
        assert get(metrics_port, "/readyz")[0] == 200
        assert value(scrape(metrics_port), "mailgate_pack_info", version=first) == 1
        with connect(postfix.ports["smtp"], timeout=60) as client:
            assert send(client, message("forbidden-now"))[0] == 250
            assert client.mail("alice@example.com")[0] == 250
            assert client.rcpt("bob@example.org")[0] == 250

            second = write_pack(work / "pack", GOOD)
            assert milter.process is not None
            milter.process.send_signal(signal.SIGHUP)
            wait_until(
                lambda: value(scrape(metrics_port), "mailgate_pack_info", version=second),
                WAIT,
                "the milter to serve the new pack",
            )
            assert client.data(message("forbidden-now")) == (550, b"5.7.1 Newly forbidden")

            write_pack(work / "pack", BROKEN["bad regex"][0])
            milter.process.send_signal(signal.SIGHUP)
            wait_until(
                lambda: value(scrape(metrics_port), "mailgate_reloads_total", result="failure"),
                WAIT,
                "the milter to refuse the broken pack",
            )
            assert send(client, message("forbidden-now")) == (550, b"5.7.1 Newly forbidden")
        samples = scrape(metrics_port)
        assert value(samples, "mailgate_reloads_total", result="success") == 1
        assert value(samples, "mailgate_pack_info", version=second) == 1
        assert value(samples, "mailgate_messages_total", door="milter", action="reject") == 2
        log = milter.log_text()
        assert "[bad-regex] subject.regex" in log and "pack/rules.yaml:" in log
        audit = (work / "audit.jsonl").read_text()
        assert audit.count('"door":"milter"') == 3
        assert f'"pack_version":"{first}"' in audit and f'"pack_version":"{second}"' in audit
    finally:
        try:
            postfix.stop()
        finally:
            assert milter.stop() == 0, milter.log_text()
            sink.stop()
            shutil.rmtree(work, ignore_errors=True)


def test_relay_process_reloads_on_sighup(tmp_path: Path) -> None:
    """`mailgate relay` as an operator runs it: SIGHUP serves the new pack; /metrics shows it."""
    relay_port, metrics_port = free_port(), free_port()
    first = write_pack(tmp_path / "pack", PACK)
    config = write_config(
        tmp_path,
        tmp_path / "pack",
        {"listen": f"127.0.0.1:{relay_port}"},
        engine={"workers": 1},
        metrics={"listen": f"127.0.0.1:{metrics_port}"},
        audit={"path": "audit.jsonl"},
    )
    assert config.source is not None
    relay = mailgate_process(
        "relay",
        "--config",
        str(config.source),
        log=tmp_path / "relay.log",
        ready=lambda: get(metrics_port, "/readyz")[0] == 200,
        ready_timeout=WAIT,
    )
    try:
        relay.start()
        with connect(relay_port) as client:
            assert send(client, message("forbidden-now"))[0] == 250
            second = write_pack(tmp_path / "pack", GOOD)
            assert relay.process is not None
            relay.process.send_signal(signal.SIGHUP)
            wait_until(
                lambda: value(scrape(metrics_port), "mailgate_pack_info", version=second),
                WAIT,
                "the relay to serve the new pack",
            )
            assert send(client, message("forbidden-now")) == (550, b"5.7.1 Newly forbidden")
        samples = scrape(metrics_port)
        assert value(samples, "mailgate_reloads_total", result="success") == 1
        assert value(samples, "mailgate_messages_total", door="relay", action="reject") == 1
        audit = [json.loads(line) for line in (tmp_path / "audit.jsonl").open()]
        assert [(r["action"], r["pack_version"]) for r in audit] == [
            ("accept", first),
            ("reject", second),
        ]
        assert relay.stop() == 0, relay.log_text()  # SIGTERM: a clean stop
    finally:
        relay.stop()

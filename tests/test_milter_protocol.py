"""The real `mailgate milter` process over its socket, driven by a real milter client instead of
pymilter's stand-in: Debian's `miltertest`, which plays the MTA's side of the milter protocol
from Lua scripts (tests/miltertest/*.lua). No root and no Postfix needed."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from tests.support.skips import NEEDS_MILTERTEST, NEEDS_PYMILTER

pytest.importorskip("Milter", reason=NEEDS_PYMILTER, exc_type=ImportError)

from mailgate.filter.milter.door import SPOOL_IN_MEMORY
from mailgate.filter.store.quarantine import LocalQuarantine, QuarantineRecord
from tests.support.cli import mailgate_process
from tests.support.packs import DOOR_TEST_PACK, subject_rule, write_pack
from tests.support.processes import ChildProcess

MILTERTEST = shutil.which("miltertest")
SCRIPTS = Path(__file__).parent / "miltertest"
PACK = (
    DOOR_TEST_PACK
    + subject_rule("percent-word", "percent-me", "reject", "reason: 100% not allowed")
    + "  - id: card-number\n"
    "    when: [{dlp: credit_card}]\n"
    "    action: reject\n"
    "    reason: Message contains a payment card number\n"
)

pytestmark = [
    pytest.mark.skipif(MILTERTEST is None, reason=NEEDS_MILTERTEST),
    pytest.mark.timeout(300),
]


@dataclass
class RunningMilter:
    folder: Path
    socket: Path
    process: ChildProcess

    def run(self, script: str, **defines: Path) -> str:
        """miltertest running tests/miltertest/SCRIPT.lua against this milter; its output.
        A script that finds something wrong fails the test with its own words."""
        assert MILTERTEST is not None
        argv = [MILTERTEST, "-D", f"socket=unix:{self.socket}", "-D", f"scripts={SCRIPTS}"]
        for name, value in defines.items():
            argv += ["-D", f"{name}={value}"]
        done = subprocess.run(
            [*argv, "-s", str(SCRIPTS / f"{script}.lua")],
            capture_output=True,
            text=True,
            timeout=240,
        )
        assert done.returncode == 0, (
            f"{script}.lua: {done.stdout}{done.stderr}\n--- milter log:\n" + self.process.log_tail()
        )
        return done.stdout

    def held(self, subject: str) -> list[QuarantineRecord]:
        store = LocalQuarantine(self.folder / "quarantine")
        return [record for record in store.list() if record.subject == subject]


@pytest.fixture(name="milter", scope="module")
def milter_fixture(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningMilter]:
    folder = tmp_path_factory.mktemp("milter")
    write_pack(folder / "rules", PACK)
    socket = folder / "run" / "milter.sock"
    settings = {
        "rules": "rules",
        "quarantine": {"path": "quarantine"},
        "engine": {"workers": 1},
        "audit": {"path": "audit.jsonl"},
        "milter": {"socket": f"unix:{socket}"},
    }
    config = folder / "mailgate.yaml"
    config.write_text(yaml.safe_dump(settings))
    process = mailgate_process(
        "milter", "--config", str(config), log=folder / "milter.log",
        ready=lambda: "listening on" in process.log_text(),
    )  # fmt: skip
    process.start()
    yield RunningMilter(folder, socket, process)
    assert process.stop() == 0, process.log_tail()


def test_a_clean_message_is_accepted_unchanged(milter: RunningMilter) -> None:
    milter.run("accept")


def test_refusals_reach_the_client_with_the_rules_text(milter: RunningMilter) -> None:
    milter.run("reject")
    assert milter.held("please reject-me") == []


def test_a_held_message_is_stored_then_discarded(milter: RunningMilter) -> None:
    milter.run("discard")
    [record] = milter.held("quarantine-me please")
    assert record.sender == "alice@example.com"
    assert record.recipients == ("bob@example.org",)
    assert record.door == "milter" and record.client_address == "192.0.2.10"
    raw = LocalQuarantine(milter.folder / "quarantine").raw(record.id)
    assert raw == (
        b"From: Alice <alice@example.com>\r\nTo: bob@example.org\r\n"
        b"Subject: quarantine-me please\r\nMessage-ID: <miltertest@example.com>\r\n"
        b"\r\nHello Bob,\r\n\r\nthe report is attached.\r\n"
    )


def test_tagging_adds_a_header_changes_the_subject_and_adds_a_copy(
    milter: RunningMilter,
) -> None:
    milter.run("tag")


def test_a_body_larger_than_the_milter_keeps_in_memory_is_judged_and_held_whole(
    milter: RunningMilter, tmp_path: Path
) -> None:
    lines = b"".join(b"line %07d of the monthly export\r\n" % n for n in range(40000))
    assert len(lines) > SPOOL_IN_MEMORY + 64000  # on disk, and the end in a chunk of its own
    (tmp_path / "card.txt").write_bytes(lines + b"Card on file: 4111 1111 1111 1111\r\n")
    (tmp_path / "plain.txt").write_bytes(lines)
    milter.run("large_body", card=tmp_path / "card.txt", plain=tmp_path / "plain.txt")
    [record] = milter.held("quarantine-me large export")
    raw = LocalQuarantine(milter.folder / "quarantine").raw(record.id)
    assert raw.partition(b"\r\n\r\n")[2] == lines

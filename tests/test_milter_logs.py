"""The milter's log lines name a message by its queue id and Message-ID: the Message-ID masked
as the audit record masks it (decoded, unfolded, a card number however its groups are joined),
and the line escaped by the doors' log format."""

# ruff: noqa: E402 (the imports below the check for pymilter need it)

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from tests.support.skips import NEEDS_PYMILTER

Milter = pytest.importorskip("Milter", reason=NEEDS_PYMILTER, exc_type=ImportError)

from mailgate.filter.milter.door import MilterDoor
from mailgate.filter.ops.logs import SafeFormatter
from mailgate.filter.scan.pool import ScanPool
from mailgate.filter.store.quarantine import LocalQuarantine
from tests.support import samples
from tests.support.cards import unmasked_cards
from tests.support.milter_ctx import feed, no_reply_is_continue


@pytest.fixture(autouse=True)
def _no_reply_is_continue(monkeypatch: pytest.MonkeyPatch) -> None:
    no_reply_is_continue(monkeypatch)


@pytest.mark.parametrize(
    ("message_id", "masked"),
    [
        ("<4111111111111111@corp.example>", "<************1111@corp.example>"),
        ("<4111-1111\r\n 1111.1111@corp.example>", "<****-**** ****.1111@corp.example>"),
        ("<=?utf-8?Q?4111_1111_1111_1111?=@corp.example>", "<**** **** **** 1111@corp.example>"),
    ],
)
def test_log_lines_carry_the_message_id_masked(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, message_id: str, masked: str
) -> None:
    """A scan pool that never started: the door logs the tempfail with the message's label."""
    door = MilterDoor(scanner=ScanPool(tmp_path, workers=1), store=LocalQuarantine(tmp_path / "q"))
    raw = samples.message("hello", message_id=message_id)
    with caplog.at_level(logging.INFO, logger="mailgate.milter"):
        assert feed(door, raw)[0] == Milter.TEMPFAIL
    [record] = [r for r in caplog.records if "fail_mode" in r.getMessage()]
    assert f"Message-ID {masked}" in record.getMessage()
    line = SafeFormatter("%(levelname)s %(name)s: %(message)s").format(record)
    assert unmasked_cards(line) == [] and "1111.1111" not in line

"""The milter door without an MTA: pymilter's own `Milter.testctx.TestCtx` stands in for
libmilter's context and drives the callbacks in the order Postfix does; a real ScanPool (worker
processes, a tiny rule pack) judges, and a real LocalQuarantine stores."""

# ruff: noqa: E402 (the imports below the check for pymilter need it)

from __future__ import annotations

import io
import logging
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest

from tests.support.skips import NEEDS_PYMILTER

Milter = pytest.importorskip("Milter", reason=NEEDS_PYMILTER, exc_type=ImportError)

from mailgate.filter.milter.door import MailgateMilter, MilterDoor
from mailgate.filter.policy.envelope import Envelope
from mailgate.filter.policy.verdict import Verdict
from mailgate.filter.scan.pool import ScanPool
from mailgate.filter.store.quarantine import LocalQuarantine, new_id
from mailgate.filter.store.release_mark import RELEASE_HEADER, make_mark
from tests.support import samples
from tests.support.background_loop import BackgroundLoop
from tests.support.cli import run_mailgate
from tests.support.milter_ctx import connect, feed, header, no_reply_is_continue
from tests.support.packs import DOOR_TEST_PACK, subject_rule, write_pack

PACK = DOOR_TEST_PACK + subject_rule(
    "percent-word", "percent-me", "reject", "reason: 100% not allowed"
)


def message(subject: str, body: str = "Hello Bob,\n\nthe report is attached.\n") -> bytes:
    """The door tests' message: its Message-ID says which subject it had."""
    return samples.message(
        subject,
        body,
        sender="Alice <alice@example.com>",
        to="bob@example.org",
        message_id=f"<m-{abs(hash(subject))}@example.com>",
    )


class RecordingScanner:
    """The real pool, plus a record of what the door handed it."""

    def __init__(self, pool: ScanPool) -> None:
        self.pool = pool
        self.calls: list[tuple[bytes, Envelope]] = []

    def scan_blocking(self, raw: bytes, envelope: Envelope, timeout: float) -> Verdict:
        self.calls.append((raw, envelope))
        return self.pool.scan_blocking(raw, envelope, timeout)


@pytest.fixture(autouse=True)
def no_reply_steps(monkeypatch: pytest.MonkeyPatch) -> None:
    no_reply_is_continue(monkeypatch)


@pytest.fixture(scope="module")
def pool(bg: BackgroundLoop, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ScanPool]:
    scan_pool = ScanPool(
        write_pack(tmp_path_factory.mktemp("pack"), PACK), workers=1, time_budget=10
    )
    bg.run(scan_pool.start(), timeout=60)
    yield scan_pool
    bg.run(scan_pool.close(), timeout=30)


@pytest.fixture
def store(tmp_path: Path) -> LocalQuarantine:
    return LocalQuarantine(tmp_path / "quarantine")


@pytest.fixture
def scanner(pool: ScanPool) -> RecordingScanner:
    return RecordingScanner(pool)


@pytest.fixture
def door(scanner: RecordingScanner, store: LocalQuarantine) -> MilterDoor:
    return MilterDoor(
        scanner=scanner,
        store=store,
        release_secret=store.release_secret(),
        time_budget=30,
    )


# --------------------------------------------------------------------------- negotiation


def test_negotiates_only_the_steps_it_uses(door: MilterDoor) -> None:
    ctx = connect(door)
    protocol = ctx._opts[1]
    skipped = Milter.P_NODATA | Milter.P_NOUNKNOWN
    assert protocol & skipped == skipped
    used = (
        Milter.P_NOCONNECT
        | Milter.P_NOHELO
        | Milter.P_NOMAIL
        | Milter.P_NORCPT
        | Milter.P_NOHDRS
        | Milter.P_NOEOH
        | Milter.P_NOBODY
    )
    assert protocol & used == 0
    # Nothing before end-of-message waits for an answer.
    no_reply = (
        Milter.P_NR_CONN
        | Milter.P_NR_HELO
        | Milter.P_NR_MAIL
        | Milter.P_NR_RCPT
        | Milter.P_NR_HDR
        | Milter.P_NR_EOH
        | Milter.P_NR_BODY
    )
    assert protocol & no_reply == no_reply
    assert protocol & Milter.P_HDR_LEADSPC
    assert not any(ctx._symlist)  # macros come as the MTA sends them: no symbol lists
    ctx._close()


# ----------------------------------------------------------------------------- verdicts


def test_reject_replies_550_with_the_rules_reason(door: MilterDoor) -> None:
    rc, ctx = feed(door, message("please reject-me"))
    assert rc == Milter.REJECT
    assert ctx._reply == ("550", "5.7.1", "Subject contains a blocked word")


def test_reply_text_with_a_percent_sign_is_sent(door: MilterDoor) -> None:
    rc, ctx = feed(door, message("percent-me"))
    assert rc == Milter.REJECT
    # libmilter silently drops a reply with a lone '%'; doubled it goes through.
    assert ctx._reply == ("550", "5.7.1", "100%% not allowed")


def test_tempfail_rule_replies_451(door: MilterDoor) -> None:
    rc, ctx = feed(door, message("tempfail-me now"))
    assert rc == Milter.TEMPFAIL
    assert ctx._reply == ("451", "4.7.1", "Try later")


def test_tag_adds_the_header_and_prefixes_the_subject(
    door: MilterDoor, store: LocalQuarantine
) -> None:
    rc, ctx = feed(door, message("please tag-me"))
    assert rc == Milter.ACCEPT
    assert ctx._reply is None
    assert header(ctx, "X-Mailgate-Test") == "yes"
    assert header(ctx, "Subject") == "[TAGGED] please tag-me"
    assert store.count() == 0


def test_tag_without_options_names_the_rule_in_a_header(door: MilterDoor) -> None:
    rc, ctx = feed(door, message("please mark-me and tag-me"))
    assert rc == Milter.ACCEPT
    assert header(ctx, "X-Mailgate-Rules") == "mark-word"
    assert header(ctx, "X-Mailgate-Test") == "yes"  # beside another tag rule's options


def test_tag_rule_adds_a_recipient(door: MilterDoor) -> None:
    rc, ctx = feed(door, message("copy-me please"))
    assert rc == Milter.ACCEPT
    assert [rcpt for rcpt, _params in ctx._addrcpt] == ["<archive@example.org>"]


def test_tag_on_a_folded_subject_unfolds_it(door: MilterDoor) -> None:
    raw = b"From: alice@example.com\nSubject: a long subject that\n  asks to tag-me\n\nbody\n"
    rc, ctx = feed(door, raw)
    assert rc == Milter.ACCEPT
    assert header(ctx, "Subject") == "[TAGGED] a long subject that  asks to tag-me"


def test_clean_message_is_accepted_unchanged(door: MilterDoor) -> None:
    rc, ctx = feed(door, message("quarterly numbers"))
    assert rc == Milter.ACCEPT
    assert ctx._reply is None
    assert not ctx._headerschanged


def test_quarantine_stores_then_discards(
    door: MilterDoor, store: LocalQuarantine, scanner: RecordingScanner
) -> None:
    raw = message("quarantine-me please", body="line one\nline two\n")
    rc, _ = feed(door, raw, rcpts=("bob@example.org", "carol@example.net"))
    # DISCARD: the sender sees 250, Postfix delivers nothing; the store owns the message.
    assert rc == Milter.DISCARD
    [record] = store.list()
    assert record.state == "held"
    assert record.door == "milter"
    assert record.queue_id == "4XyZ1"
    assert record.sender == "alice@example.com"
    assert record.recipients == ("bob@example.org", "carol@example.net")
    assert record.client_address == "192.0.2.10"
    assert record.subject == "quarantine-me please"
    assert record.rules == ("hold-word",)
    stored = store.raw(record.id)
    assert stored == scanner.calls[-1][0]
    assert stored.split(b"\r\n\r\n", 1)[1] == b"line one\nline two\n"
    assert b"\r\nSubject: quarantine-me please\r\n" in stored


def test_envelope_is_built_from_callbacks_and_macros(
    door: MilterDoor, scanner: RecordingScanner
) -> None:
    feed(door, message("quarterly numbers"), rcpts=("bob@example.org", "carol@example.net"))
    raw, envelope = scanner.calls[-1]
    assert envelope == Envelope(
        mail_from="alice@example.com",
        rcpt_tos=("bob@example.org", "carol@example.net"),
        client_address="192.0.2.10",
        client_name="client.example.com",
        helo="helo.example.com",
        auth_user="alice",
        tls_version="TLSv1.3",
        queue_id="4XyZ1",
        door="milter",
        extra={"myhostname": "mx.example.net"},
    )
    head, body = raw.split(b"\r\n\r\n", 1)
    assert head.split(b"\r\n")[:2] == [b"From: Alice <alice@example.com>", b"To: bob@example.org"]
    assert body == b"Hello Bob,\n\nthe report is attached.\n"


def test_large_message_spills_to_disk_and_arrives_whole(
    door: MilterDoor, store: LocalQuarantine
) -> None:
    door.spool_in_memory = 64 << 10
    body = "".join(f"line {n:06d} of a long report\n" for n in range(20000))  # ~580 KB
    ctx = connect(door)
    ctx._envfrom("<alice@example.com>")
    ctx._envrcpt("<bob@example.org>")
    for name, value in (("From", "alice@example.com"), ("Subject", "quarantine-me big")):
        ctx._header(name, value)
    ctx._eoh()
    ctx._feed_body(io.BytesIO(body.encode()))
    milter = ctx.getpriv()
    assert isinstance(milter, MailgateMilter)
    assert milter._spool is not None and milter._spool._rolled  # on disk, not in memory
    ctx._body = io.BytesIO()
    assert ctx._eom() == Milter.DISCARD
    ctx._close()
    [record] = store.list()
    assert store.raw(record.id).split(b"\r\n\r\n", 1)[1] == body.encode()


# ------------------------------------------------------------------------------ failures


@pytest.mark.parametrize(
    ("fail_mode", "expected"), [("tempfail", Milter.TEMPFAIL), ("accept", Milter.ACCEPT)]
)
def test_engine_unavailable_follows_fail_mode(
    store: LocalQuarantine,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    fail_mode: str,
    expected: int,
) -> None:
    never_started = ScanPool(tmp_path, workers=1)  # answers engine_error: not running
    door = MilterDoor(scanner=never_started, store=store, fail_mode=fail_mode)
    raw = message("quarantine-me")
    with caplog.at_level(logging.INFO, logger="mailgate.milter"):
        rc, ctx = feed(door, raw)
    assert rc == expected
    if fail_mode == "tempfail":
        assert ctx._reply == ("451", "4.3.0", "Message could not be scanned, try again later")
    else:
        assert ctx._reply is None and not ctx._headerschanged
    assert store.count() == 0
    [line] = [r.getMessage() for r in caplog.records if "fail_mode" in r.getMessage()]
    assert "queue id 4XyZ1" in line
    assert f"Message-ID <m-{abs(hash('quarantine-me'))}@example.com>" in line
    assert "not running" in line


def test_engine_overrun_follows_fail_mode(
    pool: ScanPool, store: LocalQuarantine, caplog: pytest.LogCaptureFixture
) -> None:
    """A message the engine cannot finish within the milter's budget (far below the pool's
    own): fail_mode decides, and the pool is serving again right after."""
    door = MilterDoor(scanner=pool, store=store, time_budget=0.05)
    slow = message("anything", "<p>" + "<b>x</b> 1234 " * 300_000 + "</p>")
    slow = slow.replace(b"\r\n\r\n", b"\r\nContent-Type: text/html\r\n\r\n", 1)
    with caplog.at_level(logging.WARNING, logger="mailgate.milter"):
        rc, ctx = feed(door, slow)
    assert rc == Milter.TEMPFAIL
    assert ctx._reply[:2] == ("451", "4.3.0")
    assert any("budget" in r.getMessage() and "4XyZ1" in r.getMessage() for r in caplog.records)
    door.fail_mode = "accept"
    rc, _ = feed(door, slow)
    assert rc == Milter.ACCEPT
    door.time_budget = 30
    rc, _ = feed(door, message("reject-me"))
    assert rc == Milter.REJECT


def test_quarantine_store_failure_tempfails_even_in_accept_mode(
    door: MilterDoor, store: LocalQuarantine
) -> None:
    door.fail_mode = "accept"
    store.messages_dir.rmdir()
    store.messages_dir.write_text("not a folder")  # the rename into messages/ fails
    rc, ctx = feed(door, message("quarantine-me"))
    assert rc == Milter.TEMPFAIL
    assert ctx._reply == ("451", "4.3.0", "Message could not be held, try again later")
    assert store.count() == 0


def test_fail_mode_is_validated(door: MilterDoor) -> None:
    with pytest.raises(ValueError, match="fail_mode"):
        MilterDoor(scanner=door.scanner, store=door.store, fail_mode="open")


# --------------------------------------------------------------------------- release mark


def test_released_message_is_not_quarantined_again(
    door: MilterDoor, store: LocalQuarantine, scanner: RecordingScanner
) -> None:
    assert feed(door, message("quarantine-me"))[0] == Milter.DISCARD
    [record] = store.list()
    held = store.raw(record.id)
    claim = store.claim(record.id, "admin", timedelta(minutes=5))  # the release in flight
    mark = make_mark(door.release_secret, record.id, claim.token, held)
    released = f"{RELEASE_HEADER}: {mark}\n".encode() + held.replace(b"\r\n", b"\n")
    scans = len(scanner.calls)
    rc, ctx = feed(door, released)
    assert rc == Milter.ACCEPT
    assert header(ctx, RELEASE_HEADER) is None  # recipients never get a reusable mark
    assert len(store.list()) == 1
    assert len(scanner.calls) == scans
    # The mark is spent: the same message again is scanned and held again.
    assert feed(door, released)[0] == Milter.DISCARD
    assert len(store.list()) == 2


@pytest.mark.parametrize("forgery", ["wrong secret", "unknown id", "other body"])
def test_invalid_release_mark_is_scanned_as_usual(
    door: MilterDoor, store: LocalQuarantine, forgery: str
) -> None:
    raw = message("quarantine-me")
    qid = new_id()
    nonce = "0" * 16
    if forgery == "wrong secret":
        mark = make_mark(b"x" * 32, qid, nonce, raw)
    elif forgery == "unknown id":
        mark = make_mark(door.release_secret, qid, nonce, raw)
    else:
        mark = make_mark(door.release_secret, qid, nonce, message("quarantine-me", body="o\n"))
    rc, _ = feed(door, f"{RELEASE_HEADER}: {mark}\n".encode() + raw)
    assert rc == Milter.DISCARD
    assert store.count() == 1


# ------------------------------------------------------------------------------ command


def test_missing_pymilter_says_what_to_install(tmp_path: Path) -> None:
    # An interpreter where `import Milter` fails, as on a relay-only install.
    result = run_mailgate("milter", without=["Milter"])
    assert result.returncode == 69
    assert "apt-get install libmilter-dev" in result.stderr
    assert "pip install 'mailgate[milter]'" in result.stderr


def test_bad_config_is_reported_before_anything_starts(tmp_path: Path) -> None:
    config = tmp_path / "mailgate.yaml"
    config.write_text("milter:\n  socket: tcp:8890\n")
    result = run_mailgate("milter", "--config", str(config))
    assert result.returncode == 2
    assert "milter.socket" in result.stderr and "line 2" in result.stderr


def test_a_bare_cr_in_a_header_value_is_read_as_a_space(
    door: MilterDoor, scanner: RecordingScanner
) -> None:
    # Decided (issue 10 #19): Postfix hands milter and next hop a space for a bare CR in a
    # header; the door reads it so for any MTA, so the engine judges the header that goes
    # out (one X-Note) and not a second Subject that no recipient sees.
    ctx = connect(door)
    assert ctx._envfrom("<alice@example.com>") == Milter.CONTINUE
    assert ctx._envrcpt("<bob@example.org>") == Milter.CONTINUE
    assert ctx._header("X-Note", " one\rSubject: please reject-me") == Milter.CONTINUE
    assert ctx._header("Subject", " fine") == Milter.CONTINUE
    assert ctx._eoh() == Milter.CONTINUE
    assert ctx._feed_body(io.BytesIO(b"Hello Bob\r\n")) == Milter.CONTINUE
    assert ctx._eom() == Milter.ACCEPT
    ctx._close()
    raw, _envelope = scanner.calls[-1]
    assert raw.startswith(b"X-Note: one Subject: please reject-me\r\nSubject: fine\r\n\r\n")

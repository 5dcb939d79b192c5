"""The audit log: the record's shape from real verdicts, the writer under concurrent use and
logrotate, `mailgate check --json` printing the same record, and no unmasked card number in
the audit log of messages through a real milter door (real worker pool, the shipped pack)."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from mailgate.filter.ops.audit import AuditLog, audit_record
from mailgate.filter.ops.metrics import Metrics
from mailgate.filter.ops.report import Reporter, message_id_of
from mailgate.filter.policy.envelope import Envelope
from mailgate.filter.policy.verdict import Action
from mailgate.filter.scan.engine import Engine
from mailgate.filter.scan.pool import ScanPool
from mailgate.filter.store.quarantine import LocalQuarantine, new_id
from tests.support import samples
from tests.support.background_loop import BackgroundLoop
from tests.support.cards import unmasked_cards
from tests.support.cli import run_in_process
from tests.support.relay_harness import relay_on_pack
from tests.support.skips import NEEDS_PYMILTER
from tests.support.smtp_client import send

if TYPE_CHECKING:
    from mailgate.filter.milter.door import MilterDoor

ROOT = Path(__file__).resolve().parent.parent
RULES = ROOT / "rules"
EXAMPLES = RULES / "examples"
RECORD_KEYS = {
    "time", "door", "queue_id", "message_id", "client_address", "sender", "recipients", "size",
    "action", "rules", "monitor", "hits", "timings", "pack_version", "outcome",
}  # fmt: skip


def test_stored_ids_never_read_as_card_numbers() -> None:
    """Quarantine and outbox ids go into the audit log, the SMTP reply and the index. Their
    time digits, run together, made a 17-digit number that passed Luhn one time in ten: a
    false leak to any DLP scanner of our logs. A day, three stamps a minute, stays clean."""
    start = datetime(2026, 11, 27, tzinfo=UTC)
    leaks = [
        qid
        for minute in range(24 * 60)
        for millis in (0, 245, 999)
        if unmasked_cards(qid := new_id(start + timedelta(minutes=minute, milliseconds=millis)))
    ]
    assert leaks == []


@pytest.fixture(scope="module")
def engine() -> Engine:
    return Engine.load(RULES)


def test_record_from_a_real_verdict_is_complete_json_and_masked(engine: Engine) -> None:
    raw = (EXAMPLES / "card-plain.eml").read_bytes()
    envelope = Envelope(
        mail_from="alice@example.com",
        rcpt_tos=("bob@example.org", "carol@example.org"),
        client_address="192.0.2.7",
        queue_id="4XyZ1",
        door="relay",
    )
    verdict = engine.scan(raw, envelope)
    actions = {rule.id: str(rule.action) for rule in engine.pack.rules}
    outcome = {"reply": "250 2.0.0 Held for review in quarantine as Q1", "quarantine_id": "Q1"}
    record = audit_record(
        "relay", envelope, message_id_of(raw), len(raw), verdict, outcome, actions
    )
    line = json.dumps(record)
    assert set(record) >= RECORD_KEYS
    assert json.loads(line) == record
    assert record["door"] == "relay" and record["queue_id"] == "4XyZ1"
    assert record["message_id"] == "<sample@example.com>"
    assert record["client_address"] == "192.0.2.7"
    assert record["recipients"] == ["bob@example.org", "carol@example.org"]
    assert record["size"] == len(raw)
    assert record["action"] == "quarantine" and record["rules"] == ["card-number"]
    assert record["rule_actions"] == {"card-number": "quarantine"}
    assert record["outcome"]["quarantine_id"] == "Q1"
    assert record["pack_version"] == engine.version
    assert set(record["timings"]) >= {"parse", "rules", "total"}
    [hit] = record["hits"]
    assert hit == {
        "rule": "card-number",
        "mode": "enforce",
        "detector": "dlp:credit_card",
        "where": "1",
        "count": 1,
        "sample": "**** **** **** 1111",
    }
    assert datetime.fromisoformat(record["time"]).utcoffset() == UTC.utcoffset(None)
    assert "Deposit" not in line  # the Subject is not logged
    assert unmasked_cards(line) == []


def test_monitor_hits_say_what_they_would_have_done(tmp_path: Path) -> None:
    (tmp_path / "p.yaml").write_text(
        "rules:\n"
        "  - id: watch-card\n    mode: monitor\n    when: [{dlp: credit_card}]\n"
        "    action: reject\n"
    )
    engine = Engine.load(tmp_path)
    raw = (EXAMPLES / "card-plain.eml").read_bytes()
    envelope = Envelope("alice@example.com", ("bob@example.org",))
    verdict = engine.scan(raw, envelope)
    record = audit_record(
        "check",
        envelope,
        "",
        len(raw),
        verdict,
        {},
        {r.id: str(r.action) for r in engine.pack.rules},
    )
    assert record["action"] == "accept" and record["monitor"] == ["watch-card"]
    assert record["hits"][0]["mode"] == "monitor"
    assert record["rule_actions"] == {"watch-card": "reject"}


def test_message_id_is_read_from_the_header_section_only() -> None:
    assert message_id_of(b"Subject: x\r\nMessage-ID:\r\n <folded@x>\r\n\r\nbody") == "<folded@x>"
    assert message_id_of(b"Subject: x\r\n\r\nMessage-ID: <in-body@x>\r\n") == ""


def test_audit_log_is_one_whole_line_per_record_from_many_threads(tmp_path: Path) -> None:
    path = tmp_path / "log" / "audit.jsonl"
    audit = AuditLog(path)
    padding = "x" * 5000  # longer than a pipe's atomic write: lines must still not interleave

    def writer(n: int) -> None:
        for i in range(100):
            audit.write({"writer": n, "i": i, "action": "accept", "pad": padding})

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    records = [json.loads(line) for line in path.read_text().splitlines()]
    assert len(records) == 800
    assert {(r["writer"], r["i"]) for r in records} == {
        (n, i) for n in range(8) for i in range(100)
    }

    # logrotate: the file is moved away; after reopen the writer continues in a fresh file.
    path.rename(tmp_path / "log" / "audit.jsonl.1")
    audit.write({"after": "rename, before reopen"})
    audit.reopen()
    audit.write({"after": "reopen"})
    audit.close()
    assert path.read_text().splitlines() == ['{"after":"reopen"}']
    assert (tmp_path / "log" / "audit.jsonl.1").read_text().count("\n") == 801


def test_audit_log_defaults_to_stdout(capsys: pytest.CaptureFixture[str]) -> None:
    AuditLog(None).write({"action": "accept", "message_id": "<m@x>"})
    assert json.loads(capsys.readouterr().out) == {"action": "accept", "message_id": "<m@x>"}


def test_check_json_prints_the_audit_record(capsys: pytest.CaptureFixture[str]) -> None:
    files = [str(EXAMPLES / "card-plain.eml"), str(EXAMPLES / "plain-business.eml")]
    result = run_in_process(capsys, "check", "--json", "--rules", str(RULES), *files)
    assert result.returncode == 0
    records = [json.loads(line) for line in result.stdout.splitlines()]
    assert [r["file"] for r in records] == files
    for record in records:
        assert set(record) >= RECORD_KEYS and record["door"] == "check"
    assert [r["action"] for r in records] == ["quarantine", "accept"]


# ------------------------------------------------- card numbers through the milter door


@pytest.fixture
def milter_audit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[MilterDoor, Path]]:
    """A milter door on the shipped pack, writing its audit log; the rest of this module runs
    without pymilter."""
    pytest.importorskip("Milter", reason=NEEDS_PYMILTER, exc_type=ImportError)
    from mailgate.filter.milter.door import MilterDoor
    from tests.support.milter_ctx import no_reply_is_continue

    no_reply_is_continue(monkeypatch)
    engine = BackgroundLoop()
    pool = ScanPool(RULES, workers=1, time_budget=20)
    engine.run(pool.start(), timeout=90)
    store = LocalQuarantine(tmp_path / "quarantine")
    audit_path = tmp_path / "audit.jsonl"
    reporter = Reporter(AuditLog(audit_path), Metrics(), engine=lambda: pool.engine)
    door = MilterDoor(scanner=pool, store=store, time_budget=30, reporter=reporter)
    try:
        yield door, audit_path
    finally:
        assert reporter.audit is not None
        reporter.audit.close()
        engine.run(pool.close(), timeout=30)
        engine.close()


def test_milter_audit_log_holds_no_unmasked_card_number(
    milter_audit: tuple[MilterDoor, Path],
) -> None:
    from tests.support.milter_ctx import feed

    door, audit_path = milter_audit
    samples = sorted(EXAMPLES.glob("card-*.eml"))
    extra = (
        b"From: <alice@example.com>\r\nTo: <bob@example.org>\r\nSubject: cards 4111111111111111\r\n"
        b"Message-ID: <cards@example.com>\r\n\r\n"
        b"Visa 4111111111111111, Mastercard 5555-5555-5555-4444, Amex 3782 822463 10005.\r\n"
    )
    raws = [p.read_bytes() for p in samples] + [extra]
    for raw in raws:
        feed(door, raw)
    text = audit_path.read_text()
    records = [json.loads(line) for line in text.splitlines()]
    assert len(records) == len(raws)
    assert all(r["door"] == "milter" and r["action"] == "quarantine" for r in records), [
        (r["message_id"], r["action"]) for r in records
    ]
    assert all(
        r["outcome"]["milter"] == "discard" and r["outcome"]["quarantine_id"] for r in records
    )
    samples_seen = [h["sample"] for r in records for h in r["hits"] if h["rule"] == "card-number"]
    assert samples_seen and all("*" in s for s in samples_seen)
    # Quarantine ids start with 17 digits of time, which may pass the Luhn check by chance.
    for record in records:
        text = text.replace(record["outcome"]["quarantine_id"], "<qid>")
    assert unmasked_cards(text) == []
    for secret in (
        "4111111111111111",
        "4111 1111 1111 1111",
        "5555-5555-5555-4444",
        "378282246310005",
    ):
        assert secret not in text


def test_relay_audits_messages_refused_before_the_rules(tmp_path: Path) -> None:
    """Too big, or a line too long: refused at DATA, before the engine; still one record
    each, action reject, no rules, the reply as the outcome, and the size the client sent."""
    limits = {"max_message_size": 10_000, "max_line_length": 1000}
    with (
        relay_on_pack(tmp_path, RULES, limits, audit={"path": "audit.jsonl"}) as relay,
        relay.client() as client,
    ):
        for body in ("y" * 76 + "\r\n") * 200, "z" * 1200 + "\r\n":
            raw = samples.message("refused", body, message_id=f"<m{len(body)}@example.com>")
            assert send(client, raw)[0] in (552, 554)  # no SIZE: the refusal comes at DATA
    records = [json.loads(line) for line in (tmp_path / "audit.jsonl").read_text().splitlines()]
    assert [(r["action"], r["rules"], r["outcome"]["reply"][:9]) for r in records] == [
        ("reject", [], "552 5.3.4"),
        ("reject", [], "554 5.6.0"),
    ]
    assert all(r["outcome"]["refused_before_scan"] for r in records)
    assert records[0]["size"] > 10_000 and records[0]["message_id"] == ""
    assert records[1]["message_id"] == "<m1202@example.com>"
    assert records[1]["sender"] == "alice@example.com"


def test_relay_audit_log_holds_no_unmasked_card_number(tmp_path: Path) -> None:
    bodies = [
        "Card 4111 1111 1111 1111 exp 12/28\r\n",
        "Visa 4111111111111111 and MC 5555-5555-5555-4444\r\n",
        "Amex 3782 822463 10005, thanks\r\n",
    ]
    with (
        relay_on_pack(tmp_path, RULES, audit={"path": "audit.jsonl"}) as relay,
        relay.client() as client,
    ):
        for body in bodies:
            assert send(client, samples.message("numbers", body))[0] == 250
    text = (tmp_path / "audit.jsonl").read_text()
    records = [json.loads(line) for line in text.splitlines()]
    assert [(r["door"], r["action"], r["rules"]) for r in records] == [
        ("relay", "quarantine", ["card-number"])
    ] * len(bodies)
    for record in records:
        text = text.replace(record["outcome"]["quarantine_id"], "<qid>")
    assert unmasked_cards(text) == []
    assert all("*" in h["sample"] for r in records for h in r["hits"])


def test_card_numbers_in_ids_names_and_subjects_never_leave_unmasked(
    engine: Engine, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Where data hides besides the body: the Message-ID, an attachment's name, the Subject.
    None of the audit record, the quarantine index or `quarantine show` holds one in full."""
    raw = samples.mime_message(
        samples.text_part("See attached.\n"),
        samples.attachment_part(b"MZ" + b"\0" * 200, "4111111111111111.exe"),
        subject="Card 5555 5555 5555 4444",
        extra_headers=[("Message-ID", "<4012888888881881@corp.example>")],
    ).replace(b"Message-ID: <sample@example.com>\r\n", b"")
    envelope = Envelope("alice@corp.example", ("bob@partner.example",))
    verdict = engine.scan(raw, envelope)
    assert verdict.action is Action.REJECT  # the executable; the card in the subject too
    record = audit_record("relay", envelope, message_id_of(raw), len(raw), verdict, {})
    assert unmasked_cards(json.dumps(record)) == []
    store = LocalQuarantine(tmp_path / "q")
    qid = store.put(raw, envelope, verdict)
    assert unmasked_cards(json.dumps(store.get(qid).to_dict())) == []
    config = tmp_path / "mailgate.yaml"
    config.write_text(f"quarantine: {{path: {tmp_path / 'q'}}}\n")
    shown = run_in_process(capsys, "quarantine", "show", qid, "--config", str(config))
    assert shown.returncode == 0, shown.stderr
    assert "Message-ID" in shown.stdout and unmasked_cards(shown.stdout) == []

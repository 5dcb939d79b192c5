"""What DLP reads besides the parts: every Subject header, every other top-level header (X-
headers, display names), a multipart's preamble and epilogue; and a header given twice that a
message may have only once, a finding rules can use (`duplicate_header`)."""

from __future__ import annotations

from pathlib import Path

import pytest

from mailgate.filter.policy.envelope import Envelope
from mailgate.filter.policy.pack import PackError
from mailgate.filter.policy.verdict import Action
from mailgate.filter.scan.engine import Engine

RULES = Path(__file__).resolve().parent.parent / "rules"
ENVELOPE = Envelope("alice@corp.example", ("bob@partner.example",))
CARD = "4111 1111 1111 1111"


@pytest.fixture(scope="module")
def default_pack() -> Engine:
    return Engine.load(RULES)


def engine_for(tmp_path: Path, rules: str) -> Engine:
    (tmp_path / "rules.yaml").write_text("rules:\n" + rules)
    return Engine.load(tmp_path)


def raw_message(*headers: str, body: str = "See you Monday.\r\n") -> bytes:
    lines = ["From: Alice <alice@corp.example>", "To: bob@partner.example", *headers]
    return ("\r\n".join(lines) + "\r\n\r\n" + body).encode()


def card_hits(engine: Engine, raw: bytes) -> list[str]:
    verdict = engine.scan(raw, ENVELOPE)
    return [h.where for h in verdict.hits if h.rule == "card-number"]


def test_a_second_subject_is_read(default_pack: Engine) -> None:
    raw = raw_message("Subject: Lunch", f"Subject: Card {CARD}")
    assert card_hits(default_pack, raw) == ["subject"]


def test_subject_condition_reads_every_subject(tmp_path: Path) -> None:
    engine = engine_for(
        tmp_path,
        "  - id: payroll\n    when: [{subject: {regex: '(?i)payroll'}}]\n    action: reject\n",
    )
    raw = raw_message("Subject: Lunch", "Subject: Payroll March")
    assert engine.scan(raw, ENVELOPE).rules == ["payroll"]


@pytest.mark.parametrize(
    "header",
    [
        f"X-Data: {CARD}",
        f"X-Note: =?utf-8?Q?Card_{CARD.replace(' ', '_')}?=",
        f'Reply-To: "Card {CARD}" <alice@corp.example>',
        f"Comments: card\r\n {CARD}",
    ],
)
def test_other_headers_are_read(default_pack: Engine, header: str) -> None:
    """X- headers, display names and free-text headers leave with the message: read decoded
    and unfolded, as the engine reads every header."""
    raw = raw_message("Subject: Lunch", header)
    assert card_hits(default_pack, raw) == ["headers"]


def test_from_display_name_is_read(default_pack: Engine) -> None:
    raw = raw_message("Subject: Lunch").replace(b"From: Alice <", f"From: Card {CARD} <".encode())
    assert card_hits(default_pack, raw) == ["headers"]


def multipart(preamble: str, epilogue: str) -> bytes:
    return (
        "From: alice@corp.example\r\nTo: bob@partner.example\r\nSubject: Lunch\r\n"
        'MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary="b1"\r\n\r\n'
        f"{preamble}\r\n--b1\r\nContent-Type: text/plain\r\n\r\nSee you Monday.\r\n"
        f'--b1\r\nContent-Type: multipart/alternative; boundary="b2"\r\n\r\n{preamble}\r\n'
        "--b2\r\nContent-Type: text/plain\r\n\r\nhi\r\n--b2--\r\n"
        f"{epilogue}\r\n--b1--\r\n{epilogue}\r\n"
    ).encode()


def test_preamble_and_epilogue_are_read(default_pack: Engine) -> None:
    """MIME clients hide the text outside the boundaries; plain readers show it, and it leaves
    with the message."""
    raw = multipart(f"Card {CARD}", f"Card {CARD}")
    assert card_hits(default_pack, raw) == ["preamble", "2.preamble", "2.epilogue", "epilogue"]
    plain = multipart("This is a multi-part message in MIME format.", "")
    assert default_pack.scan(plain, ENVELOPE).action is Action.ACCEPT


DUPLICATES = "  - id: twice\n    when: [{duplicate_header: %s}]\n    action: quarantine\n"


@pytest.mark.parametrize(
    ("spec", "headers", "found"),
    [
        ("any", ["Subject: a", "Subject: b"], "subject"),
        ("any", ["Subject: a", "Content-Type: text/plain", "content-type: text/html"],
         "content-type"),
        ("any", ["Subject: a", "Message-ID: <1@x>", "Message-ID: <2@x>", "Date: x", "DATE: y"],
         "date,message-id"),
        ("any", ["Subject: a", "X-Tag: 1", "X-Tag: 2", "Received: a", "Received: b"], None),
        ("[X-Tag]", ["Subject: a", "X-Tag: 1", "X-Tag: 2"], "x-tag"),
        ("any", ["Subject: a", "To: c@x.example"], "to"),
        ("[Subject]", ["Subject: a", "To: c@x.example"], None),
    ],
)  # fmt: skip
def test_duplicate_header_condition(
    tmp_path: Path, spec: str, headers: list[str], found: str | None
) -> None:
    """`any` is the headers a message has at most once; names can be listed instead. The raw
    message already has a To header, so a second one is a duplicate too."""
    engine = engine_for(tmp_path, DUPLICATES % spec)
    verdict = engine.scan(raw_message(*headers), ENVELOPE)
    assert [h.sample for h in verdict.hits] == ([found] if found else [])


def test_duplicate_header_is_judged_even_when_the_content_is_not_read(tmp_path: Path) -> None:
    """A message the engine could not look into (a crash, an overrun) is judged on its
    headers: the duplicate still shows."""
    engine = engine_for(tmp_path, DUPLICATES % "any")
    verdict = engine.judge_unscannable(raw_message("Subject: a", "Subject: b"), ENVELOPE, "timeout")
    assert verdict.rules == ["twice"]


@pytest.mark.parametrize("spec", ["[]", "5", "{name: Subject}"])
def test_duplicate_header_spellings_lint_refuses(tmp_path: Path, spec: str) -> None:
    with pytest.raises(PackError, match="duplicate_header"):
        engine_for(tmp_path, DUPLICATES % spec)


def test_default_pack_holds_a_duplicate_singleton_header(default_pack: Engine) -> None:
    raw = raw_message(
        "Subject: Lunch",
        "MIME-Version: 1.0",
        "Content-Type: text/plain",
        "Content-Type: text/html",
    )
    verdict = default_pack.scan(raw, ENVELOPE)
    assert verdict.rules == ["duplicate-headers"] and verdict.action is Action.QUARANTINE

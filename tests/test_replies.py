"""SMTP replies: named once (filter/policy/replies.py), so both doors say the same words when
the same thing happens, and no module writes a reply of its own inline."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mailgate.filter import replies
from mailgate.filter.scan.pool import ScanPool
from mailgate.filter.store.quarantine import LocalQuarantine
from tests.support.samples import message
from tests.support.skips import NEEDS_PYMILTER
from tests.support.smtp_client import send

pytestmark = pytest.mark.timeout(60)

ROOT = Path(__file__).resolve().parent.parent


def relay_reply(relay, raw: bytes) -> str:
    with relay.client() as client:
        code, text = send(client, raw)
    return f"{code} {text.decode()}"


@pytest.fixture
def milter_reply(monkeypatch: pytest.MonkeyPatch):
    """The milter door's reply to a message (pymilter's TestCtx stands in for libmilter)."""
    pytest.importorskip("Milter", reason=NEEDS_PYMILTER, exc_type=ImportError)
    from mailgate.filter.milter.door import MilterDoor
    from tests.support.milter_ctx import feed, no_reply_is_continue

    no_reply_is_continue(monkeypatch)

    def reply(scanner: object, store: LocalQuarantine, raw: bytes) -> str:
        _, ctx = feed(MilterDoor(scanner=scanner, store=store), raw)
        return " ".join(ctx._reply)

    return reply


def unwritable(store: LocalQuarantine) -> LocalQuarantine:
    store.messages_dir.rmdir()
    store.messages_dir.write_text("not a folder")  # the rename into messages/ fails
    return store


def test_both_doors_say_the_same_when_the_engine_cannot_answer(
    make_relay, milter_reply, pack, tmp_path
):
    raw = message("hello")
    relay = make_relay(scanner=ScanPool(pack))  # never started: no verdict for anything
    milter = milter_reply(ScanPool(pack), LocalQuarantine(tmp_path / "q"), raw)
    assert relay_reply(relay, raw) == milter == str(replies.NOT_SCANNED)


def test_both_doors_say_the_same_when_the_quarantine_cannot_hold(
    make_relay, milter_reply, pool, tmp_path
):
    raw = message("please quarantine-me")
    relay = make_relay()
    unwritable(relay.store)
    milter = milter_reply(pool, unwritable(LocalQuarantine(tmp_path / "q")), raw)
    assert relay_reply(relay, raw) == milter == str(replies.NOT_HELD)


def test_a_reply_text_is_one_bounded_printable_line() -> None:
    reply = replies.SENDER_DOMAIN_REFUSED.format(sender="a\r\nRCPT TO:<x>\x1b[2J" + "b" * 600)
    assert reply.code == 550 and reply.status == "5.7.1"
    assert str(reply).startswith("550 5.7.1 Sender domain of <a RCPT TO:<x> [2Jbbb")
    assert len(reply.text) == replies.MAX_REPLY_TEXT and reply.text.isprintable()
    # A value holding braces is not a template of its own.
    assert replies.HELD.format(id="{id}").text == "Held for review in quarantine as {id}"
    assert str(replies.HELLO.format(hostname="mx.example")) == "250 mx.example"


# An SMTP reply line ("451 4.3.0 ...") or a code beside an enhanced status ("5.7.1").
REPLY_LINE = re.compile(r"^[2-5]\d\d ")
STATUS = re.compile(r"^[245]\.\d{1,3}\.\d{1,3}\b")


def _leading_text(node: ast.AST) -> str | None:
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.JoinedStr) and node.values:
        return _leading_text(node.values[0])
    return None


def _is_code(node: ast.AST) -> bool:
    return isinstance(node, ast.Constant) and type(node.value) is int and 200 <= node.value < 600


def inline_replies(source: str) -> list[int]:
    """Lines of `source` that write an SMTP reply of their own."""
    found = []
    for node in ast.walk(ast.parse(source)):
        text = _leading_text(node)
        if text is not None and REPLY_LINE.match(text):
            found.append(node.lineno)
        siblings: list[ast.AST] = []
        if isinstance(node, ast.Call):
            siblings = [*node.args, *(k.value for k in node.keywords)]
        elif isinstance(node, ast.Tuple | ast.List):
            siblings = list(node.elts)
        texts = [_leading_text(s) for s in siblings]
        if any(map(_is_code, siblings)) and any(t and STATUS.match(t) for t in texts):
            found.append(node.lineno)
    return sorted(set(found))


def test_no_module_writes_a_reply_inline() -> None:
    written = {
        str(path.relative_to(ROOT)): lines
        for top in ("filter", "relay")
        for path in (ROOT / top).rglob("*.py")
        if path.name != "replies.py" and (lines := inline_replies(path.read_text()))
    }
    assert written == {}


@pytest.mark.parametrize(
    ("source", "found"),
    [
        ('x = "451 4.3.0 Message could not be stored, try again later"', [1]),
        ('x = f"250 2.0.0 Held as {qid}"', [1]),
        ('Reply(553, "5.6.7 The next hop does not support SMTPUTF8")', [1]),
        ('DEFAULT = {1: (550, "5.7.1")}', [1]),
        ('Verdict(smtp_code=451, smtp_status="4.7.1")', [1]),
        ('x = "250-PIPELINING"; y = "2525 is a port"; z = (25, "1.2.3")', []),
    ],
)
def test_the_check_finds_inline_replies(source: str, found: list[int]) -> None:
    assert inline_replies(source) == found


@given(st.text(max_size=60))
def test_reply_text_is_printable_one_line_whatever_it_is_given(text: str) -> None:
    """The short way for printable text gives what the character-by-character way gives."""
    spaced = "".join(c if c.isprintable() else " " for c in text)
    assert replies.reply_text(text) == " ".join(spaced.split())[: replies.MAX_REPLY_TEXT]
    assert replies.reply_text(text).isprintable()

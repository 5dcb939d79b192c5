"""No unread corners (issue 11): a multipart whose boundary never appears is read as the text
it is, its encoded pieces as the parts they were; what lies past a nesting limit is found by
a flat pass and scanned as leaves, the limit still reported (too_deep)."""

from __future__ import annotations

from pathlib import Path

import pytest

from mailgate.filter.message.mime import parse_message
from mailgate.filter.message.model import ScanLimits
from mailgate.filter.scan.engine import Engine, envelope_from_headers
from tests.support import samples as s

ROOT = Path(__file__).resolve().parent.parent
CPYTHON = ROOT / "tests" / "data" / "cpython_email"
CARD = "4111 1111 1111 1111"
HEAD = (
    b"From: Alice <alice@corp.example>\r\nTo: Bob <bob@partner.example>\r\n"
    b"Subject: Lump\r\nMIME-Version: 1.0\r\n"
)


@pytest.fixture(scope="module")
def engine() -> Engine:
    return Engine.load(ROOT / "rules")


def lump(body: bytes, boundary: str = "never-used") -> bytes:
    """A multipart/mixed whose declared boundary appears nowhere in its body."""
    return HEAD + f'Content-Type: multipart/mixed; boundary="{boundary}"\r\n\r\n'.encode() + body


@pytest.mark.parametrize("name", sorted(p.name for p in CPYTHON.glob("msg_*.txt")))
def test_cpython_messages_with_unusable_boundaries_are_read_whole(
    engine: Engine, name: str
) -> None:
    raw = (CPYTHON / name).read_bytes()
    verdict = engine.scan(raw, envelope_from_headers(raw))
    assert verdict.unscannable == []
    # msg_25 is a bounce with two To: headers, which the default pack holds for that alone.
    expected = ["duplicate-headers"] if name == "msg_25.txt" else []
    assert verdict.rules == expected, verdict.hits


def test_all_seven_cpython_messages_are_in_the_corpus() -> None:
    names = {p.name for p in CPYTHON.glob("msg_*.txt")}
    assert names == {f"msg_{n}.txt" for n in (15, 17, 25, 31, 39, 41, 42)}


def test_a_card_in_a_cpython_lump_is_found(engine: Engine) -> None:
    raw = (
        (CPYTHON / "msg_17.txt")
        .read_bytes()
        .replace(b"This is the dingus fish.", f"Card {CARD}, exp 12/28.".encode())
    )
    verdict = engine.scan(raw, envelope_from_headers(raw))
    assert verdict.rules == ["card-number"] and verdict.unscannable == []


def test_encoded_pieces_of_a_lump_are_decoded_and_looked_into(engine: Engine) -> None:
    card_csv = s.encode_body(f"name,card\r\nJ. Doe,{CARD}\r\n".encode(), "base64")
    raw = lump(
        b"Hello,\r\n\r\nthe list:\r\n\r\n"
        b'Content-Type: text/csv; name="customers.csv"\r\nContent-Transfer-Encoding: base64\r\n'
        b"\r\n" + card_csv + b"\r\nBye\r\n"
    )
    message = parse_message(raw)
    assert message.unscannable == set()
    csv = next(p for p in message.parts if p.filename == "customers.csv")
    assert csv.text is not None and "4111111111111111" in csv.text.replace(" ", "")
    lump_text = message.parts[0].text or ""
    assert "Hello," in lump_text and "Bye" in lump_text
    assert card_csv.decode().split()[0] not in lump_text  # the encoded body is read decoded
    assert engine.scan(raw, envelope_from_headers(raw)).rules == ["card-number"]


def test_a_named_executable_in_a_lump_meets_the_attachment_rules(engine: Engine) -> None:
    raw = lump(
        b'Content-Type: application/octet-stream; name="setup.exe"\r\n'
        b"Content-Transfer-Encoding: base64\r\n\r\n" + s.encode_body(s.pe_executable(), "base64")
    )
    verdict = engine.scan(raw, envelope_from_headers(raw))
    assert str(verdict.action) == "reject" and verdict.rules == ["executable-attachment"]


def test_base64_without_headers_in_a_lump_is_decoded(engine: Engine) -> None:
    """A part whose delimiter and headers were lost: its base64 lines still decode."""
    eicar = s.encode_body(s.EICAR + b" " * 40, "base64")
    verdict = engine.scan(lump(b"See below.\r\n\r\n" + eicar), envelope_from_headers(HEAD))
    assert str(verdict.action) == "reject" and verdict.rules == ["eicar-test-file"]


def test_a_lump_of_countless_pieces_is_bounded() -> None:
    """Bad input: 20,000 header paragraphs cost at most the parts allowance, then the lump
    says over_budget; its text is still read."""
    piece = b"Content-Type: application/x-thing\r\n\r\nAAAA\r\n\r\n"
    limits = ScanLimits(max_parts=200)
    message = parse_message(lump(piece * 20_000 + f"card {CARD}".encode()), limits)
    assert len(message.parts) <= limits.max_parts
    assert "over_budget" in message.unscannable
    assert CARD in (message.parts[0].text or "")


def deep_eicar(levels: int) -> bytes:
    inner = s.mime_message(
        s.text_part("The test file."), s.attachment_part(s.EICAR, "eicar.com"), boundary="bottom"
    )
    return s.nested_messages(levels, innermost=inner)


@pytest.mark.parametrize("levels", [8, 60])
def test_eicar_past_the_depth_limit_is_rejected_and_too_deep_reported(
    engine: Engine, levels: int
) -> None:
    raw = deep_eicar(levels)
    verdict = engine.scan(raw, envelope_from_headers(raw))
    assert str(verdict.action) == "reject"
    assert "eicar-test-file" in verdict.rules and "too_deep" in verdict.unscannable


def test_parts_past_the_parsers_nesting_limit_are_read_loosely(engine: Engine) -> None:
    """Forty multiparts inside each other: the parser stops at 32 and leaves the rest whole;
    the loose reading still finds the file at the bottom."""
    entity = s.multipart_entity(
        [s.text_part("bottom"), s.attachment_part(s.EICAR, "eicar.com")], "mixed", "b-40"
    )
    for level in range(39, 0, -1):
        entity = s.multipart_entity([entity], "mixed", f"b-{level}")
    raw = HEAD + entity
    message = parse_message(raw)
    assert "too_deep" in message.unscannable
    assert any(p.filename == "eicar.com" and p.payload == s.EICAR for p in message.parts)
    verdict = engine.scan(raw, envelope_from_headers(raw))
    assert str(verdict.action) == "reject" and "eicar-test-file" in verdict.rules


def eml_chain(levels: int, bottom: bytes) -> bytes:
    """A message with a saved message (.eml, 7bit) attached, which has one attached, ...
    `levels` down: to the parser each is an opaque file, so nothing limits the nesting but
    the walk; built outside in, in one join."""
    heads, tails = [], []
    for level in range(levels):
        b = f"l{level}"
        heads.append(
            f'Subject: level {level}\r\nContent-Type: multipart/mixed; boundary="{b}"\r\n\r\n'
            f"--{b}\r\nContent-Type: text/plain\r\n\r\nlevel {level}\r\n--{b}\r\n"
            'Content-Type: application/octet-stream; name="fwd.eml"\r\n\r\n'.encode()
        )
        tails.append(f"\r\n--{b}--\r\n".encode())
    return b"".join(reversed(heads)) + bottom + b"".join(tails)


def test_eicar_in_a_chain_of_saved_messages_is_found() -> None:
    bottom = b"Subject: bottom\r\nContent-Type: application/octet-stream\r\n\r\n" + s.EICAR
    parsed = parse_message(HEAD + eml_chain(40, bottom))
    assert "too_deep" in parsed.unscannable
    assert any(p.payload.startswith(s.EICAR) for p in parsed.parts)


def test_a_chain_of_thousands_of_saved_messages_is_bounded() -> None:
    """Bad input: 3,000 levels of .eml in .eml: the flat pass loops instead of recursing, and
    stops at the parts or the decoded-bytes allowance (each level is decoded anew)."""
    chain = eml_chain(3000, b"Subject: bottom\r\n\r\nthe end\r\n")
    parsed = parse_message(HEAD + chain, ScanLimits(max_parts=300))
    assert len(parsed.parts) <= 300
    assert {"too_deep", "over_budget"} <= parsed.unscannable


def test_a_chain_of_encoded_messages_finds_the_file_at_the_bottom(engine: Engine) -> None:
    """5,000 message/rfc822 parts, each quoted-printable (which leaves text without '='
    as it is, so nothing shrinks): no recursion error, the EICAR file at the bottom found."""
    head = b"Content-Type: message/rfc822\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n"
    bottom = b"Subject: bottom\r\nContent-Type: application/octet-stream\r\n\r\n" + s.EICAR
    raw = HEAD + head * 5000 + bottom
    verdict = engine.scan(raw, envelope_from_headers(raw))
    assert str(verdict.action) == "reject" and "eicar-test-file" in verdict.rules
    assert "too_deep" in verdict.unscannable

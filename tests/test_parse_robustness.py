"""Hostile and malformed input: parsing always completes and returns a bounded Message."""

from __future__ import annotations

import re
from email import message as email_message
from email.feedparser import FeedParser
from email.policy import compat32

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mailgate.filter.message.mime import (
    _BoundedFeedParser,
    _Entity,
    _LineBuffer,
    parse_entity,
    parse_message,
)
from mailgate.filter.message.model import UNSCANNABLE_REASONS, Message, ScanLimits
from tests.support.hostile import HOSTILE
from tests.support.outlook_msg import simple_msg
from tests.support.pdfs import make_pdf, pdf_with_extras, show
from tests.support.samples import (
    VISA_TEST_CARD,
    attachment_part,
    bzip2_bytes,
    docx_bytes,
    gzip_bytes,
    mime_message,
    ole_doc_with_vba,
    rar4_bytes,
    sevenzip_bytes,
    tar_bytes,
    text_part,
    xz_bytes,
    zip_bytes,
)


def check(msg: Message, raw: bytes) -> None:
    """What every parse result must satisfy, whatever the input."""
    assert isinstance(msg, Message)
    assert msg.raw is raw
    assert msg.unscannable <= set(UNSCANNABLE_REASONS)
    limits = ScanLimits()
    assert len(msg.parts) <= limits.max_parts
    assert sum(len(p.text or "") for p in msg.parts) <= limits.max_text_chars
    for name, value in msg.headers:
        assert isinstance(name, str)
        assert len(value) <= limits.max_header_value
    for part in msg.parts:
        assert part.size == len(part.payload)
        assert part.unscannable <= set(UNSCANNABLE_REASONS)


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_hostile_message_parses(name: str) -> None:
    raw = HOSTILE[name]
    check(parse_message(raw), raw)


def test_500k_header_is_cut_and_reported() -> None:
    msg = parse_message(HOSTILE["header_500k"])
    assert len(msg.subject) <= ScanLimits().max_header_value
    assert "over_budget" in msg.unscannable
    assert msg.parts[0].text == "body\n"


def test_deep_multipart_is_reported_too_deep() -> None:
    assert "too_deep" in parse_message(HOSTILE["deep_multipart_200"]).unscannable


def test_unparseable_input_still_gives_dlp_text() -> None:
    msg = parse_message(HOSTILE["deep_multipart_2000"] + VISA_TEST_CARD.encode())
    assert msg.unscannable
    assert any(VISA_TEST_CARD in (p.text or "") for p in msg.parts)


@settings(max_examples=150, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=4000))
def test_random_bytes(raw: bytes) -> None:
    check(parse_message(raw), raw)


_LINES = st.sampled_from(
    [
        b"Content-Type: multipart/mixed; boundary=q",
        b"Content-Type: message/rfc822",
        b"Content-Type: message/delivery-status",
        b"Content-Type: text/html; charset=utf-8",
        b"Content-Transfer-Encoding: base64",
        b"Content-Transfer-Encoding: quoted-printable",
        b"Content-Disposition: attachment; filename*0*=utf-8''a%E9.e; filename*1=xe",
        b"Subject: =?utf-8?B?w6k=?=",
        b"--q",
        b"--q--",
        b"",
        b"<b>4111</b>1111",
        b"=E9=",
        b"UEsDBBQAAAAIAA==",
        b"\xff\xfe\x00",
        b" folded continuation",
        b"From someone",
        b"not a header line",
        b"\r",
    ]
)


@settings(max_examples=200, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(_LINES, max_size=60))
def test_random_mime_structure(lines: list[bytes]) -> None:
    raw = b"\r\n".join(lines)
    check(parse_message(raw), raw)


@pytest.mark.parametrize(
    ("raw", "tail"),
    [
        (b"\r\nfirst 4111 1111 1111 1111\r\n\r\nsecond\r\n", "second"),  # no headers at all
        (b"Subject: x\r\nnot a header 4111 1111 1111 1111\r\n\r\nsecond\r\n", "second"),
        (b"Subject: x\r\n\r\n\r\nafter a blank line 4111 1111 1111 1111\r\n", "after"),
    ],
)
def test_single_part_fast_path_never_drops_body_text(raw: bytes, tail: str) -> None:
    """Every body line reaches the text view, whichever way the parser splits the head."""
    texts = "".join(p.text or "" for p in parse_message(raw).parts)
    assert "4111 1111 1111 1111" in texts
    assert tail in texts


def _tree(entity: email_message.Message) -> object:
    """Everything the walk reads from a parsed entity."""
    payload = entity._payload
    body = [_tree(e) for e in payload] if isinstance(payload, list) else payload
    defects = sorted(type(d).__name__ for d in entity.defects)
    return (entity._headers, body, entity.preamble, entity.epilogue, defects)


# Body lines chosen to sit near every boundary and end-of-part test the parser makes, and
# two with a line break that str.splitlines knows and the parser does not.
_BODY_LINES = st.sampled_from(
    [
        *(b"text", b"-", b"--", b"-dash", b"--q", b"--q--", b"--q  ", b"--r", b"--r--", b"--qq"),
        *(b"", b"a\x0cform feed", b"--q\x0b"),
    ]
)
_LEAF_TYPES = st.sampled_from(
    [b"text/plain", b"text/html", b"message/delivery-status", b"message/rfc822", b"x/y"]
)


@st.composite
def _mime_lines(draw: st.DrawFn, depth: int = 0) -> list[bytes]:
    """A MIME entity as lines: leaves, or multiparts (boundary q or r) nested up to 3 deep,
    sometimes with a preamble, an epilogue or no closing boundary."""
    if depth < 3 and draw(st.booleans()):
        boundary = draw(st.sampled_from([b"q", b"r"]))
        lines = [b"Content-Type: multipart/mixed; boundary=" + boundary, b""]
        lines += draw(st.lists(_BODY_LINES, max_size=2))  # preamble
        for _ in range(draw(st.integers(0, 3))):
            lines += [b"--" + boundary, *draw(_mime_lines(depth + 1))]
        if draw(st.booleans()):
            lines += [b"--" + boundary + b"--", *draw(st.lists(_BODY_LINES, max_size=2))]
        return lines
    return [b"Content-Type: " + draw(_LEAF_TYPES), b"", *draw(st.lists(_BODY_LINES, max_size=6))]


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.one_of(st.lists(_LINES, max_size=40), _mime_lines()),
    st.sampled_from([b"\r\n", b"\n", b"\r"]),
)
def test_our_parse_is_the_stock_feed_parse(lines: list[bytes], newline: bytes) -> None:
    """parse_entity feeds the header block first (and the rest only for multipart and
    message entities) through a line buffer that skips impossible boundary tests and hands
    the parser's loops runs of lines at once; the tree must be what the standard library's
    feed parser makes of the whole text at once."""
    data = newline.join(lines)
    stock = FeedParser(_factory=_Entity, policy=compat32)
    stock.feed(data.decode("ascii", "surrogateescape"))
    assert _tree(parse_entity(data)) == _tree(stock.close())


def test_line_buffer_knows_the_parsers_end_of_part_tests() -> None:
    """The shortcut stays on for what the standard parser pushes (boundaries of any text,
    the delivery-status blank line); an unknown test turns it off."""
    parser = _BoundedFeedParser(_factory=_Entity, policy=compat32)
    parser.feed(
        'Content-Type: multipart/report; boundary="a.b-c"\n\n--a.b-c\n'
        "Content-Type: message/delivery-status\n\nReporting-MTA: x\n\nAction: failed\n"
        "--a.b-c--\n"
    )
    parser.close()
    buffer = parser._input
    assert isinstance(buffer, _LineBuffer) and buffer._known_matchers
    buffer.push_eof_matcher(re.compile("anything").match)
    assert not buffer._known_matchers


# Well-formed containers of every kind mailgate opens, to be damaged byte by byte below.
_CONTAINERS: dict[str, bytes] = {
    "a.zip": zip_bytes({"a.txt": b"card " * 50, "b/c.csv": b"1,2\n" * 50}),
    "a.tar.gz": gzip_bytes(tar_bytes({"a.txt": b"hello " * 100, "b.exe": b"MZ" * 100})),
    "a.txt.bz2": bzip2_bytes(b"hello " * 300),
    "a.txt.xz": xz_bytes(b"hello " * 300),
    "a.7z": sevenzip_bytes({"a.txt": b"hello " * 100}),
    "a.rar": rar4_bytes({"a.txt": b"hello " * 100}),
    "a.docx": docx_bytes([["hello"] * 20]),
    "a.doc": ole_doc_with_vba(),
    "a.msg": simple_msg("hello", "world " * 50, {"a.txt": b"hello " * 50, "b.exe": b"MZ" * 50}),
    "b.pdf": pdf_with_extras(
        "hello", files={"a.txt": b"hello " * 40, "b.zip": zip_bytes({"c": b"x"})}, note="n"
    ),
    "a.pdf": make_pdf([show("hello " * 20), show("world")], compress=True),
}


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.sampled_from(sorted(_CONTAINERS)),
    st.lists(st.tuples(st.floats(0, 1, exclude_max=True), st.integers(0, 255)), max_size=8),
    st.floats(0.05, 1),
)
def test_damaged_containers(name: str, flips: list[tuple[float, int]], keep: float) -> None:
    """Flipped bytes and truncation anywhere in any container: parsed, bounded, never raised."""
    data = bytearray(_CONTAINERS[name])
    for where, value in flips:
        data[int(where * len(data))] = value
    raw = mime_message(
        text_part("see attached"), attachment_part(bytes(data[: int(keep * len(data)) or 1]), name)
    )
    check(parse_message(raw), raw)

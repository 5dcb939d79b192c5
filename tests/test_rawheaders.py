"""Top-level headers read from raw bytes: `first_header` answers as `top_headers` does."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from mailgate.filter.message.rawheaders import first_header, top_headers

_PIECES = [b"Message-ID", b"message-id", b"Subject", b"X", b":", b" ", b"\t", b"\r\n", b"\n",
           b"\xff", b"\xc3\xa9", b"<a@b>", b"=?utf-8?q?x?=", b"Message-ID\x1c", b"abc"]  # fmt: skip


@given(st.lists(st.sampled_from(_PIECES), max_size=24).map(b"".join))
def test_first_header_is_the_first_of_top_headers(raw: bytes) -> None:
    for name in ("Message-ID", "Subject"):
        expected = next((v for k, v in top_headers(raw) if k.lower() == name.lower()), "")
        assert first_header(raw, name) == expected


def test_first_header_unfolds_across_a_line_that_is_no_header() -> None:
    raw = b"Subject: a\r\nMessage-ID: <x\r\nnot a header\r\n @y>\r\nSubject: b\r\n\r\nbody"
    assert first_header(raw, "message-id") == "<x @y>"
    assert first_header(raw, "Subject") == "a"
    assert first_header(raw, "To") == ""

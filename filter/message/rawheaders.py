"""Top-level headers read straight from raw bytes, bounded, without parsing the message.

For the places that need a header or two before or without the engine's full parse: the
quarantine record (Subject, Message-ID), the audit log, message files without an envelope,
and messages too hostile to parse. Values are unfolded as RFC 5322 says (the line break
goes, the whitespace stays) and decoded by `headers.decode_header`, the engine's decoder.
"""

from __future__ import annotations

import re

from mailgate.filter.message.charsets import decode_bytes
from mailgate.filter.message.headers import decode_header

_BLANK_LINE = re.compile(rb"\r?\n\r?\n")
HEAD_LIMIT = 256 << 10  # no header section worth reading is longer
VALUE_LIMIT = 1024


def header_section(raw: bytes) -> bytes:
    """Everything before the first blank line (the message's headers), bounded."""
    head = raw[:HEAD_LIMIT]
    match = _BLANK_LINE.search(head)
    return head[: match.start()] if match else head


def top_headers(raw: bytes) -> list[tuple[str, str]]:
    """(name, value) of every top-level header: unfolded, undecoded, each value bounded."""
    headers: list[tuple[str, str]] = []
    for line in header_section(raw).splitlines():
        if line[:1] in (b" ", b"\t"):
            if headers:
                name, value = headers[-1]
                headers[-1] = (name, (value + _text(line))[:VALUE_LIMIT])
            continue
        name, colon, value = line.partition(b":")
        if colon and name and not name[:1].isspace():
            headers.append((_text(name).strip(), _text(value)[:VALUE_LIMIT]))
    return [(name, value.strip()) for name, value in headers]


def decoded(value: str) -> str:
    """A header value as text (RFC 2047 words decoded, unfolded), bounded, as the engine
    reads it: an unknown charset falls back to UTF-8 or Latin-1, never to the raw word."""
    return decode_header(value, VALUE_LIMIT)


def decoded_headers(raw: bytes) -> list[tuple[str, str]]:
    """`top_headers` with each value decoded, as `Message.headers` holds them."""
    return [(name, decoded(value)) for name, value in top_headers(raw)]


def first_header(raw: bytes, name: str) -> str:
    """The first value of a header ('' when absent), unfolded, undecoded: `top_headers`'
    answer, with only that header's lines decoded (the doors ask for it per message)."""
    wanted = name.lower()
    found: str | None = None
    for line in header_section(raw).splitlines():
        if line[:1] in (b" ", b"\t"):
            if found is not None:
                found = (found + _text(line))[:VALUE_LIMIT]
            continue
        key, colon, value = line.partition(b":")
        if not colon or not key or key[:1].isspace():
            continue  # not a header line: a fold after it still belongs to the last header
        if found is not None:
            break
        if _text(key).strip().lower() == wanted:
            found = _text(value)[:VALUE_LIMIT]
    return (found or "").strip()


def _text(data: bytes) -> str:
    return decode_bytes(data, "utf-8")

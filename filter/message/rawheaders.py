"""Top-level headers read straight from raw bytes, bounded, without parsing the message.

For the places that need a header or two before or without the engine's full parse: the
quarantine record (Subject, Message-ID), the audit log, message files without an envelope,
and messages too hostile to parse.
"""

from __future__ import annotations

import re
from email.header import decode_header, make_header

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
                joined = f"{value} {_text(line).strip()}".strip()
                headers[-1] = (name, joined[:VALUE_LIMIT])
            continue
        name, colon, value = line.partition(b":")
        if colon and name and not name[:1].isspace():
            headers.append((_text(name).strip(), _text(value).strip()[:VALUE_LIMIT]))
    return headers


def first_header(raw: bytes, name: str) -> str:
    """The first value of a header ('' when absent), unfolded, undecoded."""
    wanted = name.lower()
    return next((v for k, v in top_headers(raw) if k.lower() == wanted), "")


def decoded(value: str) -> str:
    """An RFC 2047 header value as text; the value as it is when it does not decode."""
    try:
        return str(make_header(decode_header(value)))
    except Exception:
        return value


def _text(data: bytes) -> str:
    return data.decode("utf-8", "replace")

"""The one sanitiser for text from outside (a sender's header, a next hop's reply, an SMTP
command word) on its way to a terminal or a log, and the log format both doors install.

Every character that does not print (controls, ESC, CR and LF, bidi overrides, invisible
format characters, unassigned code points) is written as a JSON-style escape (`\\u001b`), so
no escape sequence reaches a terminal, no line can be split or overwritten in a log, and a
JSON line stays valid JSON. Sensitive values are masked as the audit masks them.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from mailgate.filter.detect.masking import mask_sensitive

LOG_FORMAT = "%(asctime)s %(name)s %(levelname)s %(message)s"


def _escape(char: str) -> str:
    point = ord(char)
    if point <= 0xFFFF:
        return f"\\u{point:04x}"
    point -= 0x10000  # a UTF-16 surrogate pair, as JSON spells characters beyond the BMP
    return f"\\u{0xD800 + (point >> 10):04x}\\u{0xDC00 + (point & 0x3FF):04x}"


def printable(text: str) -> str:
    """`text` with every character that does not print escaped (JSON style)."""
    if text.isprintable():
        return text
    return "".join(char if char.isprintable() else _escape(char) for char in text)


def shown(text: str) -> str:
    """Text from outside as it may reach a terminal or a log: masked, then escaped."""
    return printable(mask_sensitive(text))


# What json.dumps(value, ensure_ascii=False, separators=(",", ":"), default=str) builds for
# each call, made once: one per audit record otherwise.
_ENCODER = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), default=str)


def json_line(value: Any) -> str:
    """One JSON object per line for a terminal or a log: non-ASCII text stays readable, what
    does not print is escaped (json.dumps leaves C1 controls and bidi overrides as they are)."""
    return printable(_ENCODER.encode(value))


class SafeFormatter(logging.Formatter):
    """Log lines with remote strings masked and escaped, whichever logger wrote them (ours,
    aiosmtpd's, libmilter's): a CR or ESC in an SMTP command word cannot forge or rewrite a
    line. A traceback keeps its line breaks; each of its lines is escaped in itself."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        return shown(super().formatMessage(record))

    def formatException(self, ei: Any) -> str:
        return _each_line(super().formatException(ei))

    def formatStack(self, stack_info: str) -> str:
        return _each_line(super().formatStack(stack_info))


def _each_line(text: str) -> str:
    return "\n".join(shown(line) for line in text.split("\n"))


def setup_logging(level: int = logging.INFO, fmt: str = LOG_FORMAT) -> None:
    """Log to stderr through SafeFormatter; once per process, by either door."""
    root = logging.getLogger()
    if not root.handlers:
        root.addHandler(logging.StreamHandler())
    for handler in root.handlers:
        handler.setFormatter(SafeFormatter(fmt))
    root.setLevel(level)

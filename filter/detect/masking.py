"""Masking of sensitive matches: only a masked form ever reaches a log, header or JSON.

Text is masked as the detectors read it (`as_read`): a card number in fullwidth digits, with
no-break spaces or invisible characters between its groups is masked where it stands. A field
of a message (a header value, an envelope address, a Message-ID) is decoded and unfolded
first, so an RFC 2047 word or a fold cannot hide a number, and masked more eagerly
(`mask_field`): no context word tells what a number in an address or an id is.
"""

from __future__ import annotations

import re

from mailgate.filter.message.headers import decode_header
from mailgate.filter.message.textview import as_read_mapped

HEADER_LIMIT = 16 << 10  # a decoded header value is read this far (ScanLimits' default)

# In a field, digit groups joined by any single separator but the ones that end an
# address part: `4111.1111_1111-1111@x`, `<4111 1111-1111.1111@x>` (unfolded).
_DIGIT_RUN = re.compile(r"\d+(?:(?:[^\w@<>]|_)\d+)*")
_DIGITS = re.compile(r"\d")
_SSN_SHAPE = re.compile(r"(\d{3})([- ])(\d{2})\2(\d{4})")


def mask(value: str, keep: int = 4) -> str:
    """Replace every alphanumeric character but the last `keep` with '*', keeping separators.

    '4111 1111 1111 1111' -> '**** **** **** 1111'; short values are masked entirely.
    """
    alnum = sum(c.isalnum() for c in value)
    if alnum <= keep * 2:
        keep = 0
    out = []
    seen = 0
    for c in value:
        if c.isalnum():
            seen += 1
            out.append(c if seen > alnum - keep else "*")
        else:
            out.append(c)
    return "".join(out)


def mask_text(value: str, limit: int = 40) -> str:
    """Mask a free-text regex match: keep the first and last character, bounded length."""
    value = value[:limit]
    if len(value) <= 2:
        return "*" * len(value)
    return value[0] + "*" * (len(value) - 2) + value[-1]


def _masked(text: str, spans: list[tuple[int, int]]) -> str:
    out, at = [], 0
    for start, end in sorted(spans):
        start = max(start, at)
        if start >= end:
            continue
        out.append(text[at:start] + mask(text[start:end]))
        at = end
    return "".join(out) + text[at:]


def sensitive_spans(text: str) -> list[tuple[int, int]]:
    """Where in `text` a built-in DLP detector finds a value, reading it as the detectors do."""
    from mailgate.filter.detect.detectors.registry import (
        DLP_DETECTORS,  # the detectors use this module
    )

    read, origins = as_read_mapped(text)
    return [
        (origins[m.start], origins[m.end - 1] + 1)
        for detector in DLP_DETECTORS.values()
        for m in detector.find(read)
    ]


def mask_sensitive(text: str) -> str:
    """`text` with every value a built-in DLP detector finds masked: for free text that is
    stored or shown (a quarantined message's Subject), where a card number may hide."""
    return _masked(text, sensitive_spans(text))


def _field_spans(text: str) -> list[tuple[int, int]]:
    """Card numbers however their groups are joined, and SSN-shaped numbers: the context
    words that rule numbers in running text in or out do not occur in an address or an id."""
    from mailgate.filter.detect.detectors.credit_card import issuer
    from mailgate.filter.detect.detectors.us_ssn import valid_ssn
    from mailgate.filter.detect.validators import luhn

    read, origins = as_read_mapped(text)
    spans = []
    for run in _DIGIT_RUN.finditer(read):
        digits = "".join(_DIGITS.findall(run.group()))
        card = 13 <= len(digits) <= 19 and issuer(digits) and luhn(digits)
        ssn = _SSN_SHAPE.fullmatch(run.group())
        if card or (ssn and valid_ssn(ssn.group(1), ssn.group(3), ssn.group(4))):
            spans.append((origins[run.start()], origins[run.end() - 1] + 1))
    return spans


def mask_field(value: str) -> str:
    """A header value, an envelope address or a Message-ID as mailgate records and shows it:
    decoded and unfolded, what a detector finds masked, and card numbers and SSNs however
    their groups are joined, the rest kept: `4111.1111.1111.1111@example.com` ->
    `****.****.****.1111@example.com`. The exact address stays in the stored envelope, which
    a release needs."""
    text = decode_header(value, HEADER_LIMIT)
    return _masked(text, sensitive_spans(text) + _field_spans(text))

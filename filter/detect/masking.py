"""Masking of sensitive matches: only a masked form ever reaches a log, header or JSON.

Text is masked as the detectors read it (`as_read`): a card number in fullwidth digits, with
no-break spaces or invisible characters between its groups is masked where it stands. A field
of a message (a header value, an envelope address, a Message-ID) is decoded and unfolded
first, so an RFC 2047 word or a fold cannot hide a number, and masked more eagerly
(`mask_field`): no context word tells what a number in an address or an id is.
"""

from __future__ import annotations

import functools
import re

from mailgate.filter.detect.detectors import TextDetector
from mailgate.filter.detect.detectors.context import ContextDetector
from mailgate.filter.detect.detectors.credit_card import issuer
from mailgate.filter.detect.detectors.it_fiscal_code import ItFiscalCodeDetector
from mailgate.filter.detect.detectors.registry import DLP_DETECTORS
from mailgate.filter.detect.detectors.us_ssn import valid_ssn
from mailgate.filter.detect.patterns.scan import SHORT_TEXT
from mailgate.filter.detect.validators import luhn
from mailgate.filter.message.headers import decode_header
from mailgate.filter.message.textview import as_read, as_read_mapped

HEADER_LIMIT = 16 << 10  # a decoded header value is read this far (ScanLimits' default)
ADDRESS_CACHED = 320  # characters: longer than any SMTP path (RFC 5321: 256)

# Every built-in detector's candidate holds MIN_DIGITS digits (`\d`: of any script) or more
# but two: an IBAN's starts with its country's letters and two check digits, and an Italian
# fiscal code's may be letters only (omocodia writes digits as letters). So a text read with
# fewer digits, no IBAN start and no fiscal code candidate holds nothing a detector finds;
# nor a field's card number or SSN (13 and 9 digits). tests/test_masking_fast.py checks this
# against each detector's own candidate regex.
MIN_DIGITS = 6
_MAY_HOLD = re.compile(rf"\d(?:\D*\d){{{MIN_DIGITS - 1}}}|[A-Za-z]{{2}}\d\d")
_FISCAL_CODE = ItFiscalCodeDetector.candidate.regex


def _candidate(detector: TextDetector) -> re.Pattern[str] | None:
    """The regex every match of `detector` is a match of, when it has one: a ContextDetector
    that keeps the base `find`."""
    if isinstance(detector, ContextDetector) and type(detector).find is ContextDetector.find:
        return detector.candidate.regex
    return None


_DETECTORS = [(detector, _candidate(detector)) for detector in DLP_DETECTORS.values()]

# In a field, digit groups joined by any single separator but the ones that end an
# address part: `4111.1111_1111-1111@x`, `<4111 1111-1111.1111@x>` (unfolded).
_SEPARATOR = r"(?:[^\w@<>]|_)"
_DIGIT_RUN = rf"\d+(?:{_SEPARATOR}\d+)*"
# The digit runs that hold nine digits or more (an SSN's; a card has 13): a run starts at a
# digit no digit reaches, alone or through one separator, before it (where the previous run
# would have gone on), and holds eight more digits, each behind at most one separator.
_LONG_DIGIT_RUN = re.compile(
    rf"\d(?<!\d\d)(?<!\d{_SEPARATOR}\d)(?=(?:{_SEPARATOR}?\d){{8}})\d*(?:{_SEPARATOR}\d+)*"
)
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


def _quiet(read: str) -> bool:
    """Whether no built-in detector can find anything in a short `read` (see MIN_DIGITS):
    most addresses, ids and replies, told in a microsecond instead of eleven searches. A
    longer text goes to the detectors, whose hyperscan reads it faster than `re` would."""
    return (
        len(read) <= SHORT_TEXT
        and _MAY_HOLD.search(read) is None
        and _FISCAL_CODE.search(read) is None
    )


def _detected(read: str, origins: list[int]) -> list[tuple[int, int]]:
    spans = []
    short = len(read) <= SHORT_TEXT
    for detector, candidate in _DETECTORS:
        if short and candidate is not None and candidate.search(read) is None:
            continue  # `find` would search with `re` first: no candidate, nothing found
        spans.extend((origins[m.start], origins[m.end - 1] + 1) for m in detector.find(read))
    return spans


def sensitive_spans(text: str) -> list[tuple[int, int]]:
    """Where in `text` a built-in DLP detector finds a value, reading it as the detectors do."""
    if _quiet(as_read(text)):
        return []
    return _detected(*as_read_mapped(text))


def mask_sensitive(text: str) -> str:
    """`text` with every value a built-in DLP detector finds masked: for free text that is
    stored or shown (a quarantined message's Subject), where a card number may hide."""
    return _masked(text, sensitive_spans(text))


def _field_spans(read: str, origins: list[int]) -> list[tuple[int, int]]:
    """Card numbers however their groups are joined, and SSN-shaped numbers: the context
    words that rule numbers in running text in or out do not occur in an address or an id."""
    spans = []
    for run in _LONG_DIGIT_RUN.finditer(read):
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
    if _quiet(as_read(text)):
        return text
    read, origins = as_read_mapped(text)
    return _masked(text, _detected(read, origins) + _field_spans(read, origins))


def mask_address(address: str) -> str:
    """`mask_field` of an envelope address, remembered: the same senders and recipients come
    back message after message, and the masked form depends on the address alone."""
    return _mask_address(address) if len(address) <= ADDRESS_CACHED else mask_field(address)


@functools.lru_cache(maxsize=4096)
def _mask_address(address: str) -> str:
    return mask_field(address)

"""Dutch citizen service numbers (burgerservicenummer, BSN), with "BSN" or the like nearby.

Nine digits, plain or written 1234.56.782 or 123 456 782, that pass the 11-test (elfproef) of
the BSN specification: 9·d1 + 8·d2 + ... + 2·d8 - 1·d9 is a multiple of 11 (and the number is
not all zeros).
"""

from __future__ import annotations

import re

from mailgate.filter.detect.detectors.context import ContextDetector, keyword_regex
from mailgate.filter.detect.patterns import FastRegex

_CANDIDATE = FastRegex(
    re.compile(
        r"(?<![\d.-])(?<!\d )(?:\d{9}|\d{4}\.\d{2}\.\d{3}|\d{3} \d{3} \d{3})"
        r"(?![\d-])(?!\.\d)(?! \d)"
    )
)
KEYWORDS = (
    "bsn", "burgerservicenummer", "burgerservice nummer", "burger service nummer",
    "sofinummer", "sofi-nummer", "sofi nummer", "citizen service number", "persoonsnummer",
)  # fmt: skip
_WEIGHTS = (9, 8, 7, 6, 5, 4, 3, 2, -1)


def eleven_test(number: str) -> bool:
    """The BSN 11-test over nine digits (separators ignored)."""
    digits = [int(c) for c in number if c.isdigit()]
    if len(digits) != 9 or not any(digits):
        return False
    return sum(w * d for w, d in zip(_WEIGHTS, digits, strict=True)) % 11 == 0


class NlBsnDetector(ContextDetector):
    name = "nl_bsn"
    candidate = _CANDIDATE
    keywords = keyword_regex(KEYWORDS)

    def valid(self, m: re.Match[str]) -> bool:
        return eleven_test(m.group())

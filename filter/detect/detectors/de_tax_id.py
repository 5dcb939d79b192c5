"""German tax identification numbers (steuerliche Identifikationsnummer), with context words.

Eleven digits, plain or in groups 2-3-3-3, as §139b AO and the Federal Central Tax Office
define them: the first digit is not 0; among the first ten, exactly one digit occurs twice or
three times (three times, not all in a row) and every other at most once; the eleventh is the
ISO 7064 MOD 11,10 check digit of the first ten.
"""

from __future__ import annotations

import re
from collections import Counter

from mailgate.filter.detect.detectors.context import ContextDetector, keyword_regex
from mailgate.filter.detect.patterns import FastRegex

_CANDIDATE = FastRegex(
    re.compile(r"(?<![\d-])(?<!\d )(?:\d{11}|\d{2} \d{3} \d{3} \d{3})(?![\d-])(?! \d)")
)
KEYWORDS = (
    "steuer-id", "steuerid", "steuer-idnr", "steuer-id-nr", "steueridnr", "idnr", "id-nr",
    "identifikationsnummer", "steueridentifikationsnummer", "steuer-identifikationsnummer",
    "steuerliche identifikationsnummer", "tin", "tax id", "tax identification number",
)  # fmt: skip


def iso7064_mod11_10(digits: str) -> int:
    """The ISO 7064 MOD 11,10 check digit of a string of digits."""
    product = 10
    for c in digits:
        total = (int(c) + product) % 10 or 10
        product = total * 2 % 11
    return (11 - product) % 10


def valid_tax_id(number: str) -> bool:
    digits = number.replace(" ", "")
    if len(digits) != 11 or not digits.isascii() or not digits.isdigit() or digits[0] == "0":
        return False
    counts = Counter(digits[:10])
    repeated = [d for d, n in counts.items() if n > 1]
    if len(repeated) != 1 or counts[repeated[0]] > 3:
        return False
    if counts[repeated[0]] == 3 and repeated[0] * 3 in digits[:10]:
        return False
    return iso7064_mod11_10(digits[:10]) == int(digits[10])


class DeTaxIdDetector(ContextDetector):
    name = "de_tax_id"
    candidate = _CANDIDATE
    keywords = keyword_regex(KEYWORDS)

    def valid(self, m: re.Match[str]) -> bool:
        return valid_tax_id(m.group())

"""Passport machine-readable zones (ICAO Doc 9303, TD3: two lines of 44 characters).

The second line holds the document number, nationality, date of birth, sex, expiry and
optional data, with ICAO's check digits (weights 7, 3, 1; digits as themselves, A-Z as 10-35,
`<` as 0) over the number, the birth date, the expiry and the optional data, and a composite
check digit over all of them. A line passing all five counts when the first line (`P<` and
the names) stands right above it or a context word ("passport", "MRZ", ...) is near; the
match covers both lines then, so a mask hides the name too.
"""

from __future__ import annotations

import re

from mailgate.filter.detect.detectors.context import ContextDetector, keyword_regex
from mailgate.filter.detect.patterns import FastRegex

_CANDIDATE = FastRegex(
    re.compile(
        r"(?<![A-Z0-9<])(?P<line1>P[A-Z<]{43}[ \t\r]*\n[ \t]*)?"
        r"(?P<line2>[A-Z0-9<]{9}\d[A-Z<]{3}\d{6}\d[MFX<]\d{6}\d[A-Z0-9<]{14}[\d<]\d)"
        r"(?![A-Z0-9<])"
    )
)
KEYWORDS = (
    "passport", "passports", "mrz", "machine readable zone", "machine-readable zone",
    "travel document", "reisepass", "passeport", "pasaporte", "passaporto", "paspoort",
)  # fmt: skip
_WEIGHTS = (7, 3, 1)


def icao_check(field: str) -> int:
    """ICAO 9303 check digit of a field: weights 7, 3, 1; A-Z as 10-35; '<' as 0."""
    total = 0
    for position, char in enumerate(field):
        value = 0 if char == "<" else int(char) if char.isdigit() else ord(char) - 55
        total += value * _WEIGHTS[position % 3]
    return total % 10


def valid_td3_line2(line: str) -> bool:
    if len(line) != 44:
        return False
    fields = ((0, 9), (13, 19), (21, 27))  # document number, birth date, expiry
    if any(icao_check(line[a:b]) != int(line[b]) for a, b in fields):
        return False
    optional, optional_check = line[28:42], line[42]
    if optional_check == "<":  # allowed when the optional data is all fillers
        if optional.strip("<"):
            return False
    elif icao_check(optional) != int(optional_check):
        return False
    month, day = int(line[15:17]), int(line[17:19])
    if not (1 <= month <= 12 and 1 <= day <= 31):
        return False
    return icao_check(line[0:10] + line[13:20] + line[21:43]) == int(line[43])


class PassportMrzDetector(ContextDetector):
    name = "passport_mrz"
    candidate = _CANDIDATE
    keywords = keyword_regex(KEYWORDS)

    def valid(self, m: re.Match[str]) -> bool:
        return valid_td3_line2(m.group("line2"))

    def in_context(self, text: str, m: re.Match[str]) -> bool:
        return m.group("line1") is not None or super().in_context(text, m)

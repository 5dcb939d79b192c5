"""Spanish identity numbers: DNI (8 digits and a letter) and NIE (X, Y or Z, 7 digits and a
letter), with context words nearby.

The letter is the check of the Ministry of the Interior's rule: the number modulo 23 indexes
TRWAGMYFPDXBNJZSQVHLCKE; for an NIE, X, Y and Z stand for 0, 1 and 2 in front of the digits.
"""

from __future__ import annotations

import re

from mailgate.filter.detect.detectors.context import ContextDetector, keyword_regex
from mailgate.filter.detect.patterns import FastRegex

_CANDIDATE = FastRegex(
    re.compile(r"(?<![A-Za-z0-9])(?:([XYZxyz])[- ]?(\d{7})|(\d{8}))[- ]?([A-Za-z])(?![A-Za-z0-9])")
)
KEYWORDS = (
    "dni", "d.n.i", "nie", "n.i.e", "nif", "n.i.f", "documento nacional de identidad",
    "número de identidad", "numero de identidad", "número de identificación de extranjero",
    "numero de identificacion de extranjero", "identidad",
)  # fmt: skip
LETTERS = "TRWAGMYFPDXBNJZSQVHLCKE"
_NIE_PREFIX = {"X": "0", "Y": "1", "Z": "2"}


def dni_letter(number: str) -> str:
    """The check letter of a DNI's 8 digits, or of an NIE's with X, Y, Z as 0, 1, 2."""
    return LETTERS[int(_NIE_PREFIX.get(number[0].upper(), number[0]) + number[1:]) % 23]


class EsDniDetector(ContextDetector):
    name = "es_dni"
    candidate = _CANDIDATE
    keywords = keyword_regex(KEYWORDS)

    def valid(self, m: re.Match[str]) -> bool:
        prefix, nie_digits, dni_digits, letter = m.groups()
        number = prefix + nie_digits if prefix else dni_digits
        return dni_letter(number) == letter.upper()

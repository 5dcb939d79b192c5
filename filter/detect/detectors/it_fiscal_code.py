"""Italian fiscal codes (codice fiscale of a person), with context words nearby.

Sixteen characters as the Ministry of Finance's decree of 23 December 1976 defines them: three
letters of the surname, three of the name, two of the year, a month letter (A B C D E H L M P R
S T), two of the day (41-71 for women), four of the place of birth and a check letter. Where
two people would share a code, digits are replaced by the letters L M N P Q R S T U V
(omocodia). The check letter is the sum of the odd positions' values from the decree's table
and the even positions' own values (0-9, A-Z as 0-25), modulo 26.
"""

from __future__ import annotations

import re

from mailgate.filter.detect.detectors.context import ContextDetector, keyword_regex
from mailgate.filter.detect.patterns import FastRegex

_DIGIT = r"[\dLMNP-Vlmnp-v]"  # a digit, or the letter that replaces it
_CANDIDATE = FastRegex(
    re.compile(
        rf"(?<![A-Za-z0-9])[A-Za-z]{{6}}{_DIGIT}{{2}}[ABCDEHLMPRSTabcdehlmprst]{_DIGIT}{{2}}"
        rf"[A-Za-z]{_DIGIT}{{3}}[A-Za-z](?![A-Za-z0-9])"
    )
)
KEYWORDS = (
    "codice fiscale", "cod. fiscale", "cod fiscale", "cod. fisc", "c.f", "cf", "tax code",
    "fiscal code", "codice fisc",
)  # fmt: skip
_ODD = dict(
    zip(
        "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ",
        (1, 0, 5, 7, 9, 13, 15, 17, 19, 21, 1, 0, 5, 7, 9, 13, 15, 17, 19, 21,
         2, 4, 18, 20, 11, 3, 6, 8, 12, 14, 16, 10, 22, 25, 24, 23),
        strict=True,
    )
)  # fmt: skip
_OMOCODIA = str.maketrans("LMNPQRSTUV", "0123456789")


def check_letter(first15: str) -> str:
    total = 0
    for position, char in enumerate(first15.upper()):
        if position % 2 == 0:  # odd positions, counting from 1
            total += _ODD[char]
        else:
            total += int(char) if char.isdigit() else ord(char) - 65
    return chr(65 + total % 26)


def valid_fiscal_code(code: str) -> bool:
    code = code.upper()
    day = int(code[9:11].translate(_OMOCODIA))
    return (1 <= day <= 31 or 41 <= day <= 71) and check_letter(code[:15]) == code[15]


class ItFiscalCodeDetector(ContextDetector):
    name = "it_fiscal_code"
    candidate = _CANDIDATE
    keywords = keyword_regex(KEYWORDS)

    def valid(self, m: re.Match[str]) -> bool:
        return valid_fiscal_code(m.group())

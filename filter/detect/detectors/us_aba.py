"""US ABA routing transit numbers, counted only with "routing", "ABA" or the like nearby.

Nine digits whose first two are a Federal Reserve district or thrift range (00-12, 21-32,
61-72, 80), passing the ABA checksum: 3·(d1 + d4 + d7) + 7·(d2 + d5 + d8) + (d3 + d6 + d9) is
a multiple of 10.
"""

from __future__ import annotations

import re

from mailgate.filter.detect.detectors.context import ContextDetector, keyword_regex
from mailgate.filter.detect.patterns import FastRegex

_CANDIDATE = FastRegex(re.compile(r"(?<![\d-])(?<!\d )\d{9}(?![\d-])(?! \d)"))
KEYWORDS = (
    "aba", "routing", "routing number", "routing no", "routing transit number", "rtn",
    "transit number", "ach", "abartn",
)  # fmt: skip
_PREFIXES = frozenset(f"{n:02d}" for n in (*range(0, 13), *range(21, 33), *range(61, 73), 80))


def valid_routing(number: str) -> bool:
    if len(number) != 9 or not number.isascii() or not number.isdigit():
        return False
    if number[:2] not in _PREFIXES or number == "000000000":
        return False
    d = [int(c) for c in number]
    return (3 * (d[0] + d[3] + d[6]) + 7 * (d[1] + d[4] + d[7]) + d[2] + d[5] + d[8]) % 10 == 0


class UsAbaDetector(ContextDetector):
    name = "us_aba"
    candidate = _CANDIDATE
    keywords = keyword_regex(KEYWORDS)

    def valid(self, m: re.Match[str]) -> bool:
        return valid_routing(m.group())

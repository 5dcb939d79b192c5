"""UK National Insurance numbers, counted only with "national insurance" or "NINO" nearby.

HMRC's format (National Insurance Manual NIM39110): two prefix letters, six digits and a suffix
A, B, C or D, often written in pairs (`AB 12 34 56 C`). The first letter is never D, F, I, Q, U
or V, the second never D, F, I, O, Q, U or V, and the prefixes BG, GB, KN, NK, NT, TN and ZZ
are not allocated. There is no check digit, so the context word carries more weight.
"""

from __future__ import annotations

import re

from mailgate.filter.detect.detectors.context import ContextDetector, keyword_regex
from mailgate.filter.detect.patterns import FastRegex

_CANDIDATE = FastRegex(
    re.compile(
        r"(?<![A-Za-z0-9])([A-Za-z]{2}) ?(\d{2}) ?(\d{2}) ?(\d{2}) ?([A-Da-d])(?![A-Za-z0-9])"
    )
)
KEYWORDS = (
    "national insurance", "national insurance number", "national insurance no", "ni number",
    "ni no", "ni no.", "nino", "nin", "insurance number",
)  # fmt: skip
_UNALLOCATED = frozenset({"BG", "GB", "KN", "NK", "NT", "TN", "ZZ"})


def valid_nino(prefix: str) -> bool:
    """Whether HMRC allocates national insurance numbers with this two-letter prefix."""
    prefix = prefix.upper()
    return prefix[0] not in "DFIQUV" and prefix[1] not in "DFIOQUV" and prefix not in _UNALLOCATED


class UkNinoDetector(ContextDetector):
    name = "uk_nino"
    candidate = _CANDIDATE
    keywords = keyword_regex(KEYWORDS)

    def valid(self, m: re.Match[str]) -> bool:
        return valid_nino(m.group(1))

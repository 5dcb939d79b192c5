"""IBANs: registry country and length, mod-97, compact or in groups of four, any case."""

from __future__ import annotations

import re

from mailgate.filter.detect.detectors import Match
from mailgate.filter.detect.patterns import FastRegex
from mailgate.filter.detect.validators import IBAN_LENGTHS, iban

# Compact, or in space-separated groups of four (the last group shorter). The candidate may run
# on into a following word; the country's length decides where the IBAN really ends.
_CANDIDATE = FastRegex(
    re.compile(
        r"(?<![^\W_])[A-Za-z]{2}\d{2}"
        r"(?:[A-Za-z0-9]{11,30}|(?: [A-Za-z0-9]{4}){2,8}(?: [A-Za-z0-9]{1,3})?)"
        r"(?![^\W_])"
    )
)


class IbanDetector:
    name = "iban"

    def find(self, text: str) -> list[Match]:
        found = []
        for m in _CANDIDATE.finditer(text):
            end = _iban_end(m.group())
            if end is not None and iban(m.group()[:end]):
                found.append(Match(m.start(), m.start() + end, m.group()[:end]))
        return found


def _iban_end(candidate: str) -> int | None:
    """Length of the candidate's prefix holding exactly its country's IBAN length."""
    length = IBAN_LENGTHS.get(candidate[:2].upper())
    if length is None:
        return None
    seen = 0
    for index, char in enumerate(candidate):
        if char != " ":
            seen += 1
            if seen == length:
                after = candidate[index + 1 : index + 2]
                return index + 1 if after in ("", " ") else None
    return None

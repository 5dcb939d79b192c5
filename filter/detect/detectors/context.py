"""What the national-identifier detectors share: context words near a validated candidate.

Most identifiers are short runs of digits and letters that occur everywhere (nine digits are a
zip+4, a phone fragment, an amount), so a candidate counts only when it passes its check digit
(or format rules) and a context word of its kind ("BSN", "codice fiscale", ...) stands within
CONTEXT characters before or after it, as `us_ssn` does.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from mailgate.filter.detect.detectors import Match
from mailgate.filter.detect.patterns import FastRegex

CONTEXT = 100  # characters searched for a context word on either side of a candidate


def keyword_regex(words: Iterable[str]) -> re.Pattern[str]:
    """Any of `words` as a whole word, case-insensitive, a space in a word matching any run of
    white space; longer words first, so "card number" wins over "card"."""
    alternatives = sorted((re.escape(w).replace(r"\ ", r"\s+") for w in words), key=len)
    return re.compile(r"(?<!\w)(?:" + "|".join(reversed(alternatives)) + r")(?!\w)", re.I)


class ContextDetector:
    """A candidate regex, a validator of each candidate and the context words of its kind.
    Subclasses set `name`, `candidate` and `keywords`, and define `valid`."""

    name = ""
    candidate: FastRegex
    keywords: re.Pattern[str]

    def valid(self, m: re.Match[str]) -> bool:
        raise NotImplementedError

    def in_context(self, text: str, m: re.Match[str]) -> bool:
        window = (max(0, m.start() - CONTEXT), m.end() + CONTEXT)
        return self.keywords.search(text, *window) is not None

    def find(self, text: str) -> list[Match]:
        return [
            Match(m.start(), m.end(), m.group())
            for m in self.candidate.finditer(text)
            if self.valid(m) and self.in_context(text, m)
        ]

"""Detectors: each a small self-contained module behind one interface.

A text detector finds sensitive values in a part's text view:

    class TextDetector(Protocol):
        name: str                                # "credit_card", "iban", "us_ssn"
        def find(self, text: str) -> list[Match]  # validated matches only

The built-in DLP detectors are registered by name in `DLP_DETECTORS` (see registry.py),
which the `dlp:` rule condition looks up.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True)
class Match:
    start: int  # offsets into the text that was searched
    end: int
    value: str  # the matched text; only ever leaves the engine masked


class TextDetector(Protocol):
    name: str

    def find(self, text: str) -> list[Match]: ...

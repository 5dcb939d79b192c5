"""US Social Security numbers, counted only with "SSN" or "social security" nearby.

Nine digits alone are everywhere (zip+4, phone fragments, amounts), so a number counts only
with a context word within CONTEXT characters before or after it. The number is NNN-NN-NNNN,
NNN NN NNNN or NNNNNNNNN with a valid area (not 000, 666 or 900-999), group (not 00) and
serial (not 0000).
"""

from __future__ import annotations

import re

from mailgate.filter.detect.detectors.context import ContextDetector
from mailgate.filter.detect.patterns import FastRegex

_CANDIDATE = FastRegex(
    re.compile(
        r"(?<![\d-])(?<!\d )(\d{3})(?:(?P<sep>[- ])(\d{2})(?P=sep)|(\d{2}))(\d{4})(?![\d-])(?! \d)"
    )
)
_CONTEXT = re.compile(r"(?<!\w)(?:ssns?|social[\s-]*security|soc\.?\s*sec)(?!\w)", re.I)


def valid_ssn(area: str, group: str, serial: str) -> bool:
    return area not in ("000", "666") and area[0] != "9" and group != "00" and serial != "0000"


class UsSsnDetector(ContextDetector):
    name = "us_ssn"
    candidate = _CANDIDATE
    keywords = _CONTEXT

    def valid(self, m: re.Match[str]) -> bool:
        area, _sep, group_dashed, group_plain, serial = m.groups()
        return valid_ssn(area, group_dashed or group_plain, serial)

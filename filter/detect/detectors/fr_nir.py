"""French social security numbers (NIR, numéro d'inscription au répertoire), with context words.

Fifteen characters as INSEE defines them, plain or grouped `1 84 12 76 451 089 46`: sex (1, 2;
3, 4, 7, 8 for provisional numbers), year, month (01-12, or 20-42 and 50-99 when unknown),
department (01-99, or 2A and 2B for Corsica), commune, order number, and a key: 97 minus the
first thirteen digits modulo 97, where 2A counts as 19 and 2B as 18.
"""

from __future__ import annotations

import re

from mailgate.filter.detect.detectors.context import ContextDetector, keyword_regex
from mailgate.filter.detect.patterns import FastRegex

_CANDIDATE = FastRegex(
    re.compile(
        r"(?<![A-Za-z0-9])([123478]) ?(\d{2}) ?(\d{2}) ?(\d{2}|2[ABab]) ?(\d{3}) ?(\d{3}) ?(\d{2})"
        r"(?![A-Za-z0-9])"
    )
)
KEYWORDS = (
    "sécurité sociale", "securite sociale", "sécu", "secu", "nir", "insee", "carte vitale",
    "numéro de sécurité sociale", "numero de securite sociale", "social security",
    "n° ss", "no ss",
)  # fmt: skip
_CORSICA = {"2A": "19", "2B": "18"}


def nir_key(first13: str) -> int:
    """The key of a NIR's first thirteen characters (2A and 2B read as 19 and 18)."""
    department = first13[5:7].upper()
    number = first13[:5] + _CORSICA.get(department, department) + first13[7:]
    return 97 - int(number) % 97


def valid_nir(number: str) -> bool:
    compact = number.replace(" ", "").upper()
    if len(compact) != 15 or not compact.isascii():
        return False
    month, department, key = int(compact[3:5]), compact[5:7], compact[13:]
    if not (1 <= month <= 12 or 20 <= month <= 42 or 50 <= month <= 99):
        return False
    if department == "00" or not key.isdigit() or not compact[7:13].isdigit():
        return False
    return nir_key(compact[:13]) == int(key)


class FrNirDetector(ContextDetector):
    name = "fr_nir"
    candidate = _CANDIDATE
    keywords = keyword_regex(KEYWORDS)

    def valid(self, m: re.Match[str]) -> bool:
        return valid_nir(m.group())

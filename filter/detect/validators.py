"""Check-digit validators for matched values: Luhn, IBAN and ISO 7064 mod 97-10.

Rules name them in `body: {regex: ..., validator: luhn|iban|mod97}`; the DLP detectors use them
too. Each takes the matched text (separators allowed) and never raises.
"""

from __future__ import annotations

from collections.abc import Callable

# IBAN length per country, from the SWIFT IBAN registry (release 99, 2025).
IBAN_LENGTHS: dict[str, int] = {
    "AD": 24, "AE": 23, "AL": 28, "AT": 20, "AZ": 28, "BA": 20, "BE": 16, "BG": 22, "BH": 22,
    "BI": 27, "BR": 29, "BY": 28, "CH": 21, "CR": 22, "CY": 28, "CZ": 24, "DE": 22, "DJ": 27,
    "DK": 18, "DO": 28, "EE": 20, "EG": 29, "ES": 24, "FI": 18, "FK": 18, "FO": 18, "FR": 27,
    "GB": 22, "GE": 22, "GI": 23, "GL": 18, "GR": 27, "GT": 28, "HN": 28, "HR": 21, "HU": 28,
    "IE": 22, "IL": 23, "IQ": 23, "IS": 26, "IT": 27, "JO": 30, "KW": 30, "KZ": 20, "LB": 28,
    "LC": 32, "LI": 21, "LT": 20, "LU": 20, "LV": 21, "LY": 25, "MC": 27, "MD": 24, "ME": 22,
    "MK": 19, "MN": 20, "MR": 27, "MT": 31, "MU": 30, "NI": 28, "NL": 18, "NO": 15, "OM": 23,
    "PK": 24, "PL": 28, "PS": 29, "PT": 25, "QA": 29, "RO": 24, "RS": 22, "RU": 33, "SA": 24,
    "SC": 31, "SD": 18, "SE": 24, "SI": 19, "SK": 24, "SM": 27, "SO": 23, "ST": 25, "SV": 28,
    "TL": 23, "TN": 24, "TR": 26, "UA": 29, "VA": 22, "VG": 24, "XK": 20, "YE": 30,
}  # fmt: skip

_SEPARATORS = str.maketrans("", "", " -")


def luhn(digits: str) -> bool:
    """Luhn checksum of a number; spaces and dashes are ignored, anything else fails."""
    number = digits.translate(_SEPARATORS)
    if len(number) < 2 or not (number.isascii() and number.isdigit()):
        return False
    total = 0
    for position, char in enumerate(reversed(number)):
        value = ord(char) - 48
        if position % 2:
            value = value * 2 - 9 if value > 4 else value * 2
        total += value
    return total % 10 == 0


def _as_number(value: str) -> int | None:
    """Letters as 10..35, digits as themselves (ISO 7064 / ISO 13616 conversion)."""
    if not (value.isascii() and value.isalnum()):
        return None
    return int("".join(str(int(c, 36)) for c in value.upper()))


def mod97(value: str) -> bool:
    """ISO 7064 MOD 97-10 over an alphanumeric value whose check digits are at the end.

    Spaces and dashes are ignored; letters count as 10..35, case-insensitive.
    """
    compact = value.translate(_SEPARATORS)
    if len(compact) < 3:
        return False
    number = _as_number(compact)
    return number is not None and number % 97 == 1


def iban(value: str) -> bool:
    """A valid IBAN: a registry country, its length, and the mod-97 check (spaces allowed).

    RF creditor references use the same check but are not IBANs ("RF" is no country).
    """
    compact = value.replace(" ", "").upper()
    country, check = compact[:2], compact[2:4]
    if IBAN_LENGTHS.get(country) != len(compact) or not check.isdigit():
        return False
    if check in ("00", "01", "99"):  # ISO 13616 check digits run from 02 to 98
        return False
    number = _as_number(compact[4:] + compact[:4])
    return number is not None and number % 97 == 1


VALIDATORS: dict[str, Callable[[str], bool]] = {"luhn": luhn, "iban": iban, "mod97": mod97}

"""Card numbers for the tests: the Luhn check written out independently of the validator under
test (it is the reference), numbers made valid with it, and a finder of card numbers left
unmasked in what mailgate writes (logs, indexes, command output)."""

from __future__ import annotations

import re

_CARD_RUN = re.compile(r"\d(?:[ -]?\d){12,18}")  # 13-19 digits, spaces or dashes between


def luhn_valid(digits: str) -> bool:
    """The Luhn check of a string of digits, as ISO/IEC 7812 writes it."""
    numbers = [int(c) for c in reversed(digits)]
    total = sum(numbers[0::2]) + sum(sum(divmod(2 * d, 10)) for d in numbers[1::2])
    return total % 10 == 0


def luhn_check_digit(payload: str) -> str:
    """The one digit that makes `payload` + digit pass the Luhn check."""
    return next(d for d in "0123456789" if luhn_valid(payload + d))


def card_number(prefix: str, length: int) -> str:
    """A Luhn-valid number of `length` digits starting with `prefix` (an issuer's range)."""
    payload = prefix + "3" * (length - len(prefix) - 1)
    return payload + luhn_check_digit(payload)


def unmasked_cards(text: str) -> list[str]:
    """Every run of 13-19 digits (spaces or dashes between) that passes the Luhn check."""
    return [
        match.group()
        for match in _CARD_RUN.finditer(text)
        if luhn_valid(re.sub(r"\D", "", match.group()))
    ]

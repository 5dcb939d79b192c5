"""Luhn, mod-97 and IBAN validators: properties and real examples."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mailgate.filter.detect.validators import IBAN_LENGTHS, VALIDATORS, iban, luhn, mod97
from tests.support.cards import luhn_check_digit, luhn_valid

digit_strings = st.text(alphabet="0123456789", min_size=1, max_size=30)


@given(digit_strings)
def test_luhn_exactly_one_check_digit_validates(payload: str) -> None:
    valid = [c for c in "0123456789" if luhn(payload + c)]
    assert len(valid) == 1


@given(digit_strings, st.data())
def test_luhn_detects_every_single_digit_change(payload: str, data: st.DataObject) -> None:
    number = payload + luhn_check_digit(payload)
    index = data.draw(st.integers(0, len(number) - 1))
    new_digit = data.draw(st.sampled_from([d for d in "0123456789" if d != number[index]]))
    assert not luhn(number[:index] + new_digit + number[index + 1 :])


@given(st.text(alphabet="0123456789", min_size=2, max_size=30))
def test_luhn_agrees_with_reference(number: str) -> None:
    assert luhn(number) == luhn_valid(number)


def test_luhn_separators_and_garbage() -> None:
    assert luhn("4111 1111 1111 1111")
    assert luhn("4111-1111-1111-1111")
    assert not luhn("4111 1111 1111 1112")
    assert not luhn("4111x1111111111111")
    assert not luhn("")
    assert not luhn("0")
    assert not luhn("٤١١١١١١١١١١١١١١١")  # non-ASCII digits


def mod97_check(payload: str) -> str:
    value = int("".join(str(int(c, 36)) for c in payload.upper()))
    return f"{98 - (value * 100) % 97:02d}"


alnum = st.text(alphabet="0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ", min_size=1, max_size=30)


@given(alnum)
def test_mod97_appending_check_digits_validates(payload: str) -> None:
    assert mod97(payload + mod97_check(payload))
    assert mod97((payload + mod97_check(payload)).lower())


DIGITS = "0123456789"
LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"


@given(alnum, st.data())
def test_mod97_detects_every_change_of_one_character_within_its_class(
    payload: str, data: st.DataObject
) -> None:
    """A digit for another digit changes the number by k * 10^n with 0 < |k| < 10, a letter for
    another letter (two digits, 10..35) by k * 10^n with 0 < |k| < 26: never a multiple of
    the prime 97, so never missed. (A letter for a digit or back shifts everything after it by
    a digit: that is caught only most of the time, which ISO 7064 does not promise more of.)"""
    value = payload + mod97_check(payload)
    assert mod97(value)
    index = data.draw(st.integers(0, len(value) - 1))
    same_class = DIGITS if value[index] in DIGITS else LETTERS
    replacement = data.draw(st.sampled_from([c for c in same_class if c != value[index]]))
    changed = value[:index] + replacement + value[index + 1 :]
    assert not mod97(changed)
    assert not mod97(changed.lower())


@given(st.text(alphabet=LETTERS, min_size=1, max_size=20), st.data())
def test_mod97_detects_a_changed_letter(payload: str, data: st.DataObject) -> None:
    """The same, with a letter always the one changed (the check digits are two digits, so
    the test above picks a letter less than half the time)."""
    value = payload + mod97_check(payload)
    assert mod97(value)
    index = data.draw(st.integers(0, len(payload) - 1))
    replacement = data.draw(st.sampled_from([c for c in LETTERS if c != value[index]]))
    assert not mod97(value[:index] + replacement + value[index + 1 :])


REAL_IBANS = [
    "DE89 3704 0044 0532 0130 00",
    "GB82 WEST 1234 5698 7654 32",
    "FR14 2004 1010 0505 0001 3M02 606",
    "NL91 ABNA 0417 1643 00",
    "BE68 5390 0754 7034",
    "CH93 0076 2011 6238 5295 7",
    "ES91 2100 0418 4502 0005 1332",
    "IT60 X054 2811 1010 0000 0123 456",
    "NO93 8601 1117 947",
    "MT84 MALT 0110 0001 2345 MTLC AST0 01S",
    "SA03 8000 0000 6080 1016 7519",
    "BR15 0000 0000 0000 1093 2840 814P 2",
    "LC55 HEMM 0001 0001 0012 0012 0002 3015",
    "RU02 0445 2560 0407 0281 0412 3456 7890 1",
]


@pytest.mark.parametrize("value", REAL_IBANS)
def test_real_ibans_validate(value: str) -> None:
    assert iban(value)
    assert iban(value.replace(" ", ""))
    assert iban(value.lower())


@pytest.mark.parametrize("value", REAL_IBANS)
def test_ibans_with_a_changed_digit_fail(value: str) -> None:
    compact = value.replace(" ", "")
    changed = compact[:-1] + ("1" if compact[-1] != "1" else "2")
    assert not iban(changed)


def test_iban_wrong_length_or_country() -> None:
    assert not iban("DE89 3704 0044 0532 0130 0")  # one short
    assert not iban("XX89 3704 0044 0532 0130 00")
    assert not iban("DE89-3704-0044-0532-0130-00")  # IBANs group with spaces only


def test_rf_creditor_reference_is_not_an_iban() -> None:
    # Valid ISO 11649 references: the mod-97 check passes, but RF is no IBAN country.
    body = "ACME2024INV0000017"  # RF + 2 + 18: the length of a German or British IBAN
    computed = "RF" + mod97_check(body + "RF") + body
    for reference in ("RF18 5390 0754 7034", "RF18539007547034", computed):
        rearranged = reference.replace(" ", "")[4:] + reference.replace(" ", "")[:4]
        assert mod97(rearranged)
        assert not iban(reference)
    assert "RF" not in IBAN_LENGTHS


def test_registry_has_the_three_names() -> None:
    assert set(VALIDATORS) == {"luhn", "iban", "mod97"}
    assert VALIDATORS["luhn"]("79927398713")

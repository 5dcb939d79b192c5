"""The national-identifier detectors: the vectors of their specifications, what their
validators catch (hypothesis), the context words they need, and masking of what they find."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mailgate.filter.detect.detectors.de_tax_id import iso7064_mod11_10, valid_tax_id
from mailgate.filter.detect.detectors.es_dni import LETTERS, dni_letter
from mailgate.filter.detect.detectors.fr_nir import nir_key, valid_nir
from mailgate.filter.detect.detectors.it_fiscal_code import check_letter, valid_fiscal_code
from mailgate.filter.detect.detectors.nl_bsn import eleven_test
from mailgate.filter.detect.detectors.passport_mrz import icao_check, valid_td3_line2
from mailgate.filter.detect.detectors.registry import DLP_DETECTORS
from mailgate.filter.detect.detectors.uk_nino import valid_nino
from mailgate.filter.detect.detectors.us_aba import valid_routing
from mailgate.filter.detect.masking import mask_sensitive
from mailgate.filter.policy.envelope import Envelope
from mailgate.filter.policy.pack import PackSource
from mailgate.filter.scan.engine import Engine
from tests.support.samples import text_message

# ICAO Doc 9303 Part 4, Appendix A: the specimen TD3 passport's machine-readable zone.
MRZ_LINE1 = "P<UTOERIKSSON<<ANNA<MARIA<<<<<<<<<<<<<<<<<<<"
MRZ_LINE2 = "L898902C36UTO7408122F1204159ZE184226B<<<<<10"

# (detector, text with a context word, the value in it) from each specification's examples.
FOUND = [
    ("uk_nino", "National Insurance number: AB 12 34 56 C", "AB 12 34 56 C"),
    ("uk_nino", "NINO JG103759A on file", "JG103759A"),
    ("nl_bsn", "BSN: 111222333", "111222333"),
    ("nl_bsn", "burgerservicenummer 1234.56.782", "1234.56.782"),
    ("de_tax_id", "Steuer-ID 86 095 742 719", "86 095 742 719"),
    ("de_tax_id", "Ihre Identifikationsnummer: 36574261809", "36574261809"),
    ("fr_nir", "Numéro de sécurité sociale : 1 84 12 76 451 089 46", "1 84 12 76 451 089 46"),
    ("fr_nir", "NIR 295109912611193", "295109912611193"),
    ("fr_nir", "sécu 1 69 05 2A 012 345 87", "1 69 05 2A 012 345 87"),  # Corsica: 2A as 19
    ("fr_nir", "sécu 2 69 05 2B 012 345 64", "2 69 05 2B 012 345 64"),  # 2B as 18
    ("es_dni", "DNI 12345678Z", "12345678Z"),
    ("es_dni", "su NIE es X-2482300-W", "X-2482300-W"),
    ("es_dni", "D.N.I. 54362315-K", "54362315-K"),
    ("it_fiscal_code", "Codice fiscale: RSSMRA85T10A562S", "RSSMRA85T10A562S"),
    ("it_fiscal_code", "C.F. RCCMNL83S18D969H", "RCCMNL83S18D969H"),
    ("us_aba", "ABA routing 011000015", "011000015"),
    ("us_aba", "wire to routing number 021000021, account 12345", "021000021"),
    ("passport_mrz", f"{MRZ_LINE1}\n{MRZ_LINE2}\n", f"{MRZ_LINE1}\n{MRZ_LINE2}"),
    ("passport_mrz", f"Passport scan, the MRZ reads\n{MRZ_LINE2}\n", MRZ_LINE2),
]

NOT_FOUND = [
    ("uk_nino", "AB 12 34 56 C"),  # no context
    ("uk_nino", "National Insurance: QQ 12 34 56 C"),  # Q never first (HMRC's own sample)
    ("uk_nino", "National Insurance: AO 12 34 56 C"),  # O never second
    ("uk_nino", "National Insurance: GB 12 34 56 C"),  # prefix not allocated
    ("uk_nino", "National Insurance: AB 12 34 56 E"),  # suffix A-D only
    ("nl_bsn", "BSN: 123456789"),  # fails the 11-test
    ("nl_bsn", "BSN: 000000000"),
    ("nl_bsn", "order 111222333"),  # no context
    ("nl_bsn", "BSN: 1112223334"),  # a longer number
    ("de_tax_id", "Steuer-ID 86095742718"),  # wrong check digit
    ("de_tax_id", "Steuer-ID 12345678903"),  # check digit fits, but no digit repeats
    ("de_tax_id", "Steuer-ID 06095742719"),  # leading zero
    ("de_tax_id", "Steuer-ID 11123456788"),  # a digit three times in a row
    ("de_tax_id", "86095742719"),  # no context
    ("fr_nir", "sécu 1 84 12 76 451 089 47"),  # wrong key
    ("fr_nir", "sécu 1 84 13 76 451 089 46"),  # month 13
    ("fr_nir", "sécu 1 69 05 2A 012 345 64"),  # 2B's key on a 2A number
    ("fr_nir", "1 84 12 76 451 089 46"),  # no context
    ("es_dni", "DNI 12345678A"),  # wrong letter
    ("es_dni", "NIE X1234567A"),
    ("es_dni", "12345678Z"),  # no context
    ("it_fiscal_code", "Codice fiscale: RSSMRA85T10A562T"),  # wrong check letter
    ("it_fiscal_code", "Codice fiscale: RSSMRA85T99A562S"),  # no day 99
    ("it_fiscal_code", "RSSMRA85T10A562S"),  # no context
    ("us_aba", "routing 123456789"),  # checksum
    ("us_aba", "routing 991000015"),  # no such district
    ("us_aba", "call 011000015"),  # no context
    ("passport_mrz", "Passport\nL898902C37UTO7408122F1204159ZE184226B<<<<<10"),  # number check
    ("passport_mrz", "Passport\nL898902C36UTO7408122F1204159ZE184226B<<<<<11"),  # composite
    ("passport_mrz", f"the line\n{MRZ_LINE2}\n"),  # no first line, no context word
]


@pytest.mark.parametrize(("detector", "text", "value"), FOUND)
def test_specification_vectors_are_found(detector: str, text: str, value: str) -> None:
    found = DLP_DETECTORS[detector].find(text)
    assert [m.value for m in found] == [value]
    assert [text[m.start : m.end] for m in found] == [value]


@pytest.mark.parametrize(("detector", "text", "value"), FOUND)
def test_long_texts_are_searched_alike(detector: str, text: str, value: str) -> None:
    """Past 1 KB the candidates come from hyperscan, not `re`: the same values."""
    padded = "x " * 700 + text + " y" * 700
    assert [m.value for m in DLP_DETECTORS[detector].find(padded)] == [value]


@pytest.mark.parametrize(("detector", "text"), NOT_FOUND)
def test_invalid_or_out_of_context_values_are_not_found(detector: str, text: str) -> None:
    assert DLP_DETECTORS[detector].find(text) == []


def test_context_words_count_within_a_hundred_characters() -> None:
    bsn = DLP_DETECTORS["nl_bsn"]
    assert bsn.find("BSN" + " " * 95 + "111222333")
    assert not bsn.find("BSN" + " " * 105 + "111222333")
    assert bsn.find("111222333" + " " * 95 + "bsn")


@pytest.mark.parametrize(("detector", "text", "value"), FOUND)
def test_what_is_found_is_masked(detector: str, text: str, value: str) -> None:
    """mask_sensitive reads every registered detector: no value stays whole."""
    masked = mask_sensitive(text)
    compact = re.sub(r"[\s.<-]", "", value)
    assert compact not in re.sub(r"[\s.<-]", "", masked)
    assert masked.replace("*", "") != text.replace("*", "")


def test_engine_evidence_of_each_new_detector_is_masked() -> None:
    rules = "rules:\n" + "".join(
        f"  - {{id: {name.replace('_', '-')}, when: [{{dlp: {name}}}], action: quarantine}}\n"
        for name in dict.fromkeys(name for name, *_ in FOUND)
    )
    engine = Engine.from_source(PackSource({"policy.yaml": rules.encode()}))
    body = "\n\n".join(text for _, text, _ in FOUND)
    verdict = engine.scan(text_message(body), Envelope("a@corp.example", ("b@x.example",)))
    assert {h.detector for h in verdict.hits} == {f"dlp:{name}" for name, *_ in FOUND}
    for _, _, value in FOUND:
        compact = re.sub(r"[\s.<-]", "", value)
        for hit in verdict.hits:
            assert compact not in re.sub(r"[\s.<-]", "", hit.sample)
            assert "*" in hit.sample


# --------------------------------------------------------------------- validators (hypothesis)

digits = st.text(alphabet="0123456789", min_size=1, max_size=1)


def _other_digit(data: st.DataObject, number: str, index: int) -> str:
    replacement = data.draw(st.sampled_from([d for d in "0123456789" if d != number[index]]))
    return number[:index] + replacement + number[index + 1 :]


def _bsn_with_check(eight: str) -> str | None:
    total = sum(w * int(d) for w, d in zip((9, 8, 7, 6, 5, 4, 3, 2), eight, strict=True))
    last = total % 11  # 9 digits pass when the weighted sum minus the last is 0 mod 11
    return eight + str(last) if last < 10 else None


@given(st.text(alphabet="0123456789", min_size=8, max_size=8), st.data())
def test_bsn_eleven_test_catches_every_single_digit_change(eight: str, data: st.DataObject) -> None:
    number = _bsn_with_check(eight)
    if number is None or number == "000000000":
        return  # no ninth digit makes these eight pass
    assert eleven_test(number)
    index = data.draw(st.integers(0, 8))
    assert not eleven_test(_other_digit(data, number, index))


@given(st.text(alphabet="0123456789", min_size=10, max_size=10), st.data())
def test_iso7064_mod11_10_catches_every_single_digit_change(ten: str, data: st.DataObject) -> None:
    number = ten + str(iso7064_mod11_10(ten))
    index = data.draw(st.integers(0, 10))
    changed = _other_digit(data, number, index)
    assert iso7064_mod11_10(changed[:10]) != int(changed[10])


@given(st.permutations("0123456789"), st.integers(1, 9), st.integers(0, 9), st.data())
def test_tax_ids_with_one_digit_twice_validate(
    order: list[str], drop: int, twice: int, data: st.DataObject
) -> None:
    """Ten digits with exactly one twice (one left out) and its check digit: valid, unless it
    starts with 0; any other check digit is not."""
    first = order[:drop] + order[drop + 1 :]  # nine distinct digits
    first.insert(twice, first[(twice + 1) % 9])
    ten = "".join(first)
    number = ten + str(iso7064_mod11_10(ten))
    assert valid_tax_id(number) == (ten[0] != "0")
    assert not valid_tax_id(_other_digit(data, number, 10))


@given(
    st.sampled_from("12"),
    st.integers(0, 99),
    st.integers(1, 12),
    st.sampled_from([f"{n:02d}" for n in range(1, 96)] + ["2A", "2B"]),
    st.integers(0, 999_999),
    st.data(),
)
def test_nir_key_catches_every_single_digit_change(
    sex: str, year: int, month: int, department: str, rest: int, data: st.DataObject
) -> None:
    first13 = f"{sex}{year:02d}{month:02d}{department}{rest:06d}"
    number = first13 + f"{nir_key(first13):02d}"
    assert valid_nir(number)
    index = data.draw(st.sampled_from([i for i in range(15) if i not in (5, 6)]))
    changed = _other_digit(data, number, index)
    assert changed[13:] != f"{nir_key(changed[:13]):02d}"


@given(st.integers(0, 99_999_999), st.sampled_from(["", "X", "Y", "Z"]), st.data())
def test_dni_letter_catches_every_single_digit_change(
    n: int, prefix: str, data: st.DataObject
) -> None:
    number = prefix + (f"{n % 10_000_000:07d}" if prefix else f"{n:08d}")
    letter = dni_letter(number)
    assert letter in LETTERS
    index = data.draw(st.integers(1 if prefix else 0, len(number) - 1))
    assert dni_letter(_other_digit(data, number, index)) != letter


letters = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"


@given(
    st.text(alphabet=letters, min_size=6, max_size=6),
    st.integers(0, 99),
    st.sampled_from("ABCDEHLMPRST"),
    st.sampled_from([*range(1, 32), *range(41, 72)]),
    st.sampled_from(letters),
    st.integers(0, 999),
    st.data(),
)
def test_fiscal_code_check_letter_catches_every_single_change(
    names: str, year: int, month: str, day: int, place: str, town: int, data: st.DataObject
) -> None:
    first15 = f"{names}{year:02d}{month}{day:02d}{place}{town:03d}"
    code = first15 + check_letter(first15)
    assert valid_fiscal_code(code)
    assert valid_fiscal_code(code.lower())
    index = data.draw(st.integers(0, 14))
    alphabet = letters if code[index].isalpha() else "0123456789"
    other = data.draw(st.sampled_from([c for c in alphabet if c != code[index]]))
    changed = code[:index] + other + code[index + 1 :]
    assert check_letter(changed[:15]) != code[15]


@given(st.text(alphabet="0123456789", min_size=8, max_size=8), st.data())
def test_aba_checksum_catches_every_single_digit_change(eight: str, data: st.DataObject) -> None:
    number = "0" + eight[1:]  # district 00-09
    weights = (3, 7, 1, 3, 7, 1, 3, 7)
    total = sum(w * int(d) for w, d in zip(weights, number, strict=True))
    number += str(-total % 10)
    assert valid_routing(number) == (number != "000000000")
    index = data.draw(st.integers(2, 8))  # a change in the district may leave the ranges
    assert not valid_routing(_other_digit(data, number, index))


mrz_chars = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ<"


@given(st.text(alphabet=mrz_chars, min_size=1, max_size=30), st.data())
def test_icao_check_digit_catches_every_single_digit_change(
    field: str, data: st.DataObject
) -> None:
    check = icao_check(field)
    digit_positions = [i for i, c in enumerate(field) if c.isdigit()]
    if not digit_positions:
        return
    index = data.draw(st.sampled_from(digit_positions))
    assert icao_check(_other_digit(data, field, index)) != check


def test_mrz_specimen_and_its_check_digits() -> None:
    assert valid_td3_line2(MRZ_LINE2)
    assert [icao_check(MRZ_LINE2[a:b]) for a, b in ((0, 9), (13, 19), (21, 27))] == [6, 2, 9]
    for index in (9, 19, 27, 42, 43):  # each check digit wrong
        assert not valid_td3_line2(MRZ_LINE2[:index] + "5" + MRZ_LINE2[index + 1 :])


@given(st.text(alphabet=letters, min_size=2, max_size=2))
def test_nino_prefixes_follow_hmrc(prefix: str) -> None:
    allowed = (
        prefix[0] not in "DFIQUV"
        and prefix[1] not in "DFIOQUV"
        and prefix not in {"BG", "GB", "KN", "NK", "NT", "TN", "ZZ"}
    )
    assert valid_nino(prefix) == allowed
    assert valid_nino(prefix.lower()) == allowed

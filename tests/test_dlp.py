"""Built-in DLP detectors: credit_card, iban, us_ssn."""

from __future__ import annotations

from pathlib import Path

import pytest

from mailgate.filter.detect.detectors import Match
from mailgate.filter.detect.detectors.registry import DLP_DETECTORS
from mailgate.filter.detect.validators import luhn
from mailgate.filter.message.textview import as_read
from mailgate.filter.policy.envelope import Envelope
from mailgate.filter.scan.engine import Engine
from tests.support.cards import card_number
from tests.support.samples import attachment_part, mime_message, text_message, text_part

RULES = Path(__file__).resolve().parent.parent / "rules"

card = DLP_DETECTORS["credit_card"]
iban = DLP_DETECTORS["iban"]
ssn = DLP_DETECTORS["us_ssn"]


def grouped(number: str, sizes: tuple[int, ...], separator: str) -> str:
    parts, start = [], 0
    for size in sizes:
        parts.append(number[start : start + size])
        start += size
    return separator.join(parts)


def values(found: list[Match], text: str) -> list[str]:
    for m in found:
        assert text[m.start : m.end] == m.value
    return [m.value for m in found]


ISSUER_NUMBERS = {
    "visa 16": "4111111111111111",
    "visa 13": "4222222222222",
    "visa 19": card_number("4", 19),
    "mastercard": "5555555555554444",
    "mastercard 2-series": "2223000048400011",
    "amex": "378282246310005",
    "discover 6011": "6011111111111117",
    "discover 65": card_number("65", 16),
    "discover 644": card_number("644", 16),
    "diners 14": "30569309025904",
    "diners 36": card_number("36", 14),
    "jcb": "3530111333300000",
    "unionpay": "6200000000000005",
    "unionpay 19": card_number("62", 19),
    "maestro 6759": "6759649826438453",
    "maestro 5018": card_number("5018", 16),
    "maestro 13": card_number("6304", 13),
}


@pytest.mark.parametrize("name", ISSUER_NUMBERS)
def test_every_issuer_plain(name: str) -> None:
    number = ISSUER_NUMBERS[name]
    text = f"here it is: {number}, thanks"
    assert values(card.find(text), text) == [number]


@pytest.mark.parametrize(
    "written",
    [
        "4111 1111 1111 1111",
        "4111-1111-1111-1111",
        "3782 822463 10005",  # Amex 4-6-5
        "3782-822463-10005",
        "3056 930902 5904",  # Diners 4-6-4
        "4222 2222 2222 2",  # Visa 13 as 4-4-4-1
        "6200 0000 0000 0005",
        grouped(card_number("62", 19), (4, 4, 4, 4, 3), " "),
        grouped(card_number("4", 19), (4, 4, 4, 4, 3), "-"),
    ],
)
def test_grouped_formats(written: str) -> None:
    text = f"Card number {written} exp 12/27"
    assert values(card.find(text), text) == [written]


def test_bare_card_without_context_counts() -> None:
    text = "4111111111111111"
    assert values(card.find(text), text) == [text]
    assert values(card.find("\n5555 5555 5555 4444\n"), "\n5555 5555 5555 4444\n")


def test_card_words_in_many_languages() -> None:
    for word in ("Kreditkarte", "carte bancaire", "tarjeta", "CVV", "Visa", "cc#"):
        text = f"Order 1234. {word}: 4111 1111 1111 1111"
        assert values(card.find(text), text) == ["4111 1111 1111 1111"], word


@pytest.mark.parametrize(
    "text",
    [
        "Order number: 4111111111111111",
        "Your order #4111-1111-1111-1111 has shipped",
        "Tracking no. 4111 1111 1111 1111",
        "Invoice 5555555555554444 is due",
        "Ref: 378282246310005",
        "Reference 6011111111111117",
        "PO 4111111111111111",
        "Shipment AWB 4111111111111111",
        "Parcel 4111111111111111 left the depot",
        "Tel. 4111111111111111",
        "ISBN 4111111111111111",
        "Bestellung 4111111111111111",
        "Rechnung Nr. 4111111111111111",
        "Numéro de commande : 4111111111111111",
    ],
)
def test_luhn_valid_business_numbers_with_context_do_not_count(text: str) -> None:
    assert luhn("".join(c for c in text if c.isdigit()))
    assert card.find(text) == []


def test_nearest_context_word_decides() -> None:
    paid = "For order 88812 we charged card 4111 1111 1111 1111"
    assert values(card.find(paid), paid) == ["4111 1111 1111 1111"]
    order = "Card payment for order 4111111111111111"
    assert card.find(order) == []
    expiry_after = "Invoice 4111111111111111 exp 12/27 cvv 123"
    assert values(card.find(expiry_after), expiry_after) == ["4111111111111111"]


@pytest.mark.parametrize(
    "text",
    [
        "4111111111111112",  # fails Luhn
        "4111 1111 1111 1112",
        "1234567812345678",  # fails Luhn, no issuer
        "9111111111111119",  # Luhn-valid, no issuer
        "12345678901234567890123",  # longer digit run
        "1234 4111 1111 1111 1111",  # part of a longer grouped run
        "4111 1111 1111 1111 2222",
        "0.4111111111111111",  # a decimal
        "4111 1111-1111 1111",  # mixed separators
        "41111 111 1111 1111",  # inconsistent grouping
        "Meeting on 2024-01-15 at 10:30, or 15/01/2024",
        "Call +1 (555) 123-4567 or +44 20 7946 0958 or 0049 151 23456789",
        "+4915123456789",  # phone number starting with 4 that happens to be 13 digits
        "Timestamp 20240115123045123 and 1705312245123",
        "**** **** **** 1111",
    ],
)
def test_not_cards(text: str) -> None:
    assert card.find(text) == []


def test_two_cards_and_offsets() -> None:
    text = "a 4111111111111111 b 5555-5555-5555-4444 c"
    found = card.find(text)
    assert values(found, text) == ["4111111111111111", "5555-5555-5555-4444"]
    assert found[0].start == 2


# --- iban --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "written",
    [
        "DE89 3704 0044 0532 0130 00",
        "DE89370400440532013000",
        "de89 3704 0044 0532 0130 00",
        "GB82 WEST 1234 5698 7654 32",
        "FR14 2004 1010 0505 0001 3M02 606",
        "BE68 5390 0754 7034",
        "CH93 0076 2011 6238 5295 7",
        "NO93 8601 1117 947",
    ],
)
def test_iban_found(written: str) -> None:
    text = f"Please pay to IBAN {written} before Friday."
    assert values(iban.find(text), text) == [written]


def test_iban_followed_by_a_four_letter_word() -> None:
    text = "Konto BE68 5390 0754 7034 from now on"
    assert values(iban.find(text), text) == ["BE68 5390 0754 7034"]


@pytest.mark.parametrize(
    "text",
    [
        "RF18 5390 0754 7034",  # creditor reference
        "RF18539007547034",
        "DE89 3704 0044 0532 0130 01",  # bad check
        "DE89 3704 0044 0532 0130",  # too short for DE
        "XX89370400440532013000",
        "ABDE89370400440532013000",  # glued to a word
        "DE89-3704-0044-0532-0130-00",
    ],
)
def test_not_ibans(text: str) -> None:
    assert iban.find(text) == []


# --- us_ssn ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        "SSN: 123-45-6789",
        "ssn 123456789",
        "Social Security number 123-45-6789",
        "her social-security no. is 123 45 6789",
        "Soc. Sec. 123-45-6789",
        "123-45-6789 is his SSN",
    ],
)
def test_ssn_with_context(text: str) -> None:
    found = ssn.find(text)
    assert len(found) == 1
    assert found[0].value.replace("-", "").replace(" ", "") == "123456789"


def test_ssn_context_window() -> None:
    far = "SSN follows." + " " * 150 + "123-45-6789"
    assert ssn.find(far) == []
    near = "SSN follows." + " " * 60 + "123-45-6789"
    assert len(ssn.find(near)) == 1


@pytest.mark.parametrize(
    "text",
    [
        "123-45-6789",  # no context
        "Call 123456789 today",
        "SSN: 000-12-3456",
        "SSN: 666-12-3456",
        "SSN: 900-12-3456",
        "SSN: 999-12-3456",
        "SSN: 123-00-4567",
        "SSN: 123-45-0000",
        "SSN: 123-45-67890",  # longer run
        "SSN: 1234567890",
        "SSN: 123-456789",  # inconsistent separators
        "SSNs are not in this message: 12345-6789",
        "the assn 123-45-6789",  # 'ssn' inside a word
    ],
)
def test_not_ssn(text: str) -> None:
    assert ssn.find(text) == []


def test_registry_names_match_detectors() -> None:
    assert set(DLP_DETECTORS) == {
        "credit_card", "iban", "us_ssn", "uk_nino", "nl_bsn", "de_tax_id", "fr_nir", "es_dni",
        "it_fiscal_code", "us_aba", "passport_mrz",
    }  # fmt: skip
    assert all(name == d.name for name, d in DLP_DETECTORS.items())


# --------------------------------------------------------------------------- as a reader sees it


def in_script(text: str, zero: int) -> str:
    """`text` with its ASCII digits written in the script whose digit zero is `zero`."""
    return "".join(chr(zero + int(c)) if c.isdigit() else c for c in text)


FULLWIDTH, ARABIC_INDIC, MATH_BOLD = 0xFF10, 0x0660, 0x1D7CE


@pytest.mark.parametrize(
    ("written", "detector"),
    [
        (in_script("Card 4111 1111 1111 1111", FULLWIDTH), "credit_card"),
        (in_script("Card 4111 1111 1111 1111", ARABIC_INDIC), "credit_card"),
        (in_script("Card 4111 1111 1111 1111", MATH_BOLD), "credit_card"),
        ("Card 4111\u00a01111\u00a01111\u00a01111", "credit_card"),  # no-break spaces
        ("Card 4111\u202f1111\u202f1111\u202f1111", "credit_card"),  # narrow no-break spaces
        ("Card 4111\u20131111\u20131111\u20131111", "credit_card"),  # en dashes
        ("IBAN DE89\u00a03704\u00a00044\u00a00532\u00a00130\u00a000", "iban"),
        ("SSN 536\u201190\u20114187", "us_ssn"),  # non-breaking hyphens
        ("Card 4111\u200b1111\u200d1111\u00ad1111", "credit_card"),  # zero-width, soft hyphen
        # Invisible separator, combining grapheme joiner, Mongolian vowel separator, a
        # variation selector, a tag character: every Default_Ignorable_Code_Point goes.
        ("Card 4111\u20631111\u034f1111\u180e1111", "credit_card"),
        ("Card 4111\ufe0f1111\U000e00201111\u31641111", "credit_card"),
        ("IBAN DE89\u20643704\u20610044\u17b40532\u206a0130\U0001bca000", "iban"),
    ],
)
def test_numbers_written_in_lookalike_characters_are_found(written: str, detector: str) -> None:
    """Detectors read text through as_read, as the engine hands it to them: what a reader
    sees as a card number is one, whatever code points spell it."""
    assert not DLP_DETECTORS[detector].find(written)  # as written, the detector is blind
    assert DLP_DETECTORS[detector].find(as_read(written))


def all_characters() -> str:
    """Every code point but the surrogates."""
    return "".join(map(chr, [*range(0xD800), *range(0xE000, 0x110000)]))


def test_as_read_drops_exactly_the_default_ignorable_code_points() -> None:
    """The whole Unicode property, from a maintained source, and nothing else: a character
    that reads as nothing is one Unicode says renderers show as nothing."""
    import regex

    everything = all_characters()
    ignorable = set(regex.findall(r"\p{Default_Ignorable_Code_Point}", everything))
    assert len(ignorable) > 4000  # the tags and variation selectors are in it
    assert as_read("".join(sorted(ignorable))) == ""
    others = "".join(c for c in everything if c not in ignorable)
    assert len(as_read(others)) == len(others)


def test_engine_reads_lookalike_digits_and_masks_them() -> None:
    card = in_script("4111 1111 1111 1111", FULLWIDTH)
    raw = text_message(f"Please charge {card}, exp 12/28.\n")
    verdict = Engine.load(RULES).scan(raw, Envelope("a@corp.example", ("b@x.example",)))
    assert verdict.rules == ["card-number"]
    assert [h.sample for h in verdict.hits] == ["**** **** **** 1111"]


def test_a_card_number_in_an_attachment_name_is_found_and_masked() -> None:
    raw = mime_message(
        text_part("Scan attached.\n"),
        attachment_part(b"\x89PNG\r\n\x1a\n" + bytes(64), "card 4111 1111 1111 1111.png"),
    )
    verdict = Engine.load(RULES).scan(raw, Envelope("a@corp.example", ("b@x.example",)))
    assert verdict.rules == ["card-number"]
    assert [(h.where, h.sample) for h in verdict.hits] == [("names", "**** **** **** 1111")]

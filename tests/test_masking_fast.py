"""Masking's quick paths give what the full reading gives: a text that cannot hold what a
detector finds is told so from the detectors' own candidate regexes, a detector without a
candidate in a short text is not run, long digit runs are found in one search, and envelope
addresses are remembered. Each field the audit record holds still has its sensitive values
masked, whatever spelling hides them (omocodia, fullwidth digits, RFC 2047)."""

from __future__ import annotations

import inspect
import re
import sys
from re import _constants as sre
from re import _parser as sre_parse
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from mailgate.filter.detect import masking
from mailgate.filter.detect.detectors.context import ContextDetector
from mailgate.filter.detect.detectors.it_fiscal_code import check_letter, valid_fiscal_code
from mailgate.filter.detect.detectors.registry import DLP_DETECTORS
from mailgate.filter.detect.masking import (
    MIN_DIGITS,
    mask_address,
    mask_field,
    mask_sensitive,
    sensitive_spans,
)
from mailgate.filter.detect.validators import iban, luhn
from mailgate.filter.message.headers import decode_header
from mailgate.filter.message.textview import as_read_mapped
from mailgate.filter.ops.audit import audit_record
from mailgate.filter.policy.envelope import Envelope
from mailgate.filter.policy.verdict import Action, Verdict

FULLWIDTH = str.maketrans("0123456789", "".join(map(chr, range(0xFF10, 0xFF1A))))
ARABIC_INDIC = str.maketrans("0123456789", "".join(map(chr, range(0x0660, 0x066A))))
OMOCODIA = str.maketrans("0123456789", "LMNPQRSTUV")
# RSSMRA85T10A562S with every digit written as its letter, and its check letter: no digit left.
OMOCODIC_15 = "RSSMRA85T10A562".translate(OMOCODIA)
OMOCODIC_CODE = OMOCODIC_15 + check_letter(OMOCODIC_15)
IBAN = "DE89370400440532013000"


def letters_only_iban() -> str:
    """A valid Qatari IBAN whose account part is letters only: its two check digits are its
    only digits."""
    bban = "DOHB" + "ABCDEFGHIJKLMNOPQRSTU"
    number = int("".join(str(int(c, 36)) for c in bban + "QA00"))
    return f"QA{98 - number % 97:02d}{bban}"


LETTERS_IBAN = letters_only_iban()
CARD = "4111111111111111"

# --------------------------------------------------- the reading the quick paths stand for


def full_spans(text: str) -> list[tuple[int, int]]:
    """Every detector run over the whole reading, as masking did before its quick paths."""
    read, origins = as_read_mapped(text)
    return [
        (origins[m.start], origins[m.end - 1] + 1)
        for detector in DLP_DETECTORS.values()
        for m in detector.find(read)
    ]


def full_field_spans(text: str) -> list[tuple[int, int]]:
    """Card numbers and SSN shapes in every digit run, a run at a time."""
    from mailgate.filter.detect.detectors.credit_card import issuer
    from mailgate.filter.detect.detectors.us_ssn import valid_ssn

    read, origins = as_read_mapped(text)
    spans = []
    for run in re.finditer(r"\d+(?:(?:[^\w@<>]|_)\d+)*", read):
        digits = "".join(re.findall(r"\d", run.group()))
        card = 13 <= len(digits) <= 19 and issuer(digits) and luhn(digits)
        ssn = re.fullmatch(r"(\d{3})([- ])(\d{2})\2(\d{4})", run.group())
        if card or (ssn and valid_ssn(ssn.group(1), ssn.group(3), ssn.group(4))):
            spans.append((origins[run.start()], origins[run.end() - 1] + 1))
    return spans


def full_mask_field(value: str) -> str:
    text = decode_header(value, masking.HEADER_LIMIT)
    return masking._masked(text, full_spans(text) + full_field_spans(text))


# ------------------------------------------ why a text with few digits holds nothing


def candidate_regex(detector: Any) -> re.Pattern[str]:
    """The regex whose matches are the only ones `detector.find` can return."""
    if isinstance(detector, ContextDetector):
        assert type(detector).find is ContextDetector.find
        return detector.candidate.regex
    module = sys.modules[type(detector).__module__]
    assert "_CANDIDATE.finditer(text)" in inspect.getsource(type(detector).find)
    return module._CANDIDATE.regex


def _all_digits(members: list[tuple[Any, Any]]) -> bool:
    """Whether a character class matches digits (`\\d`, any script) only."""
    for op, av in members:
        if op is sre.NEGATE:
            return False
        if op is sre.LITERAL and not chr(av).isdecimal():
            return False
        if op is sre.RANGE and not all(chr(c).isdecimal() for c in range(av[0], av[1] + 1)):
            return False
        if op is sre.CATEGORY and av is not sre.CATEGORY_DIGIT:
            return False
        if op not in (sre.LITERAL, sre.RANGE, sre.CATEGORY):
            return False
    return True


def fewest_digits(items: Any) -> int:
    """A lower bound of how many digits any match of a parsed pattern holds."""
    total = 0
    for op, av in items:
        if op is sre.LITERAL:
            total += chr(av).isdecimal()
        elif op is sre.IN:
            total += _all_digits(av)
        elif op in (sre.MAX_REPEAT, sre.MIN_REPEAT, sre.POSSESSIVE_REPEAT):
            total += av[0] * fewest_digits(av[2])
        elif op is sre.SUBPATTERN:
            total += fewest_digits(av[3])
        elif op is sre.ATOMIC_GROUP:
            total += fewest_digits(av)
        elif op is sre.BRANCH:
            total += min(fewest_digits(branch) for branch in av[1])
        # lookarounds, anchors, backreferences, any character: no digit for certain
    return total


def test_every_candidate_holds_six_digits_but_the_iban_and_the_fiscal_code() -> None:
    """What MIN_DIGITS rests on, read from each detector's own candidate regex: should a
    detector come to find values with fewer digits, this fails rather than masking miss it."""
    for name, detector in DLP_DETECTORS.items():
        regex = candidate_regex(detector)
        least = fewest_digits(sre_parse.parse(regex.pattern, regex.flags))
        if name == "it_fiscal_code":
            assert least == 0  # omocodia: its own candidate regex is searched instead
            assert regex is masking._FISCAL_CODE
        elif name == "iban":
            # Whatever precedes is a lookbehind; then the country letters and check digits,
            # which `[A-Za-z]{2}\d\d` in _MAY_HOLD finds.
            items = list(sre_parse.parse(regex.pattern, regex.flags).data)
            while items[0][0] in (sre.ASSERT, sre.ASSERT_NOT):
                items.pop(0)
            assert repr(items[:2]) == repr(sre_parse.parse(r"[A-Za-z]{2}\d{2}").data)
        else:
            assert least >= MIN_DIGITS, name
    # The field's own numbers: a card has 13 digits, an SSN 9.
    assert MIN_DIGITS <= 9


def test_a_fully_omocodic_fiscal_code_has_no_digit_and_is_still_masked() -> None:
    assert valid_fiscal_code(OMOCODIC_CODE) and not re.search(r"\d", OMOCODIC_CODE)
    text = f"Codice fiscale: {OMOCODIC_CODE}"
    assert masking._MAY_HOLD.search(text) is None  # no digits: only its own candidate tells
    assert OMOCODIC_CODE not in mask_sensitive(text)
    assert mask_sensitive(text) == text[:-16] + "*" * 12 + OMOCODIC_CODE[-4:]
    encoded = "=?utf-8?Q?Codice_fiscale=3A_" + OMOCODIC_CODE + "?="
    assert mask_field(encoded) == mask_sensitive(text)


def test_a_long_text_is_read_by_the_detectors_themselves() -> None:
    """Past SHORT_TEXT the quick check is not made (hyperscan reads long text faster)."""
    text = "See you on Monday. " * 60 + f"Codice fiscale: {OMOCODIC_CODE}, IBAN {LETTERS_IBAN}"
    assert len(text) > masking.SHORT_TEXT and not masking._quiet(text)
    assert mask_sensitive(text) == masking._masked(text, full_spans(text))
    assert OMOCODIC_CODE not in mask_sensitive(text) and LETTERS_IBAN not in mask_sensitive(text)


def test_an_iban_with_two_digits_only_is_still_masked() -> None:
    assert iban(LETTERS_IBAN) and len(re.findall(r"\d", LETTERS_IBAN)) == 2
    assert mask_sensitive(f"IBAN {LETTERS_IBAN}") == f"IBAN {'*' * 25}{LETTERS_IBAN[-4:]}"
    assert mask_address(f"{LETTERS_IBAN}@bank.example") == f"{'*' * 25}RSTU@bank.example"


# ------------------------------------------------------- every field of the audit record


def outcome_masked(value: str) -> str:
    verdict = Verdict(Action.ACCEPT)
    record = audit_record("milter", Envelope("a@x", ("b@y",)), "", 1, verdict, {"reply": value})
    return record["outcome"]["reply"]


def test_each_field_of_the_audit_record_masks_what_it_holds() -> None:
    """A value in each field kind, in each spelling the quick paths must not let through."""
    fullwidth_card = CARD.translate(FULLWIDTH)
    arabic_ssn = "536-90-4187".translate(ARABIC_INDIC)
    addresses = {
        f"{CARD}@corp.example": "************1111@corp.example",
        f"{fullwidth_card}@corp.example": "*" * 12 + "1111".translate(FULLWIDTH) + "@corp.example",
        f"ssn-{arabic_ssn}@corp.example": "ssn-***-**-" + "4187".translate(ARABIC_INDIC)
        + "@corp.example",
        f"{IBAN}@bank.example": "******************3000@bank.example",
        "alice@corp.example": "alice@corp.example",
    }  # fmt: skip
    for address, masked in addresses.items():
        envelope = Envelope(address, (address, "bob@partner.example"))
        for _ in range(2):  # the second time from the cache
            record = audit_record("milter", envelope, "", 1, Verdict(Action.ACCEPT), {})
            assert record["sender"] == masked
            assert record["recipients"] == [masked, "bob@partner.example"]
    b64_card = "PDQxMTExMTExMTExMTExMTFAbXguZXhhbXBsZT4="  # <4111111111111111@mx.example>
    message_ids = {
        f"<{CARD}@mx.example>": "<************1111@mx.example>",
        f"=?utf-8?B?{b64_card}?=": "<************1111@mx.example>",
        f"<{fullwidth_card}@mx.example>": "<" + "*" * 12 + "1111".translate(FULLWIDTH)
        + "@mx.example>",
        "<20261202163819.4F3A21C0B@mx.example>": "<20261202163819.4F3A21C0B@mx.example>",
    }  # fmt: skip
    for message_id, masked in message_ids.items():
        record = audit_record(
            "relay", Envelope("a@x", ()), message_id, 1, Verdict(Action.ACCEPT), {}
        )
        assert record["message_id"] == masked
    replies = {
        f"550 5.7.1 card {fullwidth_card} refused": "550 5.7.1 card "
        + "*" * 12 + "1111".translate(FULLWIDTH) + " refused",
        f"250 codice fiscale {OMOCODIC_CODE}": "250 codice fiscale "
        + "*" * 12 + OMOCODIC_CODE[-4:],
        f"550 IBAN {IBAN} unknown": f"550 IBAN {'*' * 18}3000 unknown",
        "accept": "accept",
    }  # fmt: skip
    for reply, masked in replies.items():
        assert outcome_masked(reply) == masked


def test_a_remembered_address_is_the_masked_one_and_long_ones_are_masked_too() -> None:
    long_local = "x" * 400 + CARD
    assert len(long_local) > masking.ADDRESS_CACHED
    for address in (f"{CARD}@corp.example", f"{long_local}@corp.example"):
        first, again = mask_address(address), mask_address(address)
        assert first == again == mask_field(address) and CARD not in first


# ------------------------------------------- the quick paths against the full reading

SAMPLES = [
    CARD, "4111 1111 1111 1111", "4111-1111-1111-1111", "536-90-4187", IBAN,
    "DE89 3704 0044 0532 0130 00", OMOCODIC_CODE, "RSSMRA85T10A562S", "AB 12 34 56 C",
    "111222333", "86 095 742 719", "1 84 12 76 451 089 46", "X-2482300-W", "011000015",
    "L898902C36UTO7408122F1204159ZE184226B<<<<<10", CARD.translate(FULLWIDTH), LETTERS_IBAN,
]  # fmt: skip
WORDS = [
    "card", "ssn", "codice fiscale", "BSN", "Steuer-ID", "sécu", "DNI", "routing", "NINO",
    "IBAN", "order", "@", "<", ">", ".", "-", "_", " ", "\u00a0", "\u2063", "\r\n ", "/",
]  # fmt: skip
ALPHABET = "0123456789LMNPQRSTUVlmnpqrstuvABXYZabxyz.-_ @<>/\u00a0\u2063\uff14\u0661"
pieces = st.one_of(st.sampled_from(SAMPLES), st.sampled_from(WORDS), st.text(ALPHABET, max_size=8))
texts = st.lists(pieces, max_size=8).map("".join)


@settings(max_examples=400, deadline=None)
@given(texts)
def test_quick_paths_find_what_the_full_reading_finds(text: str) -> None:
    assert sensitive_spans(text) == full_spans(text)
    assert mask_sensitive(text) == masking._masked(text, full_spans(text))
    assert mask_field(text) == full_mask_field(text)
    assert mask_address(text) == full_mask_field(text)


@settings(max_examples=400, deadline=None)
@given(st.text("0123456789\u0661\uff14-. _/@<>ab", max_size=40))
def test_long_digit_runs_are_the_runs_of_nine_digits_or_more(text: str) -> None:
    runs = [
        run.span()
        for run in re.finditer(r"\d+(?:(?:[^\w@<>]|_)\d+)*", text)
        if len(re.findall(r"\d", run.group())) >= 9
    ]
    assert [run.span() for run in masking._LONG_DIGIT_RUN.finditer(text)] == runs

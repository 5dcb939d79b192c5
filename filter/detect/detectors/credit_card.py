"""Payment card numbers: issuer prefix and length, Luhn, and the words around the number.

A number counts when it is 13-19 digits, written plain or in consistent groups (4-4-4-4,
4-4-4-4-3, 4-4-4-1..3, Amex 4-6-5, Diners 4-6-4) separated by single spaces or single dashes,
not part of a longer number, has a known issuer prefix for its length, and passes Luhn.
Order, tracking and invoice numbers also pass Luhn one time in ten, so the nearest context word
in front decides: a card word ("card", "visa", "cvv", ...) rules the number in, an exclusion
word ("order", "tracking", "invoice", "phone", ...) rules it out unless a card word follows the
number closely ("... 4111 1111 1111 1111 exp 12/27"). A number with no context words counts:
real leaks often have none.
"""

from __future__ import annotations

import re

from mailgate.filter.detect.detectors import Match
from mailgate.filter.detect.detectors.context import keyword_regex
from mailgate.filter.detect.patterns import FastRegex
from mailgate.filter.detect.validators import luhn

# (first digits low, high, allowed lengths). Prefixes compare on the number's leading digits.
ISSUERS: dict[str, list[tuple[str, str, range]]] = {
    "visa": [("4", "4", range(13, 20, 3))],  # 13, 16, 19
    "mastercard": [("51", "55", range(16, 17)), ("2221", "2720", range(16, 17))],
    "amex": [("34", "34", range(15, 16)), ("37", "37", range(15, 16))],
    "discover": [
        ("6011", "6011", range(16, 20)),
        ("644", "649", range(16, 20)),
        ("65", "65", range(16, 20)),
        ("622126", "622925", range(16, 20)),
    ],
    "diners": [
        ("300", "305", range(14, 20)),
        ("3095", "3095", range(14, 20)),
        ("36", "36", range(14, 20)),
        ("38", "39", range(14, 20)),
    ],
    "jcb": [("3528", "3589", range(16, 20))],
    "unionpay": [("62", "62", range(16, 20)), ("8100", "8171", range(16, 20))],
    "maestro": [
        (prefix, prefix, range(13, 20))
        for prefix in ("5018", "5020", "5038", "5893", "6304", "6759", "6761", "6762", "6763")
    ],
    "mir": [("2200", "2204", range(16, 20))],
}

# Not the tail or the head of a longer number: no digit (or '+', as in phone numbers) right
# before, no digit with one space, dot or dash between. Commas and slashes separate fields in
# CSV and dates ("4111111111111111,12/28"), so a digit beyond them does not extend the number.
_CANDIDATE = FastRegex(
    re.compile(
        r"""
    (?<![\d+])(?<!\d[ .-])
    (?:
        \d{13,19}
      | \d{4}(?P<sep>[ -])(?:
            \d{4}(?P=sep)\d{4}(?P=sep)\d{1,4}(?:(?P=sep)\d{3})?   # 4-4-4-1..4, 4-4-4-4-3
          | \d{6}(?P=sep)\d{4,5}                                  # Diners 4-6-4, Amex 4-6-5
        )
    )
    (?!\d)(?![ .-]\d)
    """,
        re.VERBOSE,
    )
)

INCLUDE_WORDS = (
    "card", "cards", "credit", "debit", "visa", "mastercard", "master card", "amex",
    "american express", "discover", "diners", "jcb", "unionpay", "union pay", "maestro", "cc",
    "ccn", "pan", "cardholder", "card holder", "card number", "card no", "expiry", "expiration",
    "expires", "exp", "valid thru", "cvv", "cvv2", "cvc", "cvc2", "cid", "kreditkarte", "karte",
    "karten", "carte", "carte bancaire", "tarjeta", "carta", "cartão", "kaart",
)  # fmt: skip
EXCLUDE_WORDS = (
    "order", "order no", "tracking", "track", "invoice", "inv", "ref", "reference", "po",
    "p.o", "purchase order", "account no", "acct", "shipment", "parcel", "awb", "consignment",
    "waybill", "iban", "bic", "phone", "tel", "telephone", "fax", "mobile", "cell", "isbn",
    "issn", "imei", "serial", "sku", "ean", "upc", "gtin", "barcode", "ticket", "case",
    "booking", "confirmation", "transaction", "txn", "customer", "member", "policy", "claim",
    "patient", "bestellung", "bestellnummer", "rechnung", "sendung", "sendungsnummer",
    "auftrag", "kundennummer", "commande", "facture", "suivi", "colis", "pedido", "factura",
)  # fmt: skip


_INCLUDE = keyword_regex(INCLUDE_WORDS)
_EXCLUDE = keyword_regex(EXCLUDE_WORDS)
BEFORE = 60  # characters before the number searched for context words
AFTER = 30  # characters after it searched for card words ("exp 12/27", "CVV 123")


def issuer(number: str) -> str | None:
    """The issuer whose prefix and length table fits a digits-only number, if any."""
    for name, ranges in ISSUERS.items():
        for low, high, lengths in ranges:
            head = number[: len(low)]
            if len(number) in lengths and low <= head <= high:
                return name
    return None


def _last_end(regex: re.Pattern[str], text: str) -> int:
    """End offset of the last match in `text`, or -1."""
    end = -1
    for m in regex.finditer(text):
        end = m.end()
    return end


def context_allows(text: str, start: int, end: int) -> bool:
    """Whether the words around [start, end) let a card-like number count as a card."""
    before = text[max(0, start - BEFORE) : start]
    last_include = _last_end(_INCLUDE, before)
    last_exclude = _last_end(_EXCLUDE, before)
    if last_exclude <= last_include:
        return True  # a card word is nearest, or no context words at all
    return _INCLUDE.search(text, end, end + AFTER) is not None


class CreditCardDetector:
    name = "credit_card"

    def find(self, text: str) -> list[Match]:
        found = []
        for m in _CANDIDATE.finditer(text):
            number = re.sub(r"[ -]", "", m.group())
            if issuer(number) and luhn(number) and context_allows(text, m.start(), m.end()):
                found.append(Match(m.start(), m.end(), m.group()))
        return found

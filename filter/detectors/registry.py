"""The built-in DLP detectors by name, as the `dlp:` rule condition names them."""

from __future__ import annotations

from . import TextDetector
from .credit_card import CreditCardDetector
from .iban import IbanDetector
from .us_ssn import UsSsnDetector

DLP_DETECTORS: dict[str, TextDetector] = {
    detector.name: detector for detector in (CreditCardDetector(), IbanDetector(), UsSsnDetector())
}

"""The built-in DLP detectors by name, as the `dlp:` rule condition names them."""

from __future__ import annotations

from mailgate.filter.detect.detectors import TextDetector
from mailgate.filter.detect.detectors.credit_card import CreditCardDetector
from mailgate.filter.detect.detectors.iban import IbanDetector
from mailgate.filter.detect.detectors.us_ssn import UsSsnDetector

DLP_DETECTORS: dict[str, TextDetector] = {
    detector.name: detector for detector in (CreditCardDetector(), IbanDetector(), UsSsnDetector())
}

"""The built-in DLP detectors by name, as the `dlp:` rule condition names them."""

from __future__ import annotations

from mailgate.filter.detect.detectors import TextDetector
from mailgate.filter.detect.detectors.credit_card import CreditCardDetector
from mailgate.filter.detect.detectors.de_tax_id import DeTaxIdDetector
from mailgate.filter.detect.detectors.es_dni import EsDniDetector
from mailgate.filter.detect.detectors.fr_nir import FrNirDetector
from mailgate.filter.detect.detectors.iban import IbanDetector
from mailgate.filter.detect.detectors.it_fiscal_code import ItFiscalCodeDetector
from mailgate.filter.detect.detectors.nl_bsn import NlBsnDetector
from mailgate.filter.detect.detectors.passport_mrz import PassportMrzDetector
from mailgate.filter.detect.detectors.uk_nino import UkNinoDetector
from mailgate.filter.detect.detectors.us_aba import UsAbaDetector
from mailgate.filter.detect.detectors.us_ssn import UsSsnDetector

DLP_DETECTORS: dict[str, TextDetector] = {
    detector.name: detector
    for detector in (
        CreditCardDetector(),
        IbanDetector(),
        UsSsnDetector(),
        UkNinoDetector(),
        NlBsnDetector(),
        DeTaxIdDetector(),
        FrNirDetector(),
        EsDniDetector(),
        ItFiscalCodeDetector(),
        UsAbaDetector(),
        PassportMrzDetector(),
    )
}

"""Masking of sensitive matches: only a masked form ever reaches a log, header or JSON."""

from __future__ import annotations


def mask(value: str, keep: int = 4) -> str:
    """Replace every alphanumeric character but the last `keep` with '*', keeping separators.

    '4111 1111 1111 1111' -> '**** **** **** 1111'; short values are masked entirely.
    """
    alnum = sum(c.isalnum() for c in value)
    if alnum <= keep * 2:
        keep = 0
    out = []
    seen = 0
    for c in value:
        if c.isalnum():
            seen += 1
            out.append(c if seen > alnum - keep else "*")
        else:
            out.append(c)
    return "".join(out)


def mask_text(value: str, limit: int = 40) -> str:
    """Mask a free-text regex match: keep the first and last character, bounded length."""
    value = value[:limit]
    if len(value) <= 2:
        return "*" * len(value)
    return value[0] + "*" * (len(value) - 2) + value[-1]


def mask_sensitive(text: str) -> str:
    """`text` with every value a built-in DLP detector finds masked: for free text that is
    stored or shown (a quarantined message's Subject), where a card number may hide."""
    from mailgate.filter.detect.detectors.registry import (
        DLP_DETECTORS,  # the detectors use this module
    )

    spans = sorted(
        (m.start, m.end) for detector in DLP_DETECTORS.values() for m in detector.find(text)
    )
    out, at = [], 0
    for start, end in spans:
        if start < at:
            continue
        out.append(text[at:start] + mask(text[start:end]))
        at = end
    return "".join(out) + text[at:]

"""Many regular expressions over one text, fast and with Python's own semantics.

Compliance teams write the regexes, so two things matter: speed with many patterns, and never
hanging the mail flow. `translate` turns a Python pattern into a hyperscan expression matching
a superset of it; `scan` runs every pattern of a set in one hyperscan pass and confirms what
hyperscan proposes with `re` (`PatternSet`, and `FastRegex` for one fixed regex); `lint`
refuses the patterns `re` could hang on (`check_pattern`).

May import `detect.detectors` (for `Match`), nothing of policy, scanning or the doors.
"""

from mailgate.filter.detect.patterns.lint import PatternError, check_pattern
from mailgate.filter.detect.patterns.scan import (
    FastRegex,
    PatternOverrun,
    PatternSet,
    bounded_search,
)
from mailgate.filter.detect.patterns.translate import hyperscan_expression

__all__ = [
    "FastRegex",
    "PatternError",
    "PatternOverrun",
    "PatternSet",
    "bounded_search",
    "check_pattern",
    "hyperscan_expression",
]

"""Many regular expressions over one text, fast and with Python's own semantics.

May import `detect.detectors` (for `Match`), nothing of policy, scanning or the doors.
"""

from mailgate.filter.detect.patterns.translate import (
    FastRegex,
    PatternError,
    PatternSet,
    check_pattern,
    hyperscan_expression,
)

__all__ = ["FastRegex", "PatternError", "PatternSet", "check_pattern", "hyperscan_expression"]

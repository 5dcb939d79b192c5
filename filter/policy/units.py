"""Sizes ('50MB', '10 KiB') and durations ('30d', '10s') as people write them in config files.

Both are bounded (MAX_SIZE, MAX_DURATION): past them a value is a typo, and it would overflow
a timer, a date or a resource limit far from the line that set it.
"""

from __future__ import annotations

import argparse
import math
import re
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import TypeVar

T = TypeVar("T")

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?i?b?)?\s*$", re.IGNORECASE)
_SIZE_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d|w)?\s*$", re.IGNORECASE)
_DURATION_UNITS = {"ms": Decimal("0.001"), "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
MAX_SIZE = 1 << 50  # 1 PiB
MAX_DURATION = timedelta(days=36500)  # a century (now minus it is still a date)


def parse_size(value: str | int | float) -> int:
    """Bytes from a number or a string such as '50MB', '512 MiB', '10k'. Units are binary
    (1K=1024), as mail size limits have always been counted."""
    number, unit = _number(value, "size", _SIZE, "512, 10KB, 50MB, 1GB")
    size = number * _SIZE_UNITS[(unit or "").lower().rstrip("b").rstrip("i")]
    if size > MAX_SIZE:
        raise ValueError(f"size too large: {value!r:.40} (at most {MAX_SIZE >> 40} TiB)")
    return int(size)


def parse_duration(value: str | int | float) -> timedelta:
    """A duration from seconds or a string such as '30d', '10s', '5m', '250ms'."""
    number, unit = _number(value, "duration", _DURATION, "10s, 5m, 12h, 30d")
    seconds = number * _DURATION_UNITS[(unit or "s").lower()]
    if seconds > MAX_DURATION.total_seconds():
        raise ValueError(f"duration too long: {value!r:.40} (at most {MAX_DURATION.days}d)")
    return timedelta(seconds=float(seconds))


def _number(
    value: object, what: str, syntax: re.Pattern[str], examples: str
) -> tuple[Decimal, str | None]:
    """The amount (exact: no float overflow) and the unit as written; not negative."""
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise ValueError(f"not a {what}: {value!r:.40}")
    if isinstance(value, str):
        m = syntax.match(value)
        if not m:
            raise ValueError(f"not a {what}: {value!r:.40} (write e.g. {examples})")
        return Decimal(m.group(1)), m.group(2)
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"not a {what}: {value!r}")
    if value < 0:
        raise ValueError(f"{what} must not be negative: {value}")
    return Decimal(value), None


def parse_since(text: str) -> datetime:
    """An age ('1d', '12h') back from now, or an ISO date/time (naive means local time)."""
    if _DURATION.match(text):
        return datetime.now(UTC) - parse_duration(text)
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(
            f"not an age or a date: {text!r:.40} (e.g. 1d, 12h, 2024-06-01, 2024-06-01T08:00)"
        ) from None
    return moment if moment.tzinfo else moment.astimezone()


def argument(parse: Callable[[str], T]) -> Callable[[str], T]:
    """`parse` as an argparse type: its ValueError becomes a usage error naming the value."""

    def convert(text: str) -> T:
        try:
            return parse(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    convert.__name__ = parse.__name__
    return convert

"""Sizes ('50MB', '10 KiB') and durations ('30d', '10s') as people write them in config files."""

from __future__ import annotations

import argparse
import re
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import TypeVar

T = TypeVar("T")

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?i?b?)?\s*$", re.IGNORECASE)
_SIZE_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d|w)?\s*$", re.IGNORECASE)
_DURATION_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_size(value: str | int) -> int:
    """Bytes from an int or a string such as '50MB', '512 MiB', '10k'. Units are binary (1K=1024),
    as mail size limits have always been counted."""
    if isinstance(value, bool):
        raise ValueError(f"not a size: {value!r}")
    if isinstance(value, int):
        if value < 0:
            raise ValueError(f"size must not be negative: {value}")
        return value
    m = _SIZE.match(str(value))
    if not m:
        raise ValueError(f"not a size: {value!r} (write e.g. 512, 10KB, 50MB, 1GB)")
    unit = (m.group(2) or "").lower().rstrip("b").rstrip("i")
    return int(float(m.group(1)) * _SIZE_UNITS[unit])


def parse_duration(value: str | int | float) -> timedelta:
    """A duration from seconds or a string such as '30d', '10s', '5m', '250ms'."""
    if isinstance(value, bool):
        raise ValueError(f"not a duration: {value!r}")
    if isinstance(value, int | float):
        return timedelta(seconds=value)
    m = _DURATION.match(str(value))
    if not m:
        raise ValueError(f"not a duration: {value!r} (write e.g. 10s, 5m, 12h, 30d)")
    return timedelta(seconds=float(m.group(1)) * _DURATION_UNITS[(m.group(2) or "s").lower()])


def parse_since(text: str) -> datetime:
    """An age ('1d', '12h') back from now, or an ISO date/time (naive means local time)."""
    try:
        return datetime.now(UTC) - parse_duration(text)
    except ValueError:
        pass
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(
            f"not an age or a date: {text!r} (e.g. 1d, 12h, 2024-06-01, 2024-06-01T08:00)"
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

"""Sizes and durations as people write them: bounded, so a typo is an error naming the key and
line (or the option), never an OverflowError far away (mailgate.yaml's cases: test_config)."""

from __future__ import annotations

from datetime import timedelta

import pytest

from mailgate.filter.cli.main import build_parser
from mailgate.filter.policy.pack import PackError, PackSource, build_pack
from mailgate.filter.policy.units import (
    MAX_DURATION,
    MAX_SIZE,
    parse_duration,
    parse_since,
    parse_size,
)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("10s", timedelta(seconds=10)),
        ("250ms", timedelta(milliseconds=250)),
        ("1.5h", timedelta(minutes=90)),
        (30, timedelta(seconds=30)),
        (0.5, timedelta(milliseconds=500)),
        ("36500d", MAX_DURATION),
    ],
)
def test_durations(text: str | float, expected: timedelta) -> None:
    assert parse_duration(text) == expected


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ("99999999999d", "duration too long: '99999999999d' (at most 36500d)"),
        (99999999999 * 86400, "duration too long"),
        ("9" * 400 + "w", "duration too long"),
        (float("inf"), "not a duration: inf"),
        (float("nan"), "not a duration: nan"),
        (-5, "duration must not be negative"),
        ([1, 2], "not a duration"),
    ],
)
def test_bad_durations_are_value_errors(value: object, reason: str) -> None:
    with pytest.raises(ValueError, match="^" + reason.replace("(", r"\(").replace(")", r"\)")):
        parse_duration(value)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("value", "expected"),
    [("50MB", 50 << 20), ("1.5k", 1536), (10, 10), ("1024 TiB", MAX_SIZE), (2.0, 2)],
)
def test_sizes(value: str | int, expected: int) -> None:
    assert parse_size(value) == expected


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ("9" * 400 + "T", "size too large"),
        (1 << 60, "size too large"),
        ("1025T", "size too large: '1025T' (at most 1024 TiB)"),
        (float("inf"), "not a size"),
        (-1, "size must not be negative"),
        ({"a": 1}, "not a size"),
    ],
)
def test_bad_sizes_are_value_errors(value: object, reason: str) -> None:
    with pytest.raises(ValueError, match="^" + reason.replace("(", r"\(").replace(")", r"\)")):
        parse_size(value)  # type: ignore[arg-type]


def test_since_names_the_duration_problem() -> None:
    with pytest.raises(ValueError, match="duration too long"):
        parse_since("99999999999d")
    assert parse_since("2024-06-01T08:00").year == 2024


@pytest.mark.parametrize("command", [["rules", "stats"], ["quarantine", "list"]])
def test_since_option_too_far_back_is_a_usage_error(
    command: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_:
        build_parser().parse_args([*command, "--since", "99999999999d"])
    assert exit_.value.code == 2
    assert "argument --since: duration too long: '99999999999d'" in capsys.readouterr().err


def test_rule_sizes_past_the_bound_name_the_line() -> None:
    text = "rules:\n  - id: big\n    when:\n      - size_over: 99999999999T\n    action: reject\n"
    with pytest.raises(PackError, match=r"policy\.yaml:4: \[big\] size_over: size too large"):
        build_pack(PackSource({"policy.yaml": text.encode()}))

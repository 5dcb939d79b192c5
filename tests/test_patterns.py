"""PatternSet gives exactly re.finditer's matches; check_pattern refuses catastrophic patterns."""

from __future__ import annotations

import ctypes
import re
import signal
import threading
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mailgate.filter.detect.detectors import credit_card, iban, us_ssn
from mailgate.filter.detect.patterns import (
    FastRegex,
    PatternError,
    PatternOverrun,
    PatternSet,
    check_pattern,
    hyperscan_expression,
)
from mailgate.filter.policy.envelope import Envelope
from mailgate.filter.policy.pack import PackSource
from mailgate.filter.policy.verdict import Action
from mailgate.filter.scan.engine import Engine
from tests.support.cli import run_in_process

# Shapes hyperscan gets wrong without care: overlapping alternatives, lazy repeats, anchors,
# inline and scoped flags, lookaround, backreferences, Unicode classes.
EQUIVALENCE_PATTERNS = [
    r"ab|abcd|cd",
    r"\d{3}",
    r"\d+",
    r"(?i)k\w+",
    r"a.*?b",
    r"\bfoo\b",
    r"(?<!\d)\d{4}(?!\d)",
    r"(?<=x)\w{2}",
    r"(a)\1",
    r"x$",
    r"(?m)^y\w*",
    r"(?m)\w$",
    r"\w+\Z",
    r"\Aa",
    r"(?s)a.b",
    r"a.b",
    r"é+",
    r"\s+",
    r"[^\s]+",
    r"(?a)\w+",
    r"(?a)\W",
    r"[^\W\d]+",
    r"(?i:ß|k)x",
    r"(?i)[a-f]{2}",
    r"\S+@\S+",
    r"(?:ab)+?",
    r"a(?=b)",
    r"(?>a+)b",
    r"(a)?(?(1)b|c)",
    r"[\u0660-\u0669]+",
    r"[^\d\s]+",
    r"\d\s\d",
    r"[^٣a]",
    r"[\u0600-\u06ff]",
    # Non-ASCII literals and ranges Python folds onto ASCII letters under IGNORECASE: the
    # ASCII database must still match k for the Kelvin sign, s for the long s.
    r"(?i)\u212a\w",
    r"(?i)[\u017f]t",
    r"(?i)[^\u212a]+",
    r"(?i)[\u0100-\u0200]+",
    r"(?i)[^\u0100-\u0200\d]",
    r"(?i)[a-\u017f]k",
    r"(?ia)\u212a|[^\u017f]s",
    r"[\u0100-\u0200a]+",
    r"\ue000|\d\ue001",
    # Word boundaries are exact in the ASCII database.
    r"\Bo\w",
    r"(?a)\bk\B",
    r"(?<!\d)\b\w{2}\b",
]
ALPHABET = "abcdxyKk\u212afoé@ß 1234\n\x1c\u00a0\u3000_-٣٤中\ue000"
# Characters the non-ASCII patterns above fold onto, and word/non-word neighbours.
ASCII_ALPHABET = "abdkKsSiItxfo@ 12\n\x1c_-"


@pytest.fixture(scope="module")
def pattern_set() -> PatternSet:
    patterns = PatternSet()
    for pattern in EQUIVALENCE_PATTERNS:
        patterns.add(pattern)
    patterns.compile()
    return patterns


def assert_same_as_re(patterns: PatternSet, text: str) -> None:
    result = patterns.scan(text)
    for pid, pattern in enumerate(EQUIVALENCE_PATTERNS):
        expected = [(m.start(), m.end(), m.group()) for m in re.finditer(pattern, text)]
        got = [(m.start, m.end, m.value) for m in result[pid]]
        assert got == expected, (pattern, text)


@settings(max_examples=400)
@given(st.text(alphabet=ALPHABET, max_size=60))
def test_scan_equals_re_finditer(pattern_set: PatternSet, text: str) -> None:
    assert_same_as_re(pattern_set, text)


@settings(max_examples=400)
@given(st.text(alphabet=ASCII_ALPHABET, max_size=60))
def test_scan_equals_re_finditer_on_ascii_text(pattern_set: PatternSet, text: str) -> None:
    assert_same_as_re(pattern_set, text)


@settings(max_examples=100)
@given(st.text(alphabet=st.characters(max_codepoint=0x7F), max_size=40))
def test_scan_equals_re_on_arbitrary_ascii(pattern_set: PatternSet, text: str) -> None:
    assert_same_as_re(pattern_set, text)


@settings(max_examples=100)
@given(st.text(max_size=40))
def test_scan_equals_re_on_arbitrary_unicode(pattern_set: PatternSet, text: str) -> None:
    assert_same_as_re(pattern_set, text)


def test_most_patterns_run_on_hyperscan(pattern_set: PatternSet) -> None:
    # Lookaround, backreferences and flags are translated, not sent to the fallback.
    assert pattern_set.fallback_ids == []


def test_ascii_text_matches_non_ascii_literals_python_folds_onto_it() -> None:
    patterns = PatternSet()
    kelvin = patterns.add("(?i)\u212aelvin")
    long_s = patterns.add("(?i)[\u017f]ecret")
    dotless_i = patterns.add("(?i)\u0131d")
    text = "KELVIN kelvin Kelvin SECRET secret ID id"
    result = patterns.scan(text)
    assert [m.value for m in result[kelvin]] == ["KELVIN", "kelvin", "Kelvin"]
    assert [m.value for m in result[long_s]] == ["SECRET", "secret"]
    assert [m.value for m in result[dotless_i]] == ["ID", "id"]
    # The same folds hold in the UTF-8 database, used once the text is not ASCII.
    mixed = patterns.scan(text + " \u0131d")[dotless_i]
    assert [m.value for m in mixed] == ["ID", "id", "\u0131d"]


def test_negated_class_excludes_only_what_python_folds() -> None:
    # Under (?a) Python does not fold U+017F onto s; hyperscan's Unicode folding would.
    patterns = PatternSet()
    pid = patterns.add("(?ia)[^\u017f]s")
    assert [m.value for m in patterns.scan("ss")[pid]] == ["ss"]
    assert [m.value for m in patterns.scan("ss \u00e9")[pid]] == ["ss"]


def test_ascii_expressions_hold_no_marker_or_non_ascii_range() -> None:
    # Byte \x80 (a class that matches no ASCII character) is the only escape above 0x7f.
    for pattern in EQUIVALENCE_PATTERNS:
        expression = hyperscan_expression(pattern, ascii_only=True)
        escapes = [int(code, 16) for code in re.findall(r"\\x\{([0-9a-f]+)\}", expression)]
        assert all(code <= 0x80 for code in escapes), (pattern, expression)
    assert hyperscan_expression(r"\d+", ascii_only=True) == "(?:[0-9]){1,}"
    assert hyperscan_expression(r"\d+") == "(?:[0-9\\x{e000}]){1,}"


def test_match_hidden_behind_a_longer_hyperscan_match_is_found() -> None:
    # Hyperscan reports the span ending at 4 with start 0 (abcd): "cd" at 2 shares its end.
    patterns = PatternSet()
    pid = patterns.add(r"ab|abcd|cd")
    assert [(m.start, m.end) for m in patterns.scan("abcd")[pid]] == [(0, 2), (2, 4)]


def test_pattern_hyperscan_refuses_falls_back_to_re() -> None:
    patterns = PatternSet()
    big = patterns.add(r"x\d{1,5000}")
    small = patterns.add(r"y\d")
    patterns.compile()
    assert patterns.fallback_ids == [big]
    result = patterns.scan("x123 y4 x9")
    assert [m.value for m in result[big]] == ["x123", "x9"]
    assert [m.value for m in result[small]] == ["y4"]


def test_unicode_offsets_are_str_offsets() -> None:
    patterns = PatternSet()
    pid = patterns.add(r"\d{4}")
    text = "Prüfung 中文 1234 ✓ 5678"
    found = patterns.scan(text)[pid]
    assert [(m.start, m.end) for m in found] == [
        (m.start(), m.end()) for m in re.finditer(r"\d{4}", text)
    ]
    assert [text[m.start : m.end] for m in found] == ["1234", "5678"]


def test_lone_surrogates_do_not_break_the_scan() -> None:
    patterns = PatternSet()
    pid = patterns.add(r"ab")
    text = "x\udcffab"  # as left by a surrogateescape decode
    assert [(m.start, m.end) for m in patterns.scan(text)[pid]] == [(2, 4)]


def test_leading_inline_flags() -> None:
    patterns = PatternSet()
    caseless = patterns.add(r"(?i)^finance")
    multiline = patterns.add(r"(?m)^total: \d+$")
    dotall = patterns.add(r"(?s)begin.+?end")
    text = "FINANCE dept\ntotal: 12\nbegin\nx\nend"
    result = patterns.scan(text)
    assert [m.value for m in result[caseless]] == ["FINANCE"]
    assert [m.value for m in result[multiline]] == ["total: 12"]
    assert [m.value for m in result[dotall]] == ["begin\nx\nend"]


def test_scan_before_compile_compiles_and_empty_text() -> None:
    patterns = PatternSet()
    pid = patterns.add(r"abc")
    assert patterns.scan("") == {pid: []}
    assert [m.value for m in patterns.scan("xabc")[pid]] == ["abc"]


def test_add_after_compile_recompiles() -> None:
    patterns = PatternSet()
    first = patterns.add("a1")
    patterns.compile()
    second = patterns.add("b2")
    result = patterns.scan("a1 b2")
    assert [m.value for m in result[first]] == ["a1"]
    assert [m.value for m in result[second]] == ["b2"]


def test_invalid_regex_raises_pattern_error_with_reason() -> None:
    with pytest.raises(PatternError, match="missing \\), unterminated subpattern at position 0"):
        PatternSet().add("(abc")


def test_empty_matching_pattern_refused() -> None:
    for pattern in ["", "a*", r"\b", "(?=x)", "x?|y*"]:
        with pytest.raises(PatternError, match="empty string"):
            PatternSet().add(pattern)


CATASTROPHIC = [
    r"(\d+)+",
    r"^(\d+)+$",
    r"(a|a)*b",
    r"(a*)*b",
    r"(\w+\s?)+$",
    r"(a+)+b",
    r"((ab)+)+",
    r"(?:[a-z]+|[0-9]+)+",
    r"(\w|\d+)+",
    r"(x\w+\s?)+",
    r"(.*a){10}",
    r"(?:a|b|ab)+c",
    r"(\d{1,3}-?)+$",
    r"(a?)+b",
    r"(.*,){5}x",
    r".*\d+",
    r"\d+\s*\d+",
    r"^([a-zA-Z0-9])(([\-.]|[_]+)?([a-zA-Z0-9]+))*(@){1}[a-z0-9]+[.]{1}(([a-z]{2,3})|([a-z]{2,3}[.]{1}[a-z]{2,3}))$",
]
SAFE = [
    r"\d{4}",
    r"FALCON-DOC-\d{5}",
    r"(?i)^finance",
    r"(?:[a-z]+\.)+[a-z]{2,}",
    r"\b\d{3}-\d{2}-\d{4}\b",
    r"(?:\d{4}[ -]?){3}\d{4}",
    r"[A-Z]{2}\d{2}(?: ?[A-Z0-9]{4}){2,7}",
    r"\w+@\w+\.\w+",
    r"[\w.+-]+@[\w-]+\.[\w.]+",
    r"(bar|baz)+",
    r"(?:https?|ftp)://\S+",
    r"(a|ab)*c",
    r"(?<!\d)\d{16}(?!\d)",
    r'[^"]*"',
    r"\S+\s+\S+",
    r"(\w+)\s+\1",
    r"(?:\w+ ){0,5}secret",
    r"(a+b)+",
    r"secret.{0,100}\d+",
]


# Issue 10 #5 and its family: unbounded repeats separated by characters the first can also
# match, with more pattern after them, cost a power of the line length for every position
# hyperscan proposes; groups and alternatives do not hide the repeats from each other.
STALLING = [
    r".*x.*x.*x.*y(?<=z)",
    r".*x.*y",
    r"\w+\d\w+!",
    r"[^@\s]+\.[a-z]+\.",
    r"(\d+)\s*(\d+)",
    r"(.*)x(.*)y",
    r"(?:a.*|b)x.*y",
    r"(?:.*x(?:.*x(.*y)))",
    r"(?i).*X.*y",
    r".*x(?:z|.*y)",
]
# Lookarounds hyperscan cannot check (all but a one-character lookbehind opening the pattern or
# lookahead closing it) are dropped from its expression: it then proposes spans that `re`
# rejects only after backtracking through the repeat before the lookaround or inside it.
UNCHECKED_LOOKAROUND = [
    r"\w+y(?<=zy)",
    r"\d+(?=\d{2}x)",
    r"\w+(?!x)y",
    r"(?=.*\d)\w{8}",
    r"a.+?b(?<!cb)",
    r"(?:\w+|x)(?=ab)",
]


@pytest.mark.parametrize("pattern", STALLING)
def test_lint_refuses_repeats_separated_by_what_they_match(pattern: str) -> None:
    problems = check_pattern(pattern)
    assert any("separated" in p or "follow each other" in p for p in problems), problems


@pytest.mark.parametrize("pattern", UNCHECKED_LOOKAROUND)
def test_lint_refuses_lookarounds_hyperscan_cannot_check_after_or_around_a_repeat(
    pattern: str,
) -> None:
    problems = check_pattern(pattern)
    assert any("lookaround" in p for p in problems), problems


# Accepted: nothing can fail after the second repeat (the first success ends the search), a
# lookaround hyperscan checks, or one with no unbounded repeat before it or inside it.
SAFE_SHAPES = [
    r"\S+@\S+",
    r"\w+\d\w+",
    r"(\S+@\S+)",
    r"[^x]*x.*y",
    r"(?!000)\d{3}-\d{2}-\d{4}",
    r"(?<=zz)\w+y",
    r"\d+(?!\d)",
    r"(?<![\w.])\w+@\w+",
    r"\w++(?=ab)",
    r".*x(?:z|.*)",
]


@pytest.mark.parametrize("pattern", SAFE_SHAPES)
def test_lint_passes_shapes_that_cannot_stall(pattern: str) -> None:
    assert check_pattern(pattern) == []


def test_lint_passes_the_detectors_own_patterns() -> None:
    for module in (credit_card, iban, us_ssn):
        assert check_pattern(module._CANDIDATE.regex.pattern) == [], module.__name__


def test_rules_lint_refuses_the_stalling_regex_with_file_and_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "policy.yaml").write_text(
        "rules:\n  - id: stall\n    when:\n      - body: {regex: '.*x.*x.*x.*y(?<=z)'}\n"
        "    action: reject\n"
    )
    lint = run_in_process(capsys, "rules", "lint", "--rules", str(tmp_path))
    assert lint.returncode == 1, lint.stdout + lint.stderr
    assert "policy.yaml:4: [stall] body.regex: regex '.*x.*x.*x.*y(?<=z)' refused" in lint.stdout


@pytest.mark.parametrize("pattern", CATASTROPHIC)
def test_lint_refuses_catastrophic_backtracking(pattern: str) -> None:
    problems = check_pattern(pattern)
    assert problems and any("catastroph" in p or "cube" in p for p in problems)
    with pytest.raises(PatternError):
        PatternSet().add(pattern)


@pytest.mark.parametrize("pattern", SAFE)
def test_lint_passes_safe_patterns(pattern: str) -> None:
    assert check_pattern(pattern) == []


def test_lint_reports_invalid_regex() -> None:
    assert check_pattern("a**") == ["invalid regex: multiple repeat at position 2"]


def test_hyperscan_expression_is_python_superset_syntax() -> None:
    # Python's \Z is PCRE's \z; leading lookbehind becomes a consumed character.
    assert hyperscan_expression(r"a\Z").endswith(r"\z")
    assert hyperscan_expression(r"(?<!\d)7").startswith(r"(?:\A|[^0-9])")


# Past lint: bounded repeats separated by what they match, then a lookbehind hyperscan drops.
# Linted and compiled into hyperscan, yet `re` spends about a millisecond on each position of
# a run of "xy" before it gives up: 500 times the per-character budget.
MISSED_BY_LINT = r"(?:x|y){0,30}x(?:x|y){0,30}x(?:x|y){0,30}x(?:x|y){0,30}y(?<=z)"
# One more such repeat and hyperscan refuses it: `re.finditer` alone, ten times slower still.
MISSED_BY_LINT_FALLBACK = MISSED_BY_LINT.replace("x(", "x(?:x|y){0,30}x(", 1)
FILLER = "a b c d " * 2_500  # 20,000 characters no span covers


@pytest.mark.parametrize(
    ("pattern", "text", "fallback"),
    [
        pytest.param(MISSED_BY_LINT, FILLER + "xy" * 900, False, id="confirm"),
        pytest.param(MISSED_BY_LINT, "xy" * 10_000, False, id="dense-spans"),
        pytest.param(MISSED_BY_LINT_FALLBACK, "xy" * 10_000, True, id="fallback"),
    ],
)
def test_re_work_is_bounded_whatever_lint_missed(pattern: str, text: str, fallback: bool) -> None:
    """Without the budget each case costs `re` from seconds to minutes of CPU; with it, the
    scan stops and says which pattern, whatever path the pattern takes."""
    assert check_pattern(pattern) == []
    patterns = PatternSet()
    slow, card = patterns.add(pattern), patterns.add(r"\d{4} \d{4}")
    patterns.compile()
    assert patterns.fallback_ids == ([slow] if fallback else [])
    with pytest.raises(PatternOverrun) as overrun:
        patterns.scan(text + " 4111 1111")
    assert overrun.value.pattern == pattern
    assert "xyxy" not in str(overrun.value)  # names the pattern, never the text
    # Nothing is left armed: the set scans on, and no late tick interrupts anything.
    assert signal.getitimer(signal.ITIMER_VIRTUAL) == (0.0, 0.0)
    assert [m.value for m in patterns.scan("card 4111 1111")[card]] == ["4111 1111"]


def test_engine_judges_a_message_the_budget_stopped_as_unscannable() -> None:
    """The worker is not stalled for the pool's whole time budget: the scan stops at its own,
    and the pack's `unscannable` rules judge the message."""
    rules = (
        "rules:\n"
        f"  - id: slow\n    when: [{{body: {{regex: '{MISSED_BY_LINT}'}}}}]\n    action: reject\n"
        "  - id: unscannable\n    when: [{unscannable: [malformed, timeout]}]\n"
        "    action: quarantine\n"
    )
    engine = Engine.from_source(PackSource({"policy.yaml": rules.encode()}))
    raw = b"Subject: hi\r\nContent-Type: text/plain\r\n\r\n" + b"xy" * 10_000 + b"\r\n"
    verdict = engine.scan(raw, Envelope("a@corp.example", ("b@partner.example",)))
    assert verdict.action is Action.QUARANTINE and verdict.rules == ["unscannable"]
    assert verdict.unscannable == ["timeout"]  # out of time, not a broken message


def test_header_and_subject_regexes_run_on_the_same_budget() -> None:
    """Header and Subject conditions run the author's regex on `re` alone: a pattern lint
    missed stops there too, and the message is judged out of time."""
    rules = (
        "rules:\n"
        f"  - id: slow\n    when: [{{subject: {{regex: '{MISSED_BY_LINT}'}}}}]\n"
        "    action: reject\n"
        "  - id: unscannable\n    when: [{unscannable: [timeout]}]\n    action: quarantine\n"
    )
    engine = Engine.from_source(PackSource({"policy.yaml": rules.encode()}))
    subject = b"xy" * 5_000  # within a header value's bound, backtracks for minutes unbounded
    raw = b"Subject: " + subject + b"\r\nContent-Type: text/plain\r\n\r\nhi\r\n"
    verdict = engine.scan(raw, Envelope("a@corp.example", ("b@partner.example",)))
    assert verdict.unscannable == ["timeout"] and verdict.rules == ["unscannable"]
    assert signal.getitimer(signal.ITIMER_VIRTUAL) == (0.0, 0.0)


def test_scans_from_other_threads_run_without_the_timer() -> None:
    """Signals reach the main thread only: elsewhere (libmilter's threads masking a long
    text) the scan runs as before, and leaves the main thread's timer alone."""
    patterns = PatternSet()
    card = patterns.add(r"\d{4} \d{4}")
    text = "x " * 1_000 + "card 4111 1111"
    found: list[list[str]] = []
    worker = threading.Thread(
        target=lambda: found.append([m.value for m in patterns.scan(text)[card]])
    )
    worker.start()
    worker.join()
    assert found == [["4111 1111"]]
    assert signal.getitimer(signal.ITIMER_VIRTUAL) == (0.0, 0.0)


def test_fast_regex_keeps_hyperscan_out_of_threads_python_did_not_make(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A long text (a hostile Message-ID masked in libmilter's thread) is read with `re` in a
    thread made outside Python, as libmilter's are; in Python's own threads, by hyperscan."""
    rx = FastRegex(re.compile(r"\d{4}"))
    text = "id-" + "x" * 2000 + "4111-2222"
    expected = [m.group() for m in re.finditer(r"\d{4}", text)]
    used: list[str] = []
    real_scan = PatternSet.scan

    def scan(self: PatternSet, data: str) -> object:
        used.append(threading.current_thread().name)
        return real_scan(self, data)

    monkeypatch.setattr(PatternSet, "scan", scan)
    found: list[object] = []
    callback_type = ctypes.CFUNCTYPE(ctypes.c_void_p, ctypes.c_void_p)

    def in_foreign_thread(_: object) -> None:
        found.append([m.group() for m in rx.finditer(text)])

    callback = callback_type(in_foreign_thread)
    libc = ctypes.CDLL(None, use_errno=True)
    thread = ctypes.c_ulong()
    assert libc.pthread_create(ctypes.byref(thread), None, callback, None) == 0
    assert libc.pthread_join(thread, None) == 0
    assert found == [expected] and used == []
    assert [m.group() for m in rx.finditer(text)] == expected and used == ["MainThread"]

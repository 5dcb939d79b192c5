"""PatternSet: many patterns over one text in one hyperscan scan, with `re`'s own matches.

Speed: every pattern goes into one hyperscan database that is run once over the text; there are
two such databases, one for ASCII text (most mail) and one for any other text (see `translate`
for the expressions). Hyperscan only *proposes* spans; each proposal is confirmed with the
compiled Python pattern's `.match(text, pos)`, so the matches are exactly those of
`re.finditer(pattern, text)`.

Dropping a constraint can only add matches, so every Python match [s, e) lies inside some
hyperscan span [s', e) with s' <= s (hyperscan reports every end offset, with its leftmost
start). The scan therefore tries `.match` at each position covered by a hyperscan span, left to
right, skipping positions already consumed by a match: the first success from a position is
exactly what `re.finditer` would find next. Positions outside every span cannot start a match.
A pattern hyperscan still refuses (e.g. a bounded repeat too large) is run with `re.finditer`
on the texts of that database.
Patterns that can match the empty string are refused (`check_pattern`), so no span is empty.

Speed depends on how many spans hyperscan proposes: every match costs a Python-level `.match`.

Hanging: `re` backtracks, and lint cannot foresee every pattern that makes it backtrack for
long (bounded repeats, say, or a lookaround hyperscan drops). So `re` runs on a budget of CPU
time per text, enforced by a timer signal that interrupts it: past the budget, the scan
raises PatternOverrun instead of stalling a worker.
"""

from __future__ import annotations

import contextlib
import re
import signal
import threading
from collections.abc import Iterator
from re import _constants as sre
from re import _parser as sre_parse
from typing import Any

import hyperscan

from mailgate.filter.detect.detectors import Match
from mailgate.filter.detect.patterns.lint import PatternError, check_pattern
from mailgate.filter.detect.patterns.translate import (
    REPEATS,
    children,
    hyperscan_expression,
    mark_text,
)

HS_ASCII_FLAGS = hyperscan.HS_FLAG_SOM_LEFTMOST
HS_UTF8_FLAGS = HS_ASCII_FLAGS | hyperscan.HS_FLAG_UTF8 | hyperscan.HS_FLAG_UCP

# Hyperscan's compile time grows with bounded repeats (x\d{1,1000}: 0.7 s, {1,5000}: 20 s,
# then refused): patterns whose nested bounds multiply past this go to the re fallback.
MAX_REPEAT_WEIGHT = 256
# Share of the text hyperscan's spans for a pattern may cover before `re.finditer` takes over.
DENSE_SPANS = 0.1
# CPU seconds `re` may spend on one text: this, plus this much per character it runs over for
# each pattern (the whole text, or what hyperscan's spans cover). See `_re_budget`.
RE_SECONDS = 0.05
RE_SECONDS_PER_CHAR = 2e-6


class _Database:
    """One hyperscan database over a set's patterns, for ASCII text or for (marked) UTF-8."""

    def __init__(self, regexes: list[re.Pattern[str]], ascii_only: bool) -> None:
        flags = HS_ASCII_FLAGS if ascii_only else HS_UTF8_FLAGS
        expressions: dict[int, bytes] = {}
        for pid, rx in enumerate(regexes):
            if _repeat_weight(sre_parse.parse(rx.pattern).data) > MAX_REPEAT_WEIGHT:
                continue
            try:
                expression = hyperscan_expression(rx.pattern, ascii_only=ascii_only)
            except ValueError:  # a construct the translation does not know
                continue
            expressions[pid] = expression.encode()
        try:
            self._db = _build(expressions, flags)
        except hyperscan.error:
            expressions = _compilable(expressions, flags)
            self._db = _build(expressions, flags)
        self.fallback_ids = [pid for pid in range(len(regexes)) if pid not in expressions]
        self._scratch = threading.local()

    def scan(self, data: bytes) -> list[tuple[int, int, int]]:
        """(pattern id, start, end) of every span hyperscan proposes, in byte offsets."""
        events: list[tuple[int, int, int]] = []
        if self._db is None:
            return events
        scratch = getattr(self._scratch, "value", None)
        if scratch is None:
            scratch = self._scratch.value = hyperscan.Scratch(self._db)

        def on_match(pid: int, start: int, end: int, _flags: int, _ctx: object) -> None:
            events.append((pid, start, end))

        self._db.scan(data, match_event_handler=on_match, scratch=scratch)
        return events


class PatternSet:
    """Patterns added once, compiled once, scanned many times (thread-safe scans).

    Two hyperscan databases: one for ASCII text, compiled without UTF-8 mode (most mail, and
    tens of times faster to scan), one for any other text.
    """

    def __init__(self) -> None:
        self._regexes: list[re.Pattern[str]] = []
        self._databases: tuple[_Database, _Database] | None = None  # for ASCII, for UTF-8

    def __len__(self) -> int:
        return len(self._regexes)

    def add(self, pattern: str) -> int:
        """Add a pattern and return its id; raises PatternError if `check_pattern` refuses it."""
        problems = check_pattern(pattern)
        if problems:
            raise PatternError(pattern, problems)
        self._regexes.append(re.compile(pattern))
        self._databases = None
        return len(self._regexes) - 1

    @property
    def fallback_ids(self) -> list[int]:
        """Ids of patterns run with Python's `re` alone on ASCII or on other text (hyperscan
        refused them in that mode)."""
        ascii_db, utf8_db = self._compiled()
        return sorted({*ascii_db.fallback_ids, *utf8_db.fallback_ids})

    def compile(self) -> None:
        """Build the hyperscan databases; patterns one cannot hold go to the `re` fallback."""
        self._databases = None
        self._compiled()

    def _compiled(self) -> tuple[_Database, _Database]:
        databases = self._databases  # read once: another thread may add and reset it
        if databases is None:
            databases = self._databases = (
                _Database(self._regexes, ascii_only=True),
                _Database(self._regexes, ascii_only=False),
            )
        return databases

    def scan(self, text: str) -> dict[int, list[Match]]:
        """For each pattern id, the matches `re.finditer(pattern, text)` gives.

        Raises PatternOverrun when `re` spends more than its budget on the text."""
        ascii_db, utf8_db = self._compiled()
        ascii_text = text.isascii()
        database = ascii_db if ascii_text else utf8_db
        result: dict[int, list[Match]] = {pid: [] for pid in range(len(self._regexes))}
        # What `re` has to do: each pattern with the spans to confirm, or None to run it over
        # the whole text.
        work: list[tuple[int, list[tuple[int, int]] | None]] = [
            (pid, None) for pid in database.fallback_ids
        ]
        chars = len(text) * len(work)
        if text:
            spans_by_id = _ascii_spans(ascii_db, text) if ascii_text else _utf8_spans(utf8_db, text)
            for pid, spans in spans_by_id.items():
                spans.sort()
                covered = _covered(spans)
                # Spans covering much of the text (e.g. widened \d or \w over CJK text): one
                # `re` scan in C is then cheaper than a Python-level `.match` per position.
                dense = covered > len(text) * DENSE_SPANS
                work.append((pid, None if dense else spans))
                chars += len(text) if dense else covered
        if not work:
            return result
        with _re_budget(chars) as running:
            for pid, spans in work:
                rx = self._regexes[pid]
                running.pattern = rx.pattern
                if spans is None:
                    result[pid] = [_match(m) for m in rx.finditer(text)]
                else:
                    result[pid] = _confirm(rx, text, spans)
        return result


class PatternOverrun(Exception):
    """`re` spent more than its budget on a text: a pattern lint let through backtracks on
    it. Names the pattern, never the text (it may hold what the pattern looks for)."""

    def __init__(self, pattern: str, seconds: float, chars: int) -> None:
        self.pattern = pattern
        super().__init__(
            f"pattern {pattern!r} ran past the {seconds:.3f} s of CPU `re` may spend on "
            f"{chars} characters: it backtracks on this text"
        )


class _OutOfTime(Exception):
    """Raised by the CPU timer's signal in the main thread, inside `re` (which checks for
    signals as it backtracks)."""


class _Running:
    """What `re` is running under a budget: the pattern, for the error; and whether the timer
    may interrupt it (a tick just after the budget ended is ignored)."""

    def __init__(self) -> None:
        self.pattern = ""
        self.armed = False
        self.installed = False  # as the process's SIGVTALRM handler

    def expired(self, _signum: int, _frame: object) -> None:
        if self.armed:
            self.armed = False  # one interruption per budget
            raise _OutOfTime


_MAIN_THREAD = _Running()


@contextlib.contextmanager
def _re_budget(chars: int) -> Iterator[_Running]:
    """Let `re` run over `chars` characters (the text, or what hyperscan's spans cover, for
    every pattern it runs) on a bounded amount of CPU time: past it, PatternOverrun. The
    budget is far above what linted patterns need (the slowest seen spend about 0.2 µs a
    character) and far below the pool's time budget for a message, so a pattern lint missed
    costs one message its scan (the pack's `unscannable` rules judge it), not a worker for
    the pool's whole budget. Signals reach the main thread only, where the engine runs (a
    pool worker, the CLI); in any other thread `re` runs unbounded."""
    if threading.current_thread() is not threading.main_thread():
        yield _Running()
        return
    running = _MAIN_THREAD
    if not running.installed:
        signal.signal(signal.SIGVTALRM, running.expired)
        running.installed = True
    seconds = RE_SECONDS + RE_SECONDS_PER_CHAR * chars
    try:
        running.armed = True
        signal.setitimer(signal.ITIMER_VIRTUAL, seconds)
        try:
            yield running
        finally:
            running.armed = False
            signal.setitimer(signal.ITIMER_VIRTUAL, 0)
    except _OutOfTime:
        raise PatternOverrun(running.pattern, seconds, chars) from None


def bounded_search(regex: re.Pattern[str], text: str) -> re.Match[str] | None:
    """`regex.search(text)` on the same CPU budget as a scan's `re` work: for the rule
    author's regexes that run on `re` alone (header and Subject conditions)."""
    with _re_budget(len(text)) as running:
        running.pattern = regex.pattern
        return regex.search(text)


def _ascii_spans(database: _Database, text: str) -> dict[int, list[tuple[int, int]]]:
    spans: dict[int, list[tuple[int, int]]] = {}
    for pid, start, end in database.scan(text.encode("ascii")):
        spans.setdefault(pid, []).append((start, end))
    return spans


def _utf8_spans(database: _Database, text: str) -> dict[int, list[tuple[int, int]]]:
    data = mark_text(text).encode("utf-8")
    events = database.scan(data)
    to_char = _char_offsets(data, {off for _, s, e in events for off in (s, e)})
    spans: dict[int, list[tuple[int, int]]] = {}
    for pid, start, end in events:
        spans.setdefault(pid, []).append((to_char[start], to_char[end]))
    return spans


def _repeat_weight(items: list[tuple[Any, Any]]) -> int:
    """Largest product of finite repeat bounds along any nesting path."""
    weight = 1
    for op, av in items:
        inner = max((_repeat_weight(sub) for sub in children(op, av)), default=1)
        if op in REPEATS and av[1] is not sre.MAXREPEAT:
            inner *= max(av[1], 1)
        weight = max(weight, inner)
    return weight


def _compilable(expressions: dict[int, bytes], flags: int) -> dict[int, bytes]:
    """The expressions hyperscan accepts, found by halving the set when a compile fails."""
    if not expressions:
        return {}
    try:
        _build(expressions, flags)
    except hyperscan.error:
        if len(expressions) == 1:
            return {}
        ids = list(expressions)
        half = len(ids) // 2
        return {
            **_compilable({pid: expressions[pid] for pid in ids[:half]}, flags),
            **_compilable({pid: expressions[pid] for pid in ids[half:]}, flags),
        }
    return expressions


def _build(expressions: dict[int, bytes], flags: int) -> hyperscan.Database | None:
    if not expressions:
        return None
    db = hyperscan.Database(mode=hyperscan.HS_MODE_BLOCK)
    db.compile(
        expressions=list(expressions.values()),
        ids=list(expressions),
        flags=flags,
    )
    return db


def _char_offsets(data: bytes, offsets: set[int]) -> dict[int, int]:
    """Map UTF-8 byte offsets (all on character boundaries) to str offsets."""
    out: dict[int, int] = {}
    prev_byte = prev_char = 0
    for off in sorted(offsets):
        prev_char += len(data[prev_byte:off].decode("utf-8"))
        prev_byte = off
        out[off] = prev_char
    return out


def _match(m: re.Match[str]) -> Match:
    return Match(m.start(), m.end(), m.group())


def _covered(spans: list[tuple[int, int]]) -> int:
    """How many positions sorted spans cover together."""
    total = reach = 0
    for start, end in spans:
        if end > reach:
            total += end - max(start, reach)
            reach = end
    return total


def _confirm(rx: re.Pattern[str], text: str, spans: list[tuple[int, int]]) -> list[Match]:
    """Python's matches, trying `.match` only at positions inside sorted hyperscan spans."""
    out: list[Match] = []
    tried = 0  # every position before this one was tried or lies inside a match
    for start, end in spans:
        pos = max(start, tried)
        while pos < end:
            m = rx.match(text, pos)
            if m is None:
                pos += 1
            else:
                out.append(_match(m))
                pos = m.end()
        tried = max(tried, pos)
    return out


SHORT_TEXT = 1024  # characters; FastRegex leaves text this short to `re`
_INLINE_FLAGS = ((re.IGNORECASE, "i"), (re.MULTILINE, "m"), (re.DOTALL, "s"), (re.VERBOSE, "x"))


class FastRegex:
    """One compiled regex run through hyperscan: `finditer` yields the `re.Match` objects
    `regex.finditer` would, groups included, at hyperscan's speed. For detectors whose
    candidate patterns are fixed (and linted) in code."""

    def __init__(self, regex: re.Pattern[str]) -> None:
        self.regex = regex
        flags = "".join(letter for flag, letter in _INLINE_FLAGS if regex.flags & flag)
        self._set = PatternSet()
        # Compiled on first use (scan compiles), so importing a detector costs nothing.
        self._id = self._set.add(f"(?{flags}){regex.pattern}" if flags else regex.pattern)

    def finditer(self, text: str) -> Iterator[re.Match[str]]:
        # Short text (a subject, an id, a file name) is quicker for `re` than a hyperscan
        # call. And hyperscan is kept out of threads Python did not create: masking from
        # libmilter's threads through hyperscan crashed the milter under load, and a field
        # can be long (a hostile Message-ID, up to the decoded header limit).
        if len(text) <= SHORT_TEXT or _foreign_thread():
            yield from self.regex.finditer(text)
            return
        for found in self._set.scan(text)[self._id]:
            match = self.regex.match(text, found.start)
            if match is not None:  # always, as the set's matches are the regex's own
                yield match


def _foreign_thread() -> bool:
    """Whether this thread was made outside Python (libmilter's, entering Python for a
    callback): threading names those dummy threads."""
    return isinstance(threading.current_thread(), threading._DummyThread)

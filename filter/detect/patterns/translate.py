"""Many regular expressions over one text, fast and with Python's own semantics.

Compliance teams write the regexes, so two things matter: speed with many patterns, and never
hanging the mail flow.

Speed: every pattern goes into one hyperscan database that is run once over the text; there are
two such databases, one for ASCII text (most mail) and one for any other text. Hyperscan only
*proposes* spans; each proposal is confirmed with the compiled Python pattern's
`.match(text, pos)`, so the matches are exactly those of `re.finditer(pattern, text)`.

The hyperscan expression is not the pattern text: it is generated from Python's own parse tree
(`re._parser`) as a *superset* of the Python pattern. Zero-width assertions hyperscan lacks
(lookaround, `\\b` in Unicode mode) are dropped (a one-character lookbehind opening the pattern
or lookahead closing it becomes a consumed character instead), backreferences become a copy of
the group they refer to, lazy/possessive/atomic constructs become plain ones, flags become
scoped groups. Classes never rely on hyperscan's Unicode tables (its UCP classes are too large
to compile with start-of-match tracking): \\w and \\W take in every non-ASCII character, and
non-ASCII digits and spaces reach hyperscan as two private-use markers that \\d and \\s include.
Markers and non-ASCII ranges slow hyperscan down ~80x even on ASCII text, so the ASCII database
is compiled without UTF-8 mode from expressions that hold neither: classes exact on ASCII,
word boundaries kept, and each non-ASCII literal or range reduced to the ASCII characters Python
folds it onto under IGNORECASE (U+212A KELVIN SIGN matches k), or else to a byte ASCII text
never holds. Both databases add those folds, which hyperscan's own case folding lacks.
Dropping a constraint can only add matches, so every Python match [s, e) lies inside some
hyperscan span [s', e) with s' <= s (hyperscan reports every end offset, with its leftmost
start). The scan therefore tries `.match` at each position covered by a hyperscan span, left to
right, skipping positions already consumed by a match: the first success from a position is
exactly what `re.finditer` would find next. Positions outside every span cannot start a match.
A pattern hyperscan still refuses (e.g. a bounded repeat too large) is run with `re.finditer`
on the texts of that database.
Patterns that can match the empty string are refused (`check_pattern`), so no span is empty.

Hanging: confirmation and the fallback run Python's backtracking `re`, which can take
exponential (or high-polynomial) time on patterns such as `(\\d+)+$`. `check_pattern` refuses
such patterns and `PatternSet.add` refuses whatever `check_pattern` refuses, so `re` only ever
runs linted patterns.

Known limits: case-insensitive matching of non-ASCII letters in non-ASCII text relies on
hyperscan's Unicode case folding agreeing with Python's (it does not for U+0130 and U+0131,
which Python takes as case variants of each other); lone surrogates in the text are scanned as
U+FFFD.
Speed depends on how many spans hyperscan proposes: every match costs a Python-level `.match`.
"""

from __future__ import annotations

import bisect
import functools
import re
import threading
from collections.abc import Iterable, Iterator
from re import _constants as sre
from re import _parser as sre_parse
from typing import Any

import hyperscan

from mailgate.filter.detect.detectors import Match

HS_ASCII_FLAGS = hyperscan.HS_FLAG_SOM_LEFTMOST
HS_UTF8_FLAGS = HS_ASCII_FLAGS | hyperscan.HS_FLAG_UTF8 | hyperscan.HS_FLAG_UCP


def _char(code: int) -> str:
    c = chr(code)
    return c if c.isascii() and c.isalnum() else f"\\x{{{code:x}}}"


def _ranges(spans: Iterable[tuple[int, int]]) -> str:
    return "".join(_char(lo) if lo == hi else f"{_char(lo)}-{_char(hi)}" for lo, hi in spans)


def _complement(spans: list[tuple[int, int]], top: int = 0x10FFFF) -> list[tuple[int, int]]:
    """The code points up to `top` (surrogates excluded) that sorted `spans` leave out."""
    out, nxt = [], 0
    for lo, hi in spans:
        if lo > nxt:
            out.append((nxt, lo - 1))
        nxt = hi + 1
    if top <= 0xD7FF:
        out.append((nxt, top))
    else:
        out += [(nxt, 0xD7FF), (0xE000, top)]
    return out


_SURROGATES = re.compile("[\ud800-\udfff]")
# Before hyperscan sees a non-ASCII text, every non-ASCII digit and space becomes a private-use
# marker (same length in str, so offsets hold), which lets \\d and \\s be exact classes instead
# of "all non-ASCII": `\\d{16}` then proposes no span over Chinese or Russian text.
DIGIT_MARK, SPACE_MARK = 0xE000, 0xE001
_NON_ASCII_DIGIT = re.compile(r"(?![0-9])\d")
_NON_ASCII_SPACE = re.compile(r"(?![\t-\r\x1c-\x20])\s")
_NON_ASCII = r"\x{80}-\x{10ffff}"
_DIGIT = [(0x30, 0x39)]
_WORD = [(0x30, 0x39), (0x41, 0x5A), (0x5F, 0x5F), (0x61, 0x7A)]
# The ASCII members of each class: Python's Unicode \s (str.isspace) also counts U+001C..U+001F.
_ASCII_MEMBERS = {
    sre.CATEGORY_DIGIT: _DIGIT,
    sre.CATEGORY_WORD: _WORD,
    sre.CATEGORY_SPACE: [(0x09, 0x0D), (0x1C, 0x20)],
}
_MARKER = {sre.CATEGORY_DIGIT: DIGIT_MARK, sre.CATEGORY_SPACE: SPACE_MARK}
_ASCII_FLAG_MEMBERS = {**_ASCII_MEMBERS, sre.CATEGORY_SPACE: [(0x09, 0x0D), (0x20, 0x20)]}
_COMPLEMENT_OF = {
    sre.CATEGORY_NOT_DIGIT: sre.CATEGORY_DIGIT,
    sre.CATEGORY_NOT_WORD: sre.CATEGORY_WORD,
    sre.CATEGORY_NOT_SPACE: sre.CATEGORY_SPACE,
}
_REPEATS = (sre.MAX_REPEAT, sre.MIN_REPEAT, sre.POSSESSIVE_REPEAT)
# Hyperscan's compile time grows with bounded repeats (x\d{1,1000}: 0.7 s, {1,5000}: 20 s,
# then refused): patterns whose nested bounds multiply past this go to the re fallback.
MAX_REPEAT_WEIGHT = 256
# Share of the text hyperscan's spans for a pattern may cover before `re.finditer` takes over.
DENSE_SPANS = 0.1


class PatternError(ValueError):
    """A pattern that cannot be used: invalid, or refused by `check_pattern`."""

    def __init__(self, pattern: str, problems: list[str]) -> None:
        self.pattern = pattern
        self.problems = problems
        super().__init__(f"pattern {pattern!r}: " + "; ".join(problems))


# --- hyperscan expression generation ---------------------------------------------------------


def _category(cat: Any, flags: int, negated_class: bool) -> str:
    """A class category (\\d, \\w, \\s and complements) as hyperscan class items.

    Exact on ASCII. Under Unicode matching, which non-ASCII characters belong varies between
    Python's and hyperscan's tables, and hyperscan's UCP classes are too large to compile with
    start-of-match tracking: so a plain class takes in every non-ASCII character and a negated
    class excludes none, which keeps the expression a superset.
    """
    complemented = cat in _COMPLEMENT_OF
    base = _COMPLEMENT_OF.get(cat, cat)
    members = _ascii_category(cat, flags)
    if flags & re.ASCII:
        non_ascii = complemented
    elif negated_class or complemented:
        non_ascii = not negated_class
    elif base in _MARKER:
        return _ranges(members) + _char(_MARKER[base])  # non-ASCII members arrive as the marker
    else:
        non_ascii = True
    return _ranges(members) + (_NON_ASCII if non_ascii else "")


def _ascii_category(cat: Any, flags: int) -> list[tuple[int, int]]:
    """The ASCII members of a class category, exactly."""
    base = _COMPLEMENT_OF.get(cat, cat)
    members = (_ASCII_FLAG_MEMBERS if flags & re.ASCII else _ASCII_MEMBERS)[base]
    return _complement(members, 0x7F) if cat in _COMPLEMENT_OF else members


def _caseless(expr: str, flags: int) -> str:
    return f"(?i:{expr})" if flags & re.IGNORECASE else expr


@functools.cache
def _marked_points() -> dict[int, list[int]]:
    """The non-ASCII code points each marker stands for, sorted (computed once, ~0.2 s)."""
    points: dict[int, list[int]] = {DIGIT_MARK: [], SPACE_MARK: []}
    for code in range(0x80, 0x110000):
        char = chr(code)
        if char.isdecimal():
            points[DIGIT_MARK].append(code)
        elif char.isspace():
            points[SPACE_MARK].append(code)
    return points


def _marks_in(low: int, high: int) -> list[int]:
    """Markers standing for some code point in [low, high]: the text may hold them instead."""
    if high < 0x80:
        return []
    found = []
    for mark, points in _marked_points().items():
        index = bisect.bisect_left(points, low)
        if index < len(points) and points[index] <= high:
            found.append(mark)
    return found


def _without_marks(low: int, high: int) -> list[tuple[int, int]]:
    """[low, high] less the markers: what a negated class may exclude and stay a superset."""
    spans = [(low, high)]
    for mark in (DIGIT_MARK, SPACE_MARK):
        spans = [
            piece
            for lo, hi in spans
            for piece in ((lo, min(hi, mark - 1)), (max(lo, mark + 1), hi))
            if piece[0] <= piece[1]
        ]
    return spans


@functools.cache
def _ascii_folds(low: int, high: int, flags: int) -> tuple[int, ...]:
    """The ASCII characters the non-ASCII part of class item [low, high] matches in Python.

    None unless case-insensitive: U+212A KELVIN SIGN matches k and K, U+017F matches s and S,
    U+0130 and U+0131 match i and I, which hyperscan's own case folding does not all know.
    Asked of `re` itself, so it follows Python's folding.
    """
    low = max(low, 0x80)
    if not flags & re.IGNORECASE or high < low:
        return ()
    item = re.compile(f"[\\U{low:08x}-\\U{high:08x}]", flags & (re.IGNORECASE | re.ASCII))
    return tuple(code for code in range(0x80) if item.fullmatch(chr(code)))


def _ascii_swapcase(low: int, high: int, flags: int) -> tuple[int, ...]:
    """Under IGNORECASE, the other case of the ASCII letters in [low, high]."""
    if not flags & re.IGNORECASE:
        return ()
    return tuple(
        ord(chr(code).swapcase()) for code in range(low, min(high, 0x7F) + 1) if chr(code).isalpha()
    )


# A byte ASCII text never holds: what a class item matching no ASCII character becomes in the
# ASCII database, so every class stays non-empty.
_NO_ASCII = [(0x80, 0x80)]


def _ascii_members(low: int, high: int, flags: int) -> list[tuple[int, int]]:
    """The ASCII characters class item [low, high] matches (hyperscan folds ASCII case)."""
    codes = [*range(low, min(high, 0x7F) + 1), *_ascii_folds(low, high, flags)]
    return _spans(codes) or _NO_ASCII


def _spans(codes: Iterable[int]) -> list[tuple[int, int]]:
    """Code points as sorted runs of consecutive ones."""
    spans: list[tuple[int, int]] = []
    for code in sorted(set(codes)):
        if spans and spans[-1][1] == code - 1:
            spans[-1] = (spans[-1][0], code)
        else:
            spans.append((code, code))
    return spans


class _Emitter:
    """Writes a hyperscan expression matching a superset of a parsed Python pattern.

    With `ascii_only` the expression is for ASCII text alone, compiled without UTF-8 mode: no
    markers, no non-ASCII ranges, classes exact on ASCII, and word boundaries kept (Python's
    Unicode \\b and hyperscan's agree on ASCII). Hyperscan then scans far faster.
    """

    def __init__(self, ascii_only: bool) -> None:
        self.ascii_only = ascii_only
        self.groups: dict[int, str] = {}

    def seq(self, items: Iterable[tuple[Any, Any]], flags: int) -> str:
        return "".join(self.item(op, av, flags) for op, av in items)

    def item(self, op: Any, av: Any, flags: int) -> str:
        if op is sre.LITERAL:
            return _caseless(self.literal(av, flags), flags)
        if op is sre.NOT_LITERAL:
            if not self.ascii_only and av in (DIGIT_MARK, SPACE_MARK):
                return "(?s:.)"
            item = self.class_item(av, av, flags, negated=True)
            return self.caseless(f"[^{item}]", flags, negated=True)
        if op is sre.ANY:
            return "(?s:.)" if flags & re.DOTALL else "."
        if op is sre.IN:
            negated = bool(av) and av[0][0] is sre.NEGATE
            return self.caseless(self.char_class(av, flags), flags, negated)
        if op is sre.BRANCH:
            return "(?:" + "|".join(self.seq(b, flags) for b in av[1]) + ")"
        if op is sre.SUBPATTERN:
            group, add, remove, sub = av
            body = self.seq(sub, (flags | add) & ~remove)
            if group is not None:
                self.groups[group] = body
            return f"(?:{body})"
        if op in _REPEATS:
            lo, hi, sub = av
            bound = f"{{{lo},}}" if hi is sre.MAXREPEAT else f"{{{lo},{hi}}}"
            return f"(?:{self.seq(sub, flags)}){bound}"
        if op is sre.ATOMIC_GROUP:
            return f"(?:{self.seq(av, flags)})"
        if op is sre.GROUPREF:
            # The reference matches what the group matched: a copy of the group is a superset.
            return f"(?:{self.groups[av]})" if av in self.groups else "(?s:.)*"
        if op is sre.GROUPREF_EXISTS:
            _, yes, no = av
            return f"(?:{self.seq(yes, flags)}|{self.seq(no or [], flags)})"
        if op is sre.AT:
            return self.anchor(av, flags)
        if op in (sre.ASSERT, sre.ASSERT_NOT):
            return ""  # dropping a zero-width assertion only adds matches
        raise ValueError(f"unsupported regex construct {op}")

    def literal(self, code: int, flags: int) -> str:
        if self.ascii_only:
            return _char(code) if code < 0x80 else f"[{_ranges(_ascii_members(code, code, flags))}]"
        extra = _marks_in(code, code) + list(_ascii_folds(code, code, flags))
        return f"[{_char(code)}{''.join(map(_char, extra))}]" if extra else _char(code)

    def class_item(self, low: int, high: int, flags: int, negated: bool) -> str:
        if self.ascii_only:
            return _ranges(_ascii_members(low, high, flags))
        if negated:
            # Emitted case-sensitively (see `caseless`), so Python's case variants are added.
            variants = _ascii_folds(low, high, flags) + _ascii_swapcase(low, high, flags)
            return _ranges(_without_marks(low, high) + _spans(variants))
        extra = _marks_in(low, high) + list(_ascii_folds(low, high, flags))
        return _ranges([(low, high)]) + "".join(map(_char, extra))

    def caseless(self, char_class: str, flags: int, negated: bool) -> str:
        """A class made case-insensitive if `flags` say so.

        Not a negated class in UTF-8 mode: hyperscan's Unicode case folding can exclude more
        than Python's (under (?ia), [^\\u017f] matches s in Python, but not in hyperscan).
        """
        if negated and not self.ascii_only:
            return char_class
        return _caseless(char_class, flags)

    def category(self, cat: Any, flags: int, negated_class: bool) -> str:
        if self.ascii_only:
            return _ranges(_ascii_category(cat, flags))
        return _category(cat, flags, negated_class)

    def char_class(self, items: list[tuple[Any, Any]], flags: int) -> str:
        negated = bool(items) and items[0][0] is sre.NEGATE
        body = []
        for op, av in items[1:] if negated else items:
            if op is sre.LITERAL:
                body.append(self.class_item(av, av, flags, negated))
            elif op is sre.RANGE:
                body.append(self.class_item(*av, flags, negated))
            elif op is sre.CATEGORY:
                body.append(self.category(av, flags, negated))
            else:
                raise ValueError(f"unsupported class item {op}")
        return ("[^" if negated else "[") + "".join(body) + "]"

    def anchor(self, code: Any, flags: int) -> str:
        multiline = bool(flags & re.MULTILINE)
        if code is sre.AT_BEGINNING:
            return "(?m:^)" if multiline else r"\A"
        if code is sre.AT_END:
            return "(?m:$)" if multiline else "$"
        if code is sre.AT_BEGINNING_STRING:
            return r"\A"
        if code is sre.AT_END_STRING:
            return r"\z"  # Python's \Z is PCRE's \z
        if not self.ascii_only:
            return ""  # hyperscan has no Unicode \b or \B; dropping one only adds matches
        # On ASCII text Python's word characters are exactly hyperscan's [0-9A-Za-z_].
        if code is sre.AT_BOUNDARY:
            return r"\b"
        if code is sre.AT_NON_BOUNDARY:
            return r"\B"
        raise ValueError(f"unsupported anchor {code}")


def _single_char(assertion: Any) -> tuple[Any, Any] | None:
    """The one-character item a lookaround tests, if it tests exactly one character."""
    _direction, body = assertion
    if len(body) == 1 and body[0][0] in (sre.LITERAL, sre.NOT_LITERAL, sre.IN):
        return body[0]
    return None


def _negated(op: Any, av: Any) -> tuple[Any, Any]:
    if op is sre.LITERAL:
        return sre.NOT_LITERAL, av
    if op is sre.NOT_LITERAL:
        return sre.LITERAL, av
    if av and av[0][0] is sre.NEGATE:
        return sre.IN, av[1:]
    return sre.IN, [(sre.NEGATE, None), *av]


def hyperscan_expression(pattern: str, *, ascii_only: bool = False) -> str:
    """The hyperscan (PCRE-syntax) expression that matches a superset of `pattern`.

    With `ascii_only`, a superset on ASCII text only, to compile with HS_ASCII_FLAGS; else for
    UTF-8 text with markers, to compile with HS_UTF8_FLAGS.

    A one-character lookbehind opening the pattern, such as (?<!\\d), becomes the character
    before the match (or the start of the text); a one-character lookahead closing it becomes
    the character after (or the end). Spans then start one character early or end one late,
    which the confirmation tolerates, and digit runs no longer yield a span per window.
    """
    parsed = sre_parse.parse(pattern)
    flags, items = parsed.state.flags, list(parsed.data)
    emitter = _Emitter(ascii_only)
    head = tail = ""
    if items and items[0][0] in (sre.ASSERT, sre.ASSERT_NOT) and items[0][1][0] < 0:
        op, av = items[0]
        char = _single_char(av)
        if char is not None:
            items.pop(0)
            if op is sre.ASSERT:
                head = emitter.item(*char, flags)
            else:
                head = "(?:\\A|" + emitter.item(*_negated(*char), flags) + ")"
    if items and items[-1][0] in (sre.ASSERT, sre.ASSERT_NOT) and items[-1][1][0] > 0:
        op, av = items[-1]
        char = _single_char(av)
        if char is not None:
            items.pop()
            if op is sre.ASSERT:
                tail = emitter.item(*char, flags)
            else:
                tail = "(?:" + emitter.item(*_negated(*char), flags) + "|\\z)"
    return head + emitter.seq(items, flags) + tail


# --- lint: catastrophic backtracking ---------------------------------------------------------

# Characters standing in for "any character" when testing whether two classes overlap: all of
# ASCII plus a few of each Unicode kind; the pattern's own literals are added per pattern.
_SAMPLE = [chr(i) for i in range(128)] + list("éßжЖ٣\u00a0\u2028\u3000中\U0001f600\u0301")
_CATEGORY_TEST = {
    av[0][1]: re.compile(escape)
    for escape, (op, av) in sre_parse.CATEGORIES.items()
    if op is sre.IN
}


class _Linter:
    def __init__(self, parsed: sre_parse.SubPattern) -> None:
        self.state = parsed.state
        literals = {chr(av) for op, av in _walk(parsed.data) if op is sre.LITERAL}
        self.alphabet = frozenset(_SAMPLE) | literals
        self.problems: list[str] = []

    def nullable(self, items: list[tuple[Any, Any]]) -> bool:
        return sre_parse.SubPattern(self.state, list(items)).getwidth()[0] == 0

    def chars(self, op: Any, av: Any) -> frozenset[str]:
        """Characters a single-character item can match (within the sample alphabet)."""
        if op is sre.LITERAL:
            c = chr(av)
            return frozenset({c, c.lower(), c.upper()}) if self.caseless else frozenset({c})
        if op is sre.NOT_LITERAL:
            return self.alphabet - {chr(av)}
        if op is sre.ANY:
            return self.alphabet
        negated = bool(av) and av[0][0] is sre.NEGATE
        hit: set[str] = set()
        for kind, value in av[1:] if negated else av:
            if kind is sre.LITERAL:
                hit.add(chr(value))
            elif kind is sre.RANGE:
                hit.update(c for c in self.alphabet if value[0] <= ord(c) <= value[1])
            elif kind is sre.CATEGORY:
                hit.update(c for c in self.alphabet if _CATEGORY_TEST[value].fullmatch(c))
        if self.caseless:
            hit |= {c.lower() for c in hit} | {c.upper() for c in hit}
        return self.alphabet - hit if negated else frozenset(hit)

    @property
    def caseless(self) -> bool:
        return bool(self.state.flags & re.IGNORECASE)

    def first(self, items: list[tuple[Any, Any]], last: bool = False) -> frozenset[str]:
        """Characters that can start (or, with `last`, end) a match of a sequence."""
        out: frozenset[str] = frozenset()
        for op, av in reversed(items) if last else items:
            out |= self.first_of(op, av, last)
            if not self.nullable([(op, av)]):
                break
        return out

    def first_of(self, op: Any, av: Any, last: bool = False) -> frozenset[str]:
        if op in (sre.LITERAL, sre.NOT_LITERAL, sre.ANY, sre.IN):
            return self.chars(op, av)
        if op is sre.SUBPATTERN:
            return self.first(av[3], last)
        if op is sre.ATOMIC_GROUP:
            return self.first(av, last)
        if op in _REPEATS:
            return self.first(av[2], last) if av[1] else frozenset()
        if op is sre.BRANCH:
            return frozenset().union(*(self.first(b, last) for b in av[1]))
        if op is sre.GROUPREF_EXISTS:
            return self.first(av[1], last) | self.first(av[2] or [], last)
        if op is sre.GROUPREF:
            return self.alphabet
        return frozenset()  # anchors and assertions consume nothing

    def all_chars(self, items: list[tuple[Any, Any]]) -> frozenset[str]:
        """Every character any single-character item of the sequence can match."""
        out: frozenset[str] = frozenset()
        for op, av in _walk(items):
            if op in (sre.LITERAL, sre.NOT_LITERAL, sre.ANY, sre.IN):
                out |= self.chars(op, av)
            elif op is sre.GROUPREF:
                out = self.alphabet
        return out

    def check(self, items: list[tuple[Any, Any]]) -> None:
        for index, (op, av) in enumerate(items):
            if op in (sre.MAX_REPEAT, sre.MIN_REPEAT):
                if av[1] is sre.MAXREPEAT or av[1] > 1:
                    self.check_repeat(av[2])
                if av[1] is sre.MAXREPEAT:
                    self.check_adjacent(av[2], items[index + 1 :])
            for sub in _children(op, av):
                self.check(sub)

    def check_repeat(self, body: list[tuple[Any, Any]]) -> None:
        if self.nullable(body):
            self.problems.append(
                "a repeated group can match the empty string, as in (a*)*: "
                "it can backtrack catastrophically"
            )
            return
        # An inner variable-width repeat that can take in both the start and the end of the
        # repeated body lets the text be split between iterations in many ways.
        start, end = self.first(body), self.first(body, last=True)
        for op, av in _walk(body):
            if op not in (sre.MAX_REPEAT, sre.MIN_REPEAT) or av[0] == av[1]:
                continue
            inner = self.all_chars(av[2])
            if inner & start and inner & end:
                self.problems.append(
                    "nested quantifier, as in (\\d+)+ or (\\w+\\s?)+: the inner repeat and the "
                    "outer one can split the same text in many ways, which backtracks "
                    "catastrophically; make the repeated part end with a separator it "
                    "cannot match, or drop the inner quantifier"
                )
                return
        for op, av in _walk(body):
            if op is sre.BRANCH and self.branches_overlap(av[1]):
                self.problems.append(
                    "alternatives inside a repeat can match the same text, as in (a|a)*: "
                    "it can backtrack catastrophically"
                )
                return

    def branches_overlap(self, branches: list[list[tuple[Any, Any]]]) -> bool:
        seen: list[tuple[frozenset[str], bool]] = []
        for branch in branches:
            first, empty = self.first(branch), self.nullable(branch)
            if any((first & f) or (empty and e) for f, e in seen):
                return True
            seen.append((first, empty))
        return False

    def check_adjacent(self, body: list[tuple[Any, Any]], rest: list[tuple[Any, Any]]) -> None:
        chars = self.first(body, last=True)
        for op, av in rest:
            unbounded = op in (sre.MAX_REPEAT, sre.MIN_REPEAT) and av[1] is sre.MAXREPEAT
            if unbounded and chars & self.first(av[2]):
                self.problems.append(
                    "two unbounded quantifiers over overlapping characters follow each "
                    "other, as in .*\\d+ or \\d+\\s*\\d+: on a long run of such characters "
                    "the time grows with the cube of its length; bound one of them "
                    "(.{0,100}) or make their characters disjoint"
                )
                return
            if not self.nullable([(op, av)]):
                return


def _children(op: Any, av: Any) -> list[list[tuple[Any, Any]]]:
    if op is sre.SUBPATTERN:
        return [av[3]]
    if op in _REPEATS:
        return [av[2]]
    if op in (sre.ATOMIC_GROUP,):
        return [av]
    if op is sre.BRANCH:
        return list(av[1])
    if op in (sre.ASSERT, sre.ASSERT_NOT):
        return [av[1]]
    if op is sre.GROUPREF_EXISTS:
        return [av[1]] + ([av[2]] if av[2] else [])
    return []


def _walk(items: list[tuple[Any, Any]]) -> Iterator[tuple[Any, Any]]:
    for op, av in items:
        yield op, av
        for sub in _children(op, av):
            yield from _walk(sub)


def check_pattern(pattern: str) -> list[str]:
    """Problems that make `pattern` unusable in a rule; an empty list means it is fine.

    Refuses invalid regexes, patterns that match the empty string (they would hit every
    message), and patterns that can backtrack catastrophically in Python's `re`.
    """
    try:
        parsed = sre_parse.parse(pattern)
        re.compile(pattern)
    except re.error as exc:
        where = f" at position {exc.pos}" if exc.pos is not None else ""
        return [f"invalid regex: {exc.msg}{where}"]
    except (RecursionError, OverflowError) as exc:
        return [f"invalid regex: {exc}"]
    if parsed.getwidth()[0] == 0:
        return ["matches the empty string, so it would hit every message"]
    linter = _Linter(parsed)
    linter.check(parsed.data)
    return list(dict.fromkeys(linter.problems))


# --- the pattern set --------------------------------------------------------------------------


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
        """For each pattern id, the matches `re.finditer(pattern, text)` gives."""
        ascii_db, utf8_db = self._compiled()
        ascii_text = text.isascii()
        database = ascii_db if ascii_text else utf8_db
        result: dict[int, list[Match]] = {pid: [] for pid in range(len(self._regexes))}
        for pid in database.fallback_ids:
            result[pid] = [_match(m) for m in self._regexes[pid].finditer(text)]
        if not text:
            return result
        spans_by_id = _ascii_spans(ascii_db, text) if ascii_text else _utf8_spans(utf8_db, text)
        for pid, spans in spans_by_id.items():
            rx = self._regexes[pid]
            spans.sort()
            if _covered(spans) > len(text) * DENSE_SPANS:
                # Spans cover much of the text (e.g. widened \d or \w over CJK text): one
                # `re` scan in C is then cheaper than a Python-level `.match` per position.
                result[pid] = [_match(m) for m in rx.finditer(text)]
            else:
                result[pid] = _confirm(rx, text, spans)
        return result


def _ascii_spans(database: _Database, text: str) -> dict[int, list[tuple[int, int]]]:
    spans: dict[int, list[tuple[int, int]]] = {}
    for pid, start, end in database.scan(text.encode("ascii")):
        spans.setdefault(pid, []).append((start, end))
    return spans


def _utf8_spans(database: _Database, text: str) -> dict[int, list[tuple[int, int]]]:
    # Lone surrogates (from undecodable bytes) cannot be UTF-8: U+FFFD keeps the offsets.
    marked = _SURROGATES.sub("\ufffd", text)
    marked = _NON_ASCII_SPACE.sub(chr(SPACE_MARK), _NON_ASCII_DIGIT.sub(chr(DIGIT_MARK), marked))
    data = marked.encode("utf-8")
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
        inner = max((_repeat_weight(sub) for sub in _children(op, av)), default=1)
        if op in _REPEATS and av[1] is not sre.MAXREPEAT:
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
        if len(text) <= SHORT_TEXT:
            # Short text (a subject, an id, a file name) is quicker for `re` than a hyperscan
            # call. It also keeps hyperscan out of threads Python did not create: masking
            # from libmilter's threads through hyperscan crashed the milter under load.
            yield from self.regex.finditer(text)
            return
        for found in self._set.scan(text)[self._id]:
            match = self.regex.match(text, found.start)
            if match is not None:  # always, as the set's matches are the regex's own
                yield match

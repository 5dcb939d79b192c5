"""A Python pattern as a hyperscan expression that matches a superset of it.

The hyperscan expression is not the pattern text: it is generated from Python's own parse tree
(`re._parser`) as a *superset* of the Python pattern. Zero-width assertions hyperscan lacks
(lookaround, `\\b` in Unicode mode) are dropped (a one-character lookbehind opening the pattern
or lookahead closing it becomes a consumed character instead), backreferences become a copy of
the group they refer to, lazy/possessive/atomic constructs become plain ones, flags become
scoped groups. Classes never rely on hyperscan's Unicode tables (its UCP classes are too large
to compile with start-of-match tracking): \\w and \\W take in every non-ASCII character, and
non-ASCII digits and spaces reach hyperscan as two private-use markers that \\d and \\s include
(`mark_text` puts them in the text). Markers and non-ASCII ranges slow hyperscan down ~80x even
on ASCII text, so the ASCII database is compiled without UTF-8 mode from expressions that hold
neither: classes exact on ASCII, word boundaries kept, and each non-ASCII literal or range
reduced to the ASCII characters Python folds it onto under IGNORECASE (U+212A KELVIN SIGN
matches k), or else to a byte ASCII text never holds. Both databases add those folds, which
hyperscan's own case folding lacks.

Known limits: case-insensitive matching of non-ASCII letters in non-ASCII text relies on
hyperscan's Unicode case folding agreeing with Python's (it does not for U+0130 and U+0131,
which Python takes as case variants of each other); lone surrogates in the text are scanned as
U+FFFD.
"""

from __future__ import annotations

import bisect
import functools
import re
from collections.abc import Iterable, Iterator
from re import _constants as sre
from re import _parser as sre_parse
from typing import Any


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


def mark_text(text: str) -> str:
    """`text` as the UTF-8 database scans it: each non-ASCII digit and space as its marker, lone
    surrogates (from undecodable bytes; they cannot be UTF-8) as U+FFFD. Same length."""
    marked = _SURROGATES.sub("\ufffd", text)
    return _NON_ASCII_SPACE.sub(chr(SPACE_MARK), _NON_ASCII_DIGIT.sub(chr(DIGIT_MARK), marked))


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
REPEATS = (sre.MAX_REPEAT, sre.MIN_REPEAT, sre.POSSESSIVE_REPEAT)

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
        if op in REPEATS:
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


def edge_lookarounds(
    items: list[tuple[Any, Any]],
) -> tuple[tuple[Any, Any] | None, tuple[Any, Any] | None]:
    """The lookarounds the translation checks, as the one character each tests (else None):
    a one-character lookbehind opening the pattern and a one-character lookahead closing it.
    Every other lookaround is dropped from the expression."""
    head = tail = None
    if items and items[0][0] in (sre.ASSERT, sre.ASSERT_NOT) and items[0][1][0] < 0:
        head = _single_char(items[0][1])
    rest = items[1:] if head is not None else items
    if rest and rest[-1][0] in (sre.ASSERT, sre.ASSERT_NOT) and rest[-1][1][0] > 0:
        tail = _single_char(rest[-1][1])
    return head, tail


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
    head_char, tail_char = edge_lookarounds(items)
    head = tail = ""
    if head_char is not None:
        op = items.pop(0)[0]
        if op is sre.ASSERT:
            head = emitter.item(*head_char, flags)
        else:
            head = "(?:\\A|" + emitter.item(*_negated(*head_char), flags) + ")"
    if tail_char is not None:
        op = items.pop()[0]
        if op is sre.ASSERT:
            tail = emitter.item(*tail_char, flags)
        else:
            tail = "(?:" + emitter.item(*_negated(*tail_char), flags) + "|\\z)"
    return head + emitter.seq(items, flags) + tail


# --- the parse tree, as lint and the scan read it too ------------------------------------------


def children(op: Any, av: Any) -> list[list[tuple[Any, Any]]]:
    """The item sequences nested in one parse-tree item (a group's, a repeat's body...)."""
    if op is sre.SUBPATTERN:
        return [av[3]]
    if op in REPEATS:
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


def walk(items: list[tuple[Any, Any]]) -> Iterator[tuple[Any, Any]]:
    """Every item of a sequence and of what is nested in it, in pattern order."""
    for op, av in items:
        yield op, av
        for sub in children(op, av):
            yield from walk(sub)

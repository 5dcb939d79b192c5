"""Which patterns a rule may use: valid, never empty, never backtracking catastrophically.

Confirmation and the fallback run Python's backtracking `re`, which can take exponential (or
high-polynomial) time on patterns such as `(\\d+)+$`. `check_pattern` refuses such patterns
and `PatternSet.add` refuses whatever `check_pattern` refuses, so `re` only ever runs linted
patterns. Refused: a repeat whose body can match empty text or split its text in many ways
(nested quantifiers, overlapping alternatives); unbounded repeats that meet each other over
shared characters, next to each other (.*\\d+) or separated only by characters the first
can match too (.*x.*y), groups and alternatives opened; and lookarounds hyperscan cannot
check after or around an unbounded repeat (\\w+(?=ab)), which let hyperscan propose spans
`re` must backtrack through. Lint is the first line, not the only one: the scan bounds the
CPU time `re` may spend on a text (`scan._re_budget`), whatever lint missed.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from re import _constants as sre
from re import _parser as sre_parse
from typing import Any

from mailgate.filter.detect.patterns.translate import REPEATS, children, edge_lookarounds, walk

Items = list[tuple[Any, Any]]

_ADJACENT = (
    "two unbounded quantifiers over overlapping characters follow each other, as in .*\\d+ or "
    "\\d+\\s*\\d+: on a long run of such characters the time grows with the cube of its "
    "length; bound one of them (.{0,100}) or make their characters disjoint"
)
_SEPARATED = (
    "unbounded quantifiers separated only by characters the first can match too, as in .*x.*y "
    "or \\w+\\d\\w+!: each x is a place to split the text between them, so a failing match "
    "takes a power of the line length (the cube for two, more with each further one); bound "
    "one of them (.{0,100}) or keep the separator out of the first ([^x]*x.*y)"
)


class PatternError(ValueError):
    """A pattern that cannot be used: invalid, or refused by `check_pattern`."""

    def __init__(self, pattern: str, problems: list[str]) -> None:
        self.pattern = pattern
        self.problems = problems
        super().__init__(f"pattern {pattern!r}: " + "; ".join(problems))


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
        literals = {chr(av) for op, av in walk(parsed.data) if op is sre.LITERAL}
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
        if op in REPEATS:
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
        for op, av in walk(items):
            if op in (sre.LITERAL, sre.NOT_LITERAL, sre.ANY, sre.IN):
                out |= self.chars(op, av)
            elif op is sre.GROUPREF:
                out = self.alphabet
        return out

    def check(self, items: Items, after: tuple[Items, ...] = ()) -> None:
        """Check a sequence; `after` holds what follows it in the enclosing groups, innermost
        first (a repeat inside a group still meets what comes after the group)."""
        for index, (op, av) in enumerate(items):
            following = (items[index + 1 :], *after)
            if op in (sre.MAX_REPEAT, sre.MIN_REPEAT):
                if av[1] is sre.MAXREPEAT or av[1] > 1:
                    self.check_repeat(av[2])
                if av[1] is sre.MAXREPEAT:
                    self.check_adjacent(av[2], following)
            # A lookaround's body is matched on its own: nothing after it follows its content.
            inner_after = () if op in (sre.ASSERT, sre.ASSERT_NOT) else following
            for sub in children(op, av):
                self.check(sub, inner_after)

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
        for op, av in walk(body):
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
        for op, av in walk(body):
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

    def check_adjacent(self, body: Items, following: tuple[Items, ...]) -> None:
        """An unbounded repeat against the repeats after it. Where the next one can take over
        characters of this one, each split of a run between them is tried before a failure
        is final. Items between them that this repeat can also match (the x in .*x.*y) do not
        separate them: the split then runs over every such item, and once something can fail
        after the second repeat, the work is a power of the line length per position."""
        problem, _ = self.meets(self.first(body, last=True), list(_inlined(following)))
        if problem:
            self.problems.append(problem)

    def meets(
        self, chars: frozenset[str], sequence: Items, separated: bool = False, more: bool = False
    ) -> tuple[str | None, bool]:
        """Walk what follows a repeat over `chars`: the problem found, if any, and whether the
        repeat can take in the whole sequence (so what comes after it is met next). `more`:
        something follows the sequence."""
        for index, (op, av) in enumerate(sequence):
            followed = more or index + 1 < len(sequence)
            if _backtracks(op, av) and chars & self.first(av[2]):
                if not separated:
                    return _ADJACENT, False
                return (_SEPARATED if followed else None), False
            if op is sre.BRANCH:
                through = False
                for branch in av[1]:
                    problem, passed = self.meets(
                        chars, list(_inlined((branch,))), separated, followed
                    )
                    if problem:
                        return problem, False
                    through = through or passed
                if not through:
                    return None, False
            elif not self.nullable([(op, av)]) and not self.all_chars([(op, av)]) & chars:
                return None, False
            separated = separated or not self.nullable([(op, av)])
        return None, True

    def check_lookarounds(self, items: Items) -> None:
        """Lookarounds hyperscan does not check (see `edge_lookarounds`) are dropped from its
        expression, so it proposes spans they rule out; `re` confirms each position of such
        a span by trying every length of the repeats before the lookaround (or inside it)
        before it gives up: a power of the span's length."""
        head, tail = edge_lookarounds(items)
        checked = {id(item[1]) for item, kept in ((items[0], head), (items[-1], tail)) if kept}
        repeated = False
        for op, av in walk(items):
            dropped = op in (sre.ASSERT, sre.ASSERT_NOT) and id(av) not in checked
            if dropped and (repeated or any(_backtracks(o, a) for o, a in walk(av[1]))):
                self.problems.append(
                    "a lookaround after or around an unbounded repeat, as in \\w+(?=ab) "
                    "or (?=.*\\d): hyperscan cannot check it (only a one-character "
                    "lookbehind opening the pattern or lookahead closing it), so `re` "
                    "backtracks through the repeat at every position hyperscan proposes; "
                    "bound the repeat ({1,100}) or check one character, at an end"
                )
                return
            repeated = repeated or _backtracks(op, av)


def _backtracks(op: Any, av: Any) -> bool:
    """An unbounded repeat that gives characters back (not a possessive one)."""
    return op in (sre.MAX_REPEAT, sre.MIN_REPEAT) and av[1] is sre.MAXREPEAT


def _inlined(sequences: tuple[Items, ...]) -> Iterator[tuple[Any, Any]]:
    """The items of consecutive sequences, groups opened: what the text meets in turn."""
    for items in sequences:
        for op, av in items:
            if op is sre.SUBPATTERN:
                yield from _inlined((av[3],))
            elif op is sre.ATOMIC_GROUP:
                yield from _inlined((av,))
            else:
                yield op, av


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
    linter.check_lookarounds(parsed.data)
    return list(dict.fromkeys(linter.problems))

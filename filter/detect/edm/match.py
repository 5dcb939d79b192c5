"""Finding an index's rows in a text: values of one row, from enough columns, close together.

The text's candidates are every run of up to `max_words` adjacent words (at most MAX_GAP
characters apart: `Anna O'Brien`, `anna.obrien@example.com`) and every number (digit groups
joined by up to three of ` ./()+-`, and each run of up to MAX_GROUPS consecutive groups of it:
`+1 (555) 123-4567` holds `5551234567`). Each is hashed with the index's key and looked up.

A search first finds anchors: values that tie the text to at most MAX_ROWS_PER_VALUE rows (a
city or a common first name ties it to none). When enough of the searched columns hold only
numbers or only addresses that every hit must include one of them (all but `min_columns - 1`
of them), anchors are looked for in the numbers and addresses of the text only, a fast pass;
otherwise in all its words. Then, only around each anchor (`proximity` characters either
side), every candidate is looked up among the anchors' rows. A row counts when values of at
least `min_columns` different columns of it start within `proximity` characters of each other;
a value found inside a longer value of another column (a name inside an address) does not
count on its own.
"""

from __future__ import annotations

import re
from collections import Counter, defaultdict
from dataclasses import dataclass

import numpy as np

from mailgate.filter.detect.edm.index import EdmIndex
from mailgate.filter.detect.edm.words import EMAIL, WORD, then
from mailgate.filter.detect.patterns import FastRegex

MAX_GAP = 3  # characters between two words of one value
MAX_GROUPS = 8  # digit groups of one number value
MAX_ROWS_PER_VALUE = 1000  # a value shared by more rows anchors none
MAX_PER_COLUMN = 64  # matches of one row and column in one text that are weighed
ANCHOR_KINDS = frozenset({"number", "email"})
_NUMBER = FastRegex(re.compile(r"(?<!\d)\d+(?:[ ./()+-]{1,3}\d+)*"))
_EMAIL = FastRegex(re.compile(r"(?<![\w.+-])" + EMAIL.pattern))
_DIGITS = re.compile(r"\d+")
_BEFORE = re.compile(r"\S{0,64}\Z")  # a window starts and ends at white space
_AFTER = re.compile(r"\S{0,64}")


@dataclass(frozen=True)
class Search:
    """What an `edm` condition looks for; hashable, so a message is searched once per kind."""

    index: str
    columns: frozenset[int]
    min_columns: int
    proximity: int


class _Candidates:
    """Hashes of a text's candidate values with their spans."""

    def __init__(self) -> None:
        self.parts: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []

    def add(self, hashes: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> None:
        if len(hashes):
            self.parts.append((hashes, starts, ends))

    def arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        if not self.parts:
            return np.empty(0, np.uint64), np.empty(0, np.int64), np.empty(0, np.int64)
        hashes, starts, ends = zip(*self.parts, strict=True)
        return np.concatenate(hashes), np.concatenate(starts), np.concatenate(ends)


def _words(index: EdmIndex, text: str, offset: int, out: _Candidates) -> None:
    """Every run of up to `max_words` adjacent words of `text`."""
    found = list(WORD.finditer(text))
    if not found:
        return
    hashes = index.hasher.words([m.group().casefold() for m in found])
    starts = np.fromiter((m.start() for m in found), np.int64, len(found)) + offset
    ends = np.fromiter((m.end() for m in found), np.int64, len(found)) + offset
    out.add(hashes, starts, ends)
    adjacent = starts[1:] - ends[:-1] <= MAX_GAP
    chained, whole = hashes, np.ones(len(found), bool)
    for length in range(2, min(index.max_words, len(found)) + 1):
        chained = then(chained[:-1], hashes[length - 1 :])
        whole = whole[:-1] & adjacent[length - 2 :]
        at = np.flatnonzero(whole)
        out.add(chained[at], starts[at], ends[at + length - 1])


def _numbers(index: EdmIndex, text: str, offset: int, out: _Candidates) -> None:
    """Every run of up to MAX_GROUPS consecutive digit groups of every number of `text`."""
    values: list[str] = []
    spans: list[int] = []
    for run in _NUMBER.finditer(text):
        groups = [(m.start(), m.end()) for m in _DIGITS.finditer(text, run.start(), run.end())]
        for first, (start, _) in enumerate(groups):
            digits = ""
            for group_start, group_end in groups[first : first + MAX_GROUPS]:
                digits += text[group_start:group_end]
                values.append(digits)
                spans += (start, group_end)
    if values:
        span = np.array(spans, np.int64).reshape(-1, 2) + offset
        out.add(index.hasher.words(values), span[:, 0], span[:, 1])


def _everything(index: EdmIndex, text: str, offset: int = 0) -> _Candidates:
    out = _Candidates()
    _words(index, text, offset, out)
    _numbers(index, text, offset, out)
    return out


def _numbers_and_addresses(index: EdmIndex, text: str) -> _Candidates:
    out = _Candidates()
    _numbers(index, text, 0, out)
    for m in _EMAIL.finditer(text):
        _words(index, m.group(), m.start(), out)
    return out


def anchor_columns(index: EdmIndex, search: Search) -> frozenset[int] | None:
    """The number and address columns that every hit must include one of, or None when
    there are too few of them for that."""
    anchors = frozenset(c for c in search.columns if index.columns[c].kind in ANCHOR_KINDS)
    return anchors if len(anchors) > len(search.columns) - search.min_columns else None


def rows_in(index: EdmIndex, text: str, search: Search) -> dict[int, frozenset[int]]:
    """The rows found in `text`, each with the columns found together."""
    anchors = anchor_columns(index, search)
    first = _numbers_and_addresses(index, text) if anchors else _everything(index, text)
    hashes, starts, ends = first.arrays()
    low, high = index.ranges(hashes)
    rows, windows = [], []
    wanted = np.array(sorted(anchors or search.columns), np.uint8)
    for i in np.flatnonzero((high > low) & (high - low <= MAX_ROWS_PER_VALUE)):
        keep = np.isin(index.column_ids[low[i] : high[i]], wanted)
        if keep.any():
            rows.append(index.row_ids[low[i] : high[i]][keep])
            windows.append((int(starts[i]) - search.proximity, int(ends[i]) + search.proximity))
    if not rows:
        return {}
    anchored = np.unique(np.concatenate(rows))
    second = first if anchors is None else _around(index, text, windows)
    return _together(index, second, anchored, search)


def _around(index: EdmIndex, text: str, windows: list[tuple[int, int]]) -> _Candidates:
    """Every candidate within the windows (merged, widened to white space)."""
    out = _Candidates()
    merged: list[list[int]] = []
    for start, end in sorted(windows):
        start, end = max(0, start), min(len(text), end)
        start -= len(_BEFORE.search(text, max(0, start - 64), start).group())
        end += len(_AFTER.match(text, end).group())
        if merged and start <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], end)
        else:
            merged.append([start, end])
    for start, end in merged:
        out.parts += _everything(index, text[start:end], start).parts
    return out


def _members(rows: np.ndarray, wanted: np.ndarray) -> np.ndarray:
    """Positions in sorted `rows` of the rows that are in sorted, distinct `wanted`."""
    if len(rows) <= len(wanted):
        at = np.minimum(np.searchsorted(wanted, rows), len(wanted) - 1)
        return np.flatnonzero(wanted[at] == rows)
    left = np.searchsorted(rows, wanted, "left")
    counts = np.searchsorted(rows, wanted, "right") - left
    firsts = np.repeat(left, counts)
    return firsts + np.arange(len(firsts)) - np.repeat(np.cumsum(counts) - counts, counts)


def _together(
    index: EdmIndex, found: _Candidates, anchored: np.ndarray, search: Search
) -> dict[int, frozenset[int]]:
    """The anchored rows whose values in `found` stand close enough together."""
    hashes, starts, ends = found.arrays()
    low, high = index.ranges(hashes)
    matches: defaultdict[int, set[tuple[int, int, int]]] = defaultdict(set)
    for i in np.flatnonzero(high > low):
        at = low[i] + _members(index.row_ids[low[i] : high[i]], anchored)
        pairs = zip(index.row_ids[at].tolist(), index.column_ids[at].tolist(), strict=True)
        for row, column in pairs:
            if column in search.columns:
                matches[row].add((int(starts[i]), int(ends[i]), column))
    found_rows = {}
    for row, spans in matches.items():
        columns = _close_columns(spans, search)
        if columns:
            found_rows[row] = columns
    return found_rows


def _close_columns(spans: set[tuple[int, int, int]], search: Search) -> frozenset[int]:
    """The columns of one row found at least `min_columns` together within `proximity`."""
    per_column: Counter[int] = Counter()
    kept = []
    for span in sorted(spans):
        if per_column[span[2]] < MAX_PER_COLUMN:
            per_column[span[2]] += 1
            kept.append(span)
    if len(per_column) < search.min_columns:
        return frozenset()
    own = [s for s in kept if not any(_inside(s, other) for other in kept)]
    together: Counter[int] = Counter()
    columns: set[int] = set()
    first = 0
    for start, _, column in own:
        together[column] += 1
        while start - own[first][0] > search.proximity:
            together[own[first][2]] -= 1
            together += Counter()  # drops columns counted down to nothing
            first += 1
        if len(together) >= search.min_columns:
            columns.update(together)
    return frozenset(columns)


def _inside(span: tuple[int, int, int], other: tuple[int, int, int]) -> bool:
    """Whether `span` is part of `other`, a value of another column (the same span: the
    lower column keeps it)."""
    (start, end, column), (o_start, o_end, o_column) = span, other
    if column == o_column or not (o_start <= start and end <= o_end):
        return False
    return (o_start, o_end) != (start, end) or o_column < column

"""Finding an index's rows in a text: values of one row, from enough columns, close together.

The texts of a message are searched together, in one pass. Their candidates are every run
of up to `max_words` adjacent words (at most MAX_GAP characters apart: `Anna O'Brien`,
`anna.obrien@example.com`) and every number (digit groups joined by up to three of
` ./()+-`, and each run of up to MAX_GROUPS consecutive groups of it: `+1 (555) 123-4567`
holds `5551234567`) with as many digits as a number value of the index may have. Each is
hashed with the index's key and looked up.

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

import bisect
import functools
import re
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import accumulate

import numpy as np

from mailgate.filter.detect.edm.index import EdmIndex
from mailgate.filter.detect.edm.words import EMAIL, WORD, then

MAX_GAP = 3  # characters between two words of one value
SEPARATOR = "\n" * (MAX_GAP + 1)  # between the texts of a message: no value spans it
MAX_GROUPS = 8  # digit groups of one number value
MAX_ROWS_PER_VALUE = 1000  # a value shared by more rows anchors none
MAX_PER_COLUMN = 64  # matches of one row and column in one text that are weighed
ANCHOR_KINDS = frozenset({"number", "email"})
ADDRESSES = 4096  # addresses whose candidate hashes an index remembers
_KINDS = bytes(
    1 if chr(b) in "0123456789" else 2 if chr(b) in " ./()+-" else 0 for b in range(256)
)  # a Latin-1 character's kind: 1 digit, 2 separator, 0 anything else
_GROUP = re.compile(rb"\x01\x01*")


@functools.cache
def _numbers_of(fewest: int) -> re.Pattern[bytes]:
    """Numbers of at least `fewest` digits in a string of kinds: digits with up to 3
    separators between each two. Those of fewer digits, most numbers of a text, `re` passes
    over at C speed: it skips to each digit fast as the pattern opens with one (`\x01+`, or
    a lookbehind first, would be tried at every byte, ten times slower), and gives up on a
    digit inside a number at once."""
    return re.compile(rb"\x01(?<!\x01\x01)(?:\x02{0,3}\x01){%d,}" % (fewest - 1))


_LOCAL_PART = re.compile(r"[\w.+-]+")  # an address's, before its @
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
    """Hashes of a text's candidate values with their spans (lists: mostly a few)."""

    def __init__(self) -> None:
        self.hashes: list[int] = []
        self.starts: list[int] = []
        self.ends: list[int] = []

    def extend(self, other: _Candidates) -> None:
        self.hashes += other.hashes
        self.starts += other.starts
        self.ends += other.ends


def _words(index: EdmIndex, text: str, offset: int, out: _Candidates) -> None:
    """Every run of up to `max_words` adjacent words of `text`."""
    found = list(WORD.finditer(text))
    if not found:
        return
    hashes = index.hasher.words([m.group().casefold() for m in found])
    starts = np.fromiter((m.start() for m in found), np.int64, len(found)) + offset
    ends = np.fromiter((m.end() for m in found), np.int64, len(found)) + offset
    out.hashes += hashes.tolist()
    out.starts += starts.tolist()
    out.ends += ends.tolist()
    adjacent = starts[1:] - ends[:-1] <= MAX_GAP
    chained, whole = hashes, np.ones(len(found), bool)
    for length in range(2, min(index.max_words, len(found)) + 1):
        chained = then(chained[:-1], hashes[length - 1 :])
        whole = whole[:-1] & adjacent[length - 2 :]
        at = np.flatnonzero(whole)
        out.hashes += chained[at].tolist()
        out.starts += starts[at].tolist()
        out.ends += ends[at + length - 1].tolist()


def _numbers(index: EdmIndex, text: str, offset: int, out: _Candidates) -> None:
    """Every run of consecutive digit groups of every number of `text` (at most MAX_GROUPS
    groups) with as many digits as a number value of the index may have."""
    if index.digits is None:
        return
    fewest, most = index.digits
    # Each character as its kind, a byte (what Latin-1 lacks reads '?', no digit: as_read
    # made every digit ASCII); numbers are then found at C speed, most text being no digit.
    kinds = text.encode("latin-1", "replace").translate(_KINDS)
    values: list[str] = []
    for number in _numbers_of(fewest).finditer(kinds):
        groups = [m.span() for m in _GROUP.finditer(kinds, *number.span())]
        for head, (start, _) in enumerate(groups):
            digits = ""
            for group_start, group_end in groups[head : head + MAX_GROUPS]:
                digits += text[group_start:group_end]
                if len(digits) > most:
                    break
                if len(digits) >= fewest:
                    values.append(digits)
                    out.starts.append(offset + start)
                    out.ends.append(offset + group_end)
    out.hashes += index.hasher.hashes(values)


def _everything(index: EdmIndex, text: str, offset: int = 0) -> _Candidates:
    out = _Candidates()
    _words(index, text, offset, out)
    _numbers(index, text, offset, out)
    return out


def _numbers_and_addresses(index: EdmIndex, text: str, kinds: set[str]) -> _Candidates:
    """The numbers of `text` (for `number` columns), and its addresses (for `email` ones):
    whole, or from any word before the @ (`x.anna@example.com` holds `anna@example.com`)."""
    out = _Candidates()
    if "number" in kinds:
        _numbers(index, text, 0, out)
    at = text.find("@") if "email" in kinds else -1
    while at >= 0:
        local = _LOCAL_PART.match(text[max(0, at - 64) : at][::-1])  # read backwards
        address = EMAIL.match(text, at - (local.end() if local else 0))
        if address is None:
            at = text.find("@", at + 1)
            continue
        for start, hashed in _address(index, address.group()):
            out.hashes.append(hashed)
            out.starts.append(address.start() + start)
            out.ends.append(address.end())
        at = text.find("@", address.end())
    return out


def _address(index: EdmIndex, address: str) -> list[tuple[int, int]]:
    """(start, hash) of each way `address` may hold an address value. Remembered: a
    message's addresses are mostly those of the last one."""
    found = index.addresses.get(address)
    if found is None:
        at = address.index("@")
        words = [(m.start(), m.group().casefold()) for m in WORD.finditer(address)]
        found = [
            (start, index.hasher.chain([word for _, word in words[first:]]))
            for first, (start, _) in enumerate(words)
            if start < at and len(words) - first <= index.max_words
        ]
        if len(index.addresses) >= ADDRESSES:
            index.addresses.clear()
        index.addresses[address] = found
    return found


def anchor_columns(index: EdmIndex, search: Search) -> frozenset[int] | None:
    """The number and address columns that every hit must include one of, or None when
    there are too few of them for that."""
    kinds = tuple(c.kind for c in index.columns)
    return _anchors(kinds, search.columns, search.min_columns)


@functools.cache
def _anchors(
    kinds: tuple[str, ...], columns: frozenset[int], min_columns: int
) -> frozenset[int] | None:
    anchors = frozenset(c for c in columns if kinds[c] in ANCHOR_KINDS)
    return anchors if len(anchors) > len(columns) - min_columns else None


def rows_in(
    index: EdmIndex, texts: Sequence[str], search: Search
) -> list[dict[int, frozenset[int]]]:
    """For each text (of one message: searched in one pass), the rows found in it, each with
    the columns found together."""
    text = SEPARATOR.join(texts)
    anchors = anchor_columns(index, search)
    if anchors:
        kinds = {index.columns[c].kind for c in anchors}
        first = _numbers_and_addresses(index, text, kinds)
    else:
        first = _everything(index, text)
    held = index.find(first.hashes)
    if not held:
        return [{} for _ in texts]
    rows, windows = [], []
    wanted = np.array(sorted(anchors or search.columns), np.uint8)
    for i, start, end in held:
        if end - start > MAX_ROWS_PER_VALUE:
            continue
        keep = np.isin(index.column_ids[start:end], wanted)
        if keep.any():
            rows.append(index.row_ids[start:end][keep])
            windows.append((first.starts[i] - search.proximity, first.ends[i] + search.proximity))
    if not rows:
        return [{} for _ in texts]
    anchored = np.unique(np.concatenate(rows))
    second = first if anchors is None else _around(index, text, windows)
    offsets = list(accumulate(len(t) + len(SEPARATOR) for t in texts[:-1]))
    return _together(index, second, anchored, search, [0, *offsets])


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
        out.extend(_everything(index, text[start:end], start))
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
    index: EdmIndex, found: _Candidates, anchored: np.ndarray, search: Search, offsets: list[int]
) -> list[dict[int, frozenset[int]]]:
    """For each text (starting at `offsets` in the joined one), the anchored rows whose
    values in `found` stand close enough together in it."""
    matches: defaultdict[tuple[int, int], set[tuple[int, int, int]]] = defaultdict(set)
    for i, start, end in index.find(found.hashes):
        at = start + _members(index.row_ids[start:end], anchored)
        pairs = zip(index.row_ids[at].tolist(), index.column_ids[at].tolist(), strict=True)
        text = bisect.bisect_right(offsets, found.starts[i]) - 1
        for row, column in pairs:
            if column in search.columns:
                matches[text, row].add((found.starts[i], found.ends[i], column))
    found_rows: list[dict[int, frozenset[int]]] = [{} for _ in offsets]
    for (text, row), spans in matches.items():
        columns = _close_columns(spans, search)
        if columns:
            found_rows[text][row] = columns
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

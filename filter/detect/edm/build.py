"""Building an EDM index from a CSV file, streaming, in bounded memory.

The CSV is read a record at a time (strict quoting: a broken quote is an error with its line,
and no field may exceed the csv module's 128 KiB); each value of the chosen columns becomes one
entry (hash, row, column). Entries are held CHUNK at a time; a full chunk is sorted and written
to a temporary run file. The runs are then merged by hash range: each range is read from every
run, sorted and written out, and a range too large to hold is halved until it fits (a range of
one hash, one value shared by many rows, is already in order and is copied through). Memory
stays near CHUNK entries (13 bytes each) whatever the size of the file; the runs take about
as much disk in the temporary folder as the index itself.

The index is written next to its final name and renamed into place, so a scanner never sees
half of it.
"""

from __future__ import annotations

import csv
import hashlib
import os
import shutil
import struct
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from itertools import compress
from pathlib import Path
from typing import BinaryIO

import numpy as np

from mailgate.filter.detect.edm.index import (
    MAX_COLUMNS,
    MAX_ROWS,
    NAME,
    Column,
    EdmError,
    header_bytes,
)
from mailgate.filter.detect.edm.words import EMAIL, MAX_WORDS, Hasher, value_words

CHUNK = 1 << 21  # entries sorted in memory at a time (about 27 MB while sorting)
BATCH = 4096  # records hashed together
_COPY = 1 << 20  # bytes copied at a time when the index file is put together
_HASH = struct.Struct("<Q")


@dataclass
class BuildReport:
    path: Path
    rows: int = 0
    entries: int = 0
    columns: list[Column] = field(default_factory=list)
    too_long: int = 0  # values of more than MAX_WORDS words, not indexed
    seconds: float = 0.0


@dataclass
class _Run:
    """A sorted run on disk: its hashes, rows and columns one after the other."""

    path: Path
    count: int

    def below(self, bound: int) -> int:
        """How many of the run's hashes are below `bound` (up to 2**64): a binary search that
        reads the file (mapping it would count every page it touched as ours)."""
        low, high = 0, self.count
        with open(self.path, "rb") as f:
            while low < high:
                middle = (low + high) // 2
                (value,) = _HASH.unpack(os.pread(f.fileno(), 8, 8 * middle))
                low, high = (middle + 1, high) if value < bound else (low, middle)
        return low

    def read(self, start: int, stop: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        n, count = self.count, stop - start
        with open(self.path, "rb") as f:
            h = np.fromfile(f, "<u8", count, offset=8 * start)
            f.seek(8 * n + 4 * start)
            r = np.fromfile(f, "<u4", count)
            f.seek(12 * n + start)
            c = np.fromfile(f, "u1", count)
        return h, r, c


def _ordered(h: np.ndarray, r: np.ndarray, c: np.ndarray) -> tuple[np.ndarray, ...]:
    order = np.lexsort((c, r, h))
    return h[order], r[order], c[order]


class _Builder:
    """Records in, sorted runs out: values hashed a batch of records at a time, column by
    column, and learnt about (how many, of which kind)."""

    def __init__(
        self, names: list[str], positions: list[int], salt: bytes, chunk: int, folder: Path
    ) -> None:
        self.names, self.positions = names, positions
        self.hasher = Hasher(salt)
        self.chunk, self.folder = chunk, folder
        self.rows = self.too_long = self.max_words = 0
        self.digits: list[int] = []  # the fewest and most digits of a number value
        self.values = [0] * len(names)
        self.numbers = [True] * len(names)
        self.emails = [True] * len(names)
        self.pending: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        self.pending_size = 0
        self.runs: list[_Run] = []

    def add(self, records: list[list[str]]) -> None:
        rows = np.arange(self.rows, self.rows + len(records), dtype=np.uint32)
        self.rows += len(records)
        for column, position in enumerate(self.positions):
            values = [record[position] for record in records]
            words = list(map(value_words, values))
            lengths = np.fromiter(map(len, words), np.intp, len(words))
            keep = (lengths > 0) & (lengths <= MAX_WORDS)
            self.too_long += int(np.count_nonzero(lengths > MAX_WORDS))
            kept = list(compress(words, keep))
            if not kept:
                continue
            self._learn(column, list(compress(values, keep)), kept)
            self.max_words = max(self.max_words, int(lengths[keep].max()))
            column_ids = np.full(len(kept), column, np.uint8)
            self.pending.append((self.hasher.values(kept), rows[keep], column_ids))
            self.pending_size += len(kept)
        if self.pending_size >= self.chunk:
            self.flush()

    def _learn(self, column: int, values: list[str], words: list[list[str]]) -> None:
        self.values[column] += len(values)
        lengths = [len(w[0]) for w in words if len(w) == 1 and w[0].isdigit()]
        if lengths:  # a number is one word of digits
            self.digits = [min(self.digits[:1] + lengths), max(self.digits[1:] + lengths)]
        if self.numbers[column]:
            self.numbers[column] = len(lengths) == len(words)
        if self.emails[column]:
            self.emails[column] = all(map(EMAIL.fullmatch, map(str.strip, values)))

    def flush(self) -> None:
        """The pending entries as one sorted run on disk."""
        path = self.folder / f"run.{len(self.runs)}"
        with open(path, "wb") as f:
            if self.pending:
                joined = (np.concatenate(p) for p in zip(*self.pending, strict=True))
                for a in _ordered(*joined):
                    a.tofile(f)
        self.runs.append(_Run(path, self.pending_size))
        self.pending, self.pending_size = [], 0

    def columns(self) -> list[Column]:
        described = []
        for i, name in enumerate(self.names):
            kind = "text"  # an empty column anchors nothing
            if self.values[i]:
                kind = "number" if self.numbers[i] else "email" if self.emails[i] else "text"
            described.append(Column(name, kind, self.values[i]))
        return described


def build_index(
    csv_path: Path,
    columns: list[str],
    out_path: Path,
    chunk: int = CHUNK,
    temporary: Path | None = None,
) -> BuildReport:
    """Index `columns` of `csv_path` (its first record names the columns) into `out_path`.
    Raises EdmError, saying where, for anything it cannot use; `out_path` is then untouched."""
    start = time.monotonic()
    name = out_path.name.removesuffix(".edm")
    if not NAME.fullmatch(name):
        raise EdmError(repr(name), "an index name is letters, digits, '-' and '_' (at most 64)")
    if not columns or len(columns) > MAX_COLUMNS or len(set(columns)) != len(columns):
        raise EdmError("--columns", f"give 1 to {MAX_COLUMNS} different columns, not {columns}")
    salt = os.urandom(16)
    with tempfile.TemporaryDirectory(prefix="mailgate-edm-", dir=temporary) as folder:
        builder = _read(csv_path, columns, salt, chunk, Path(folder))
        report = BuildReport(
            out_path,
            builder.rows,
            sum(run.count for run in builder.runs),
            builder.columns(),
            builder.too_long,
        )
        header = {
            "name": name,
            "rows": report.rows,
            "entries": report.entries,
            "max_words": max(builder.max_words, 1),
            "digits": builder.digits or None,
            "salt": salt.hex(),
            "columns": [vars(c) for c in report.columns],
        }
        blocks = [Path(folder, f"merged.{i}") for i in range(3)]
        with open(blocks[0], "wb") as h, open(blocks[1], "wb") as r, open(blocks[2], "wb") as c:
            _merge(builder.runs, chunk, (h, r, c))
        _assemble(header, blocks, out_path)
    report.seconds = time.monotonic() - start
    return report


def _records(csv_path: Path) -> Iterator[tuple[int, list[str]]]:
    """(line number, record) of a CSV file, strictly parsed; EdmError says where it breaks."""
    try:
        f = open(csv_path, newline="", encoding="utf-8-sig")  # noqa: SIM115 (closed below)
    except OSError as exc:
        raise EdmError(csv_path, f"cannot read it: {exc.strerror}") from None
    with f:
        reader = csv.reader(f, strict=True)
        try:
            for record in reader:
                yield reader.line_num, record
        except csv.Error as exc:
            raise EdmError(f"{csv_path}, line {reader.line_num}", str(exc)) from None
        except UnicodeDecodeError:
            where = f"{csv_path}, after line {reader.line_num}"
            raise EdmError(where, "not UTF-8 text (save the CSV as UTF-8)") from None
        except OSError as exc:
            raise EdmError(csv_path, f"cannot read it: {exc.strerror}") from None


def _read(csv_path: Path, columns: list[str], salt: bytes, chunk: int, folder: Path) -> _Builder:
    records = _records(csv_path)
    first = next(records, None)
    if first is None:
        raise EdmError(csv_path, "empty: the first line names the columns")
    names = [n.strip() for n in first[1]]
    positions = []
    for wanted in columns:
        matching = [i for i, n in enumerate(names) if n == wanted] or [
            i for i, n in enumerate(names) if n.casefold() == wanted.casefold()
        ]
        if len(matching) != 1:
            why = "no" if not matching else "more than one"
            raise EdmError(csv_path, f"{why} column named {wanted!r} (columns: {', '.join(names)})")
        positions.append(matching[0])
    builder = _Builder(columns, positions, salt, chunk, folder)
    batch: list[list[str]] = []
    for line, record in records:
        if not record:
            continue  # a blank line
        if len(record) != len(names):
            raise EdmError(
                f"{csv_path}, line {line}",
                f"{len(record)} fields, the first line names {len(names)} "
                "(a quote opened and not closed?)",
            )
        if builder.rows + len(batch) >= MAX_ROWS:
            raise EdmError(csv_path, f"more than {MAX_ROWS} rows")
        batch.append(record)
        if len(batch) == BATCH:
            builder.add(batch)
            batch = []
    builder.add(batch)
    if builder.pending_size or not builder.runs:
        builder.flush()
    return builder


def _merge(runs: list[_Run], limit: int, out: tuple[BinaryIO, BinaryIO, BinaryIO]) -> None:
    """Every run's entries in order into the three block files, one hash range at a time."""

    def emit(low: int, high: int) -> None:
        slices = [(i, run.below(low), run.below(high)) for i, run in enumerate(runs)]
        total = sum(b - a for _, a, b in slices)
        if total == 0:
            return
        if total > limit and high - low > 1:
            middle = (low + high) // 2
            emit(low, middle)
            emit(middle, high)
            return
        if total > limit:  # one value in many rows: each run's slice is in row order
            for i, a, b in slices:
                for piece in range(a, b, limit):
                    _write(out, runs[i].read(piece, min(b, piece + limit)))
            return
        parts = [runs[i].read(a, b) for i, a, b in slices if b > a]
        _write(out, _ordered(*(np.concatenate(p) for p in zip(*parts, strict=True))))

    emit(0, 1 << 64)


def _write(out: tuple[BinaryIO, ...], arrays: tuple[np.ndarray, ...]) -> None:
    for f, a in zip(out, arrays, strict=True):
        a.tofile(f)


def _assemble(header: dict[str, object], blocks: list[Path], out_path: Path) -> None:
    """Header and blocks into `out_path`, through a temporary name beside it."""
    digest = hashlib.sha256()
    for block in blocks:
        with open(block, "rb") as f:
            while data := f.read(_COPY):
                digest.update(data)
    header["sha256"] = digest.hexdigest()
    partial = out_path.with_name(out_path.name + ".partial")
    try:
        out_path.parent.mkdir(parents=True, exist_ok=True)
        with open(partial, "wb") as out:
            out.write(header_bytes(header))
            for block in blocks:
                with open(block, "rb") as f:
                    shutil.copyfileobj(f, out, _COPY)
            out.flush()
            os.fsync(out.fileno())
        os.replace(partial, out_path)
    except OSError as exc:
        partial.unlink(missing_ok=True)
        raise EdmError(out_path, f"cannot write it: {exc.strerror}") from None

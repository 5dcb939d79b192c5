"""The EDM index file: its layout, and reading one back, checked and mapped read-only.

Layout (little-endian):

    MAGIC (8 bytes) | header length (4 bytes) | header (JSON, padded with spaces to 8 bytes)
    hashes:  entries x uint64, ascending       (the keyed hash of a value)
    rows:    entries x uint32                  (the value's row, ascending among equal hashes)
    columns: entries x uint8                   (the value's column)

The header names the index and its columns (with each column's kind: `number` when every
value is a number, `email` when every value is an address, else `text`), the row and entry
counts, the salt, the longest value in words, the fewest and most digits of a number value
(the scanner skips other numbers), and the SHA-256 of the three arrays. Nothing of
a value is stored but its hash. A file is checked whole when it is opened (digest, sizes,
order, bounds) and then only mapped: every process maps the same pages of the page cache.
"""

from __future__ import annotations

import bisect
import hashlib
import json
import mmap
import os
import re
import struct
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mailgate.filter.detect.edm.words import MAX_WORDS, Hasher

MAGIC = b"MGEDM\x00\x00\x01"  # the last byte is the format version
_LENGTH = struct.Struct("<I")
MAX_HEADER = 1 << 16
ENTRY_BYTES = 8 + 4 + 1
MAX_ROWS = (1 << 32) - 1
MAX_COLUMNS = 64
FEW = 32  # hashes looked up one by one rather than with numpy
KINDS = ("number", "email", "text")
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")


class EdmError(Exception):
    """An index that cannot be built or used: `where` (a file, a line of it), `reason`."""

    def __init__(self, where: object, reason: str) -> None:
        super().__init__(f"{where}: {reason}")
        self.where = str(where)
        self.reason = reason


@dataclass(frozen=True)
class Column:
    name: str
    kind: str  # number | email | text
    values: int  # how many values of this column the index holds


def header_bytes(header: dict[str, Any]) -> bytes:
    """MAGIC, the length and the JSON header, padded so the arrays start 8-byte aligned."""
    text = json.dumps(header, sort_keys=True, separators=(",", ":")).encode()
    text += b" " * (-(len(MAGIC) + _LENGTH.size + len(text)) % 8)
    return MAGIC + _LENGTH.pack(len(text)) + text


def read_header(path: Path) -> tuple[dict[str, Any], bytes]:
    """The header of an index file and its bytes as stored (MAGIC to the arrays)."""
    try:
        with open(path, "rb") as f:
            start = f.read(len(MAGIC) + _LENGTH.size)
            if len(start) < len(MAGIC) + _LENGTH.size or not start.startswith(MAGIC[:5]):
                raise EdmError(path, "not an EDM index (build it with `mailgate edm build`)")
            if start[: len(MAGIC)] != MAGIC:
                raise EdmError(path, "an EDM index of another format version")
            (length,) = _LENGTH.unpack(start[len(MAGIC) :])
            if length > MAX_HEADER:
                raise EdmError(path, f"corrupt index: header of {length} bytes")
            text = f.read(length)
    except OSError as exc:
        raise EdmError(path, f"cannot read it: {exc.strerror}") from None
    if len(text) != length:
        raise EdmError(path, "corrupt index: cut short in its header")
    try:
        header = json.loads(text)
    except (UnicodeDecodeError, ValueError):
        raise EdmError(path, "corrupt index: the header is not JSON") from None
    if not isinstance(header, dict):
        raise EdmError(path, "corrupt index: the header is not a mapping")
    return header, start + text


def identity(path: Path) -> str:
    """What a pack's version takes from an index: the hash of its header, which holds the
    digest of its arrays (checked when the index is opened). '' when the header is
    unreadable (the pack then does not build, saying why)."""
    try:
        return hashlib.sha256(read_header(path)[1]).hexdigest()
    except EdmError:
        return ""


def _field(header: dict[str, Any], key: str, kind: type, path: Path) -> Any:
    value = header.get(key)
    if not isinstance(value, kind) or isinstance(value, bool):
        raise EdmError(path, f"corrupt index: header field {key!r}")
    return value


def _bounds(value: Any) -> bool:
    return (
        isinstance(value, list)
        and len(value) == 2
        and all(isinstance(n, int) and not isinstance(n, bool) for n in value)
        and 1 <= value[0] <= value[1]
    )


class EdmIndex:
    """One index, checked and mapped read-only. Lookups need no lock: nothing changes."""

    def __init__(self, path: Path, expected: str | None = None) -> None:
        """Open and check `path`; `expected`: the identity the pack was read with (a file
        replaced since then is refused: what was linted is what runs)."""
        self.path = Path(path)
        header, stored = read_header(self.path)
        if expected is not None and hashlib.sha256(stored).hexdigest() != expected:
            raise EdmError(path, "the index changed since the pack was read")
        self._parse_header(header)
        self._map(len(stored), header["sha256"])
        self.hasher = Hasher(self.salt)
        self.addresses: dict[str, list[tuple[int, int]]] = {}  # the scanner's memo

    def _parse_header(self, header: dict[str, Any]) -> None:
        path = self.path
        self.name = _field(header, "name", str, path)
        self.rows = _field(header, "rows", int, path)
        self.entries = _field(header, "entries", int, path)
        self.max_words = _field(header, "max_words", int, path)
        digits = header.get("digits")  # [fewest, most] digits of a number value, or None
        salt = _field(header, "salt", str, path)
        columns = _field(header, "columns", list, path)
        _field(header, "sha256", str, path)
        try:
            self.salt = bytes.fromhex(salt)
            parsed = [Column(c["name"], c["kind"], c["values"]) for c in columns]
        except (ValueError, TypeError, KeyError):
            raise EdmError(path, "corrupt index: header field 'salt' or 'columns'") from None
        names = [c.name for c in parsed]
        if (
            len(self.salt) != 16
            or not 0 <= self.rows <= MAX_ROWS
            or not 0 <= self.entries <= self.rows * len(parsed)
            or not 1 <= self.max_words <= MAX_WORDS
            or not (digits is None or _bounds(digits))
            or not 1 <= len(parsed) <= MAX_COLUMNS
            or len(set(names)) != len(names)
            or not all(isinstance(c.name, str) and c.name for c in parsed)
            or not all(c.kind in KINDS and isinstance(c.values, int) for c in parsed)
        ):
            raise EdmError(path, "corrupt index: inconsistent header")
        self.columns = parsed
        self.digits = (digits[0], digits[1]) if digits else None

    def _map(self, offset: int, digest: str) -> None:
        path = self.path
        try:
            with open(path, "rb") as f:
                size = os.fstat(f.fileno()).st_size
                if size != offset + self.entries * ENTRY_BYTES:
                    expected = offset + self.entries * ENTRY_BYTES
                    raise EdmError(path, f"corrupt index: {size} bytes, the header says {expected}")
                # Mapped before a scan worker confines itself; the mapping outlives the file.
                buffer = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        except OSError as exc:
            raise EdmError(path, f"cannot read it: {exc.strerror}") from None
        if hashlib.sha256(memoryview(buffer)[offset:]).hexdigest() != digest:
            raise EdmError(path, "corrupt index: its content does not match its digest")
        n = self.entries
        self.hashes = np.frombuffer(buffer, "<u8", n, offset)
        # What `bisect` reads: the hashes as Python ints, straight from the mapping.
        self._sorted: Sequence[int] = (
            memoryview(buffer)[offset : offset + 8 * n].cast("Q")
            if sys.byteorder == "little"
            else self.hashes
        )
        self.row_ids = np.frombuffer(buffer, "<u4", n, offset + 8 * n)
        self.column_ids = np.frombuffer(buffer, "u1", n, offset + 12 * n)
        same = self.hashes[1:] == self.hashes[:-1]
        if (
            np.any(self.hashes[1:] < self.hashes[:-1])
            or np.any(same & (self.row_ids[1:] < self.row_ids[:-1]))
            or (n and int(self.row_ids.max()) >= self.rows)
            or (n and int(self.column_ids.max()) >= len(self.columns))
        ):
            raise EdmError(path, "corrupt index: entries out of order or out of range")

    def column(self, name: str) -> int | None:
        return next((i for i, c in enumerate(self.columns) if c.name == name), None)

    def find(self, hashes: list[int]) -> list[tuple[int, int, int]]:
        """Which of `hashes` the index holds, and where the entries of each lie: (position in
        `hashes`, start, end) into the arrays. A few are looked up one by one (`bisect` on
        the mapped file: numpy's per-call cost, some microseconds, would be most of it)."""
        if len(hashes) <= FEW:
            found = []
            for position, hashed in enumerate(hashes):
                start = bisect.bisect_left(self._sorted, hashed)
                if start < self.entries and self._sorted[start] == hashed:
                    end = bisect.bisect_right(self._sorted, hashed, start)
                    found.append((position, start, end))
            return found
        wanted = np.array(hashes, np.uint64)
        low = np.searchsorted(self.hashes, wanted)
        held = np.flatnonzero(self.hashes[np.minimum(low, self.entries - 1)] == wanted)
        high = np.searchsorted(self.hashes, wanted[held], "right")
        return list(zip(held.tolist(), low[held].tolist(), high.tolist(), strict=True))

    def describe(self) -> str:
        columns = ", ".join(f"{c.name} ({c.kind})" for c in self.columns)
        return f"{self.rows} rows, columns {columns}"

"""The one compound file (CFB, [MS-CFB] version 3) writer of the tests: olefile only reads.
Legacy Office documents, VBA projects, encrypted OOXML and Outlook .msg files are built on it.

Streams keep their exact sizes: a stream under 4096 bytes lives in the mini stream, as the
spec requires and as olefile reads it, so a reader that trusts stream sizes (Outlook .msg
properties) sees the real data.
"""

from __future__ import annotations

import itertools
import struct
from collections.abc import Mapping
from dataclasses import dataclass, field

SIGNATURE = b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1"
SECTOR = 512
MINI_SECTOR = 64
MINI_CUTOFF = 4096
_FREE, _END, _FATSECT, _NOSTREAM = 0xFFFFFFFF, 0xFFFFFFFE, 0xFFFFFFFD, 0xFFFFFFFF
_STORAGE, _STREAM, _ROOT = 1, 2, 5
_RED, _BLACK = 0, 1


@dataclass
class _Entry:
    name: str
    kind: int
    data: bytes = b""
    kids: list[int] = field(default_factory=list)
    left: int = _NOSTREAM
    right: int = _NOSTREAM
    child: int = _NOSTREAM
    color: int = _BLACK
    start: int = _END
    size: int = 0


def _sort_key(entry: _Entry) -> tuple[int, str]:
    # [MS-CFB] 2.6.4: siblings are ordered by name length first, then by upper-cased name.
    return len(entry.name), entry.name.upper()


def _link_tree(entries: list[_Entry], kids: list[int], depth: int, red_depth: int) -> int:
    """Hang sorted `kids` as a balanced binary tree and return its root. Levels above
    `red_depth` are complete, so colouring the last, partial level red gives every path the
    same number of black nodes: a valid red-black tree."""
    if not kids:
        return _NOSTREAM
    mid = len(kids) // 2
    node = entries[kids[mid]]
    node.color = _RED if depth >= red_depth else _BLACK
    node.left = _link_tree(entries, kids[:mid], depth + 1, red_depth)
    node.right = _link_tree(entries, kids[mid + 1 :], depth + 1, red_depth)
    return kids[mid]


def _chain(fat: list[int], count: int) -> int:
    """Append a chain of `count` sectors to `fat`; its first sector, or END when empty."""
    if count == 0:
        return _END
    start = len(fat)
    fat += [start + i + 1 for i in range(count - 1)] + [_END]
    return start


def _pad(data: bytes, unit: int) -> bytes:
    return data + bytes(-len(data) % unit)


def _link_chain(entries: list[_Entry], kids: list[int]) -> int:
    """Hang sorted `kids` as one chain of right siblings, all black: a tree as deep as the
    storage is wide, which a reader walking it recursively must survive."""
    for kid, after in itertools.pairwise(kids):
        entries[kid].right = after
    return kids[0] if kids else _NOSTREAM


def cfb_file(streams: Mapping[str, bytes], *, chained_siblings: bool = False) -> bytes:
    """A compound file holding `streams` ("Storage/Sub/Stream" -> data); storages are
    created from the paths. Siblings form a balanced red-black tree, or with
    `chained_siblings` one degenerate chain (as a damaged or hostile file may)."""
    entries = [_Entry("Root Entry", _ROOT)]
    storages = {"": 0}
    for path, data in streams.items():
        *folders, name = path.split("/")
        parent = ""
        for piece in folders:
            key = f"{parent}/{piece}" if parent else piece
            if key not in storages:
                storages[key] = len(entries)
                entries[storages[parent]].kids.append(len(entries))
                entries.append(_Entry(piece, _STORAGE, start=0))
            parent = key
        entries[storages[parent]].kids.append(len(entries))
        entries.append(_Entry(name, _STREAM, data, size=len(data)))
    for entry in entries:
        kids = sorted(entry.kids, key=lambda i: _sort_key(entries[i]))
        if chained_siblings:
            entry.child = _link_chain(entries, kids)
        else:
            red_depth = (len(kids) + 1).bit_length() - 1
            entry.child = _link_tree(entries, kids, 0, red_depth)

    # Small streams go to the mini stream (64-byte sectors chained by the mini FAT).
    mini_fat: list[int] = []
    mini = bytearray()
    for entry in entries:
        if entry.kind == _STREAM and 0 < entry.size < MINI_CUTOFF:
            entry.start = _chain(mini_fat, -(-entry.size // MINI_SECTOR))
            mini += _pad(entry.data, MINI_SECTOR)
    root = entries[0]
    root.data, root.size = bytes(mini), len(mini)
    mini_fat += [_FREE] * (-len(mini_fat) % (SECTOR // 4))
    mini_fat_bytes = struct.pack(f"<{len(mini_fat)}I", *mini_fat)

    big = [e for e in entries if e.size >= MINI_CUTOFF or (e.kind == _ROOT and e.size)]
    dir_count = -(-len(entries) * 128 // SECTOR)
    mini_fat_count = len(mini_fat_bytes) // SECTOR
    data_counts = [-(-e.size // SECTOR) for e in big]
    used = dir_count + mini_fat_count + sum(data_counts)
    fat_count = 1
    while fat_count * (SECTOR // 4) < used + fat_count:
        fat_count += 1
    if fat_count > 109:
        raise ValueError("file too large for a header-only DIFAT")

    fat = [_FATSECT] * fat_count
    first_dir = _chain(fat, dir_count)
    first_mini_fat = _chain(fat, mini_fat_count)
    for entry, count in zip(big, data_counts, strict=True):
        entry.start = _chain(fat, count)
    fat += [_FREE] * (fat_count * (SECTOR // 4) - len(fat))

    directory = bytearray()
    for entry in entries:
        name = entry.name.encode("utf-16-le") + b"\x00\x00"
        if len(name) > 64:
            raise ValueError(f"name too long: {entry.name}")
        directory += name.ljust(64, b"\x00")
        directory += struct.pack("<HBB", len(name), entry.kind, entry.color)
        directory += struct.pack("<III", entry.left, entry.right, entry.child)
        directory += bytes(16 + 4 + 8 + 8)  # CLSID, state bits, creation and modified times
        directory += struct.pack("<IQ", entry.start, entry.size)
    # Unused directory slots are empty entries whose sibling and child ids are NOSTREAM.
    empty = bytes(64 + 4) + struct.pack("<III", _NOSTREAM, _NOSTREAM, _NOSTREAM) + bytes(48)
    while len(directory) % SECTOR:
        directory += empty

    header = struct.pack(
        "<8s16sHHHHH6sIIIIIIIII",
        SIGNATURE,
        bytes(16),
        0x3E,  # minor version
        3,  # major version: 512-byte sectors
        0xFFFE,  # little-endian
        9,  # sector shift
        6,  # mini sector shift
        bytes(6),
        0,  # directory sector count: must be 0 in version 3
        fat_count,
        first_dir,
        0,  # transaction signature
        MINI_CUTOFF,
        first_mini_fat if mini_fat_count else _END,
        mini_fat_count,
        _END,  # no DIFAT sectors beyond the header's 109 entries
        0,
    )
    header += struct.pack("<109I", *(list(range(fat_count)) + [_FREE] * (109 - fat_count)))
    body = struct.pack(f"<{len(fat)}I", *fat) + bytes(directory) + mini_fat_bytes
    body += b"".join(_pad(e.data, SECTOR) for e in big)
    return header + body

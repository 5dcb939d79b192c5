"""Archive listing and bounded extraction: zip (with ZipCrypto/AES flags), rar, 7z, tar, and
the single-file compressors gzip, bzip2 and xz (whose one member is then looked into again,
so a .tar.gz is a tar inside a gzip).

Nothing here inflates more than the message budget allows: declared sizes and the
compression ratio are checked before a member is read, and reads are capped while streaming,
so a bomb costs at most the budget.

Encrypted zip (ZipCrypto and WinZip AES, through pyzipper) and 7z archives are opened with
passwords found in the message (`unlock_zip`, `unlock_7z`), each try counted against the
message's trials and seconds.
"""

from __future__ import annotations

import bz2
import functools
import gzip
import hashlib
import io
import lzma
import struct
import sys
import tarfile
import zipfile
import zlib
from array import array
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import IO

import py7zr
import py7zr.compressor
import py7zr.exceptions
import py7zr.io
import pyzipper
import rarfile

from mailgate.filter.message.budget import ScanBudget

ZIP_SIGNATURES = (b"PK\x03\x04", b"PK\x05\x06", b"PK\x07\x08")
RAR_SIGNATURES = (b"Rar!\x1a\x07\x00", b"Rar!\x1a\x07\x01\x00")
SEVENZIP_SIGNATURE = b"7z\xbc\xaf\x27\x1c"
GZIP_SIGNATURE = b"\x1f\x8b\x08"  # magic plus deflate, the only method gzip defines
XZ_SIGNATURE = b"\xfd7zXZ\x00"
BZIP2_BLOCK_MAGIC = b"\x31\x41\x59\x26\x53\x59"  # after "BZh" and the block size digit
TAR_MAGIC_OFFSET = 257  # "ustar" in POSIX and GNU headers; v7 tars have no magic
# The member name a compressor's file name implies, as gunzip and friends derive it.
_COMPRESSED_SUFFIXES = {
    ".tgz": ".tar",
    ".taz": ".tar",
    ".tbz": ".tar",
    ".tbz2": ".tar",
    ".txz": ".tar",
    ".gz": "",
    ".bz2": "",
    ".xz": "",
}
# Below this size a high compression ratio is harmless (a page of blanks compresses 1000:1).
RATIO_FLOOR = 1 << 20
_AES_EXTRA_ID = 0x9901
_ZIP_AES_METHOD = 99
_CHUNK = 1 << 16
# What a damaged archive raises from the standard library and the archive libraries.
_ARCHIVE_ERRORS = (
    zipfile.BadZipFile,
    pyzipper.BadZipFile,  # its own class: pyzipper carries its own copy of zipfile
    zlib.error,
    lzma.LZMAError,
    EOFError,
    OSError,
    tarfile.TarError,
    ValueError,
    KeyError,
    IndexError,
    struct.error,
    NotImplementedError,
    RuntimeError,
    UnicodeError,
    rarfile.Error,
    py7zr.exceptions.ArchiveError,
    py7zr.exceptions.Bad7zFile,
    py7zr.exceptions.DecompressionError,
    py7zr.exceptions.UnsupportedCompressionMethodError,
    py7zr.exceptions.InternalError,
)


@dataclass
class Member:
    """One file inside an archive; `payload` is None when it could not or may not be read."""

    name: str
    payload: bytes | None = None
    encrypted: bool = False
    unscannable: set[str] = field(default_factory=set)


@dataclass
class Listing:
    members: list[Member] = field(default_factory=list)
    encrypted: bool = False
    unscannable: set[str] = field(default_factory=set)


def archive_kind(data: bytes) -> str | None:
    """'zip', 'rar', '7z', 'tar', 'gzip', 'bzip2' or 'xz' from the content, else None. A zip
    is also recognised by its end-of-central-directory record, which finds self-extractors
    and polyglots."""
    head = data[:10]
    if head.startswith(ZIP_SIGNATURES):
        return "zip"
    if head.startswith(RAR_SIGNATURES):
        return "rar"
    if head.startswith(SEVENZIP_SIGNATURE):
        return "7z"
    if head.startswith(GZIP_SIGNATURE):
        return "gzip"
    if head.startswith(XZ_SIGNATURE):
        return "xz"
    if head.startswith(b"BZh") and head[3:4].isdigit() and head[4:10] == BZIP2_BLOCK_MAGIC:
        return "bzip2"
    if data[TAR_MAGIC_OFFSET : TAR_MAGIC_OFFSET + 5] == b"ustar":
        return "tar"
    if len(data) > 22 and b"PK\x05\x06" in data[-(1 << 16) - 22 :]:
        return "zip"
    return None


def _member_allowed(declared: int, compressed: int, budget: ScanBudget) -> str | None:
    """Why a member of this declared size must not be inflated, or None when it may."""
    if declared > budget.bytes_left:
        return "over_budget"
    limit = budget.limits.max_archive_ratio * max(compressed, 1)
    if declared > RATIO_FLOOR and declared > limit:
        return "over_budget"
    return None


def _zip_encrypted(info: zipfile.ZipInfo) -> bool:
    if info.flag_bits & 0x1 or info.compress_type == _ZIP_AES_METHOD:
        return True
    extra = info.extra
    pos = 0
    while pos + 4 <= len(extra):
        header_id, size = struct.unpack_from("<HH", extra, pos)
        if header_id == _AES_EXTRA_ID:
            return True
        pos += 4 + size
    return False


def read_zip_member(zf: zipfile.ZipFile, info: zipfile.ZipInfo, budget: ScanBudget) -> Member:
    """Stream one member out of a zip under the budget and ratio guard."""
    member = Member(info.filename)
    refused = _member_allowed(info.file_size, info.compress_size, budget)
    if refused:
        member.unscannable.add(refused)
        return member
    # zipfile never yields more than the declared size (a lie fails the CRC at the end),
    # and the declared size has passed the checks above.
    member.payload = _read_at_most(lambda: zf.open(info), info.file_size, member)
    budget.charge_bytes(len(member.payload))
    return member


def _read_at_most(
    opener: Callable[[], AbstractContextManager[IO[bytes]]],
    cap: int,
    member: Member,
    overrun: Callable[[], bool] | None = None,
) -> bytes:
    """Up to cap + 1 bytes from the stream, in chunks (the extra byte tells an overrun).
    Damage marks the member malformed and keeps what was read before it; so does `overrun`
    turning true between chunks (over_budget), for reads that cost time per byte."""
    chunks: list[bytes] = []
    got = 0
    try:
        with opener() as stream:
            while got <= cap:
                if overrun is not None and overrun():
                    member.unscannable.add("over_budget")
                    break
                chunk = stream.read(min(_CHUNK, cap + 1 - got))
                if not chunk:
                    break
                chunks.append(chunk)
                got += len(chunk)
    except _ARCHIVE_ERRORS:
        member.unscannable.add("malformed")
    return b"".join(chunks)


def iter_zip_infos(zf: zipfile.ZipFile) -> Iterator[zipfile.ZipInfo]:
    return (info for info in zf.infolist() if not info.is_dir())


def list_zip(zf: zipfile.ZipFile, budget: ScanBudget, max_members: int) -> Listing:
    listing = Listing()
    for info in iter_zip_infos(zf):
        if len(listing.members) >= max_members:
            listing.unscannable.add("over_budget")
            break
        if _zip_encrypted(info):
            listing.encrypted = True
            listing.members.append(Member(info.filename, encrypted=True))
            continue
        listing.members.append(read_zip_member(zf, info, budget))
    return listing


def unlock_zip(
    data: bytes, passwords: Sequence[str], budget: ScanBudget, max_members: int
) -> Listing | None:
    """The encrypted members of a zip, read with the first password that opens the smallest
    of them; None when none does. Every member read is a trial (an AES member derives its own
    key); members past the trials, or that the password does not open, stay encrypted."""
    try:
        zf = pyzipper.AESZipFile(io.BytesIO(data))
    except Exception:  # what a damaged zip raises through pyzipper; the first pass said so
        return None
    with zf:
        locked = [info for info in iter_zip_infos(zf) if _zip_encrypted(info)][:max_members]
        if not locked:
            return None
        probe = min(locked, key=lambda info: info.compress_size)

        def opens(password: str) -> bytes | None:
            pwd = password.encode("utf-8")
            return pwd if _zip_member_opens(zf, probe, pwd) else None

        pwd = budget.first_to_open(passwords, opens)
        if pwd is None:
            return None
        listing = Listing()
        for info in locked:
            if not budget.take_trial():
                listing.unscannable.add("over_budget")
                member = None
            else:
                member = _read_locked_zip_member(zf, info, pwd, budget)
            if member is None:
                listing.encrypted = True
                member = Member(info.filename, encrypted=True)
            listing.members.append(member)
        return listing


# A password is taken once the smallest encrypted member decrypts and inflates this far
# (all of it, CRC checked, when it is smaller): ZipCrypto checks one byte of the password,
# AES two, so a wrong password that passes them fails here.
_PROBE_BYTES = 1 << 20


def _zip_member_opens(zf: zipfile.ZipFile, info: zipfile.ZipInfo, pwd: bytes) -> bool:
    try:
        with zf.open(info, pwd=pwd) as stream:
            got = 0
            while got < _PROBE_BYTES:
                chunk = stream.read(_CHUNK)
                if not chunk:
                    break
                got += len(chunk)
    except Exception:  # a wrong key feeds garbage to the decompressor: it raises anything
        return False
    return True


def _read_locked_zip_member(
    zf: zipfile.ZipFile, info: zipfile.ZipInfo, pwd: bytes, budget: ScanBudget
) -> Member | None:
    """One encrypted member read with `pwd` under the budget and ratio guard, and the
    unlocking seconds (pyzipper decrypts ZipCrypto in Python, byte by byte); None when the
    password is not this member's."""
    member = Member(info.filename)
    refused = _member_allowed(info.file_size, info.compress_size, budget)
    if refused:
        member.unscannable.add(refused)
        return member
    try:
        zf.open(info, pwd=pwd).close()
    except Exception:  # "Bad password", or damage pyzipper reports its own way
        return None
    member.payload = _read_at_most(
        lambda: zf.open(info, pwd=pwd), info.file_size, member, budget.unlock_overrun
    )
    budget.charge_bytes(len(member.payload))
    return member


def open_zip(data: bytes) -> zipfile.ZipFile | None:
    try:
        return zipfile.ZipFile(io.BytesIO(data))
    except _ARCHIVE_ERRORS:
        return None


def list_rar(data: bytes, budget: ScanBudget, max_members: int) -> Listing:
    """Names and encryption flags; stored (uncompressed) members are read too. Compressed
    members need the non-free unrar tool, so they are listed without content."""
    listing = Listing()
    try:
        rf = rarfile.RarFile(io.BytesIO(data))
        if rf.needs_password() and not rf.infolist():
            listing.encrypted = True  # encrypted headers: not even the names are readable
        for info in rf.infolist():
            if info.is_dir():
                continue
            if len(listing.members) >= max_members:
                listing.unscannable.add("over_budget")
                break
            member = Member(info.filename or "")
            if info.needs_password():
                member.encrypted = listing.encrypted = True
            elif info.compress_type == rarfile.RAR_M0:
                refused = _member_allowed(info.file_size or 0, info.compress_size or 0, budget)
                if refused:
                    member.unscannable.add(refused)
                else:
                    member.payload = rf.read(info)[: info.file_size or 0]
                    budget.charge_bytes(len(member.payload))
            listing.members.append(member)
        if not listing.members and not listing.encrypted:
            listing.unscannable.add("malformed")  # rarfile skips unreadable blocks silently
    except rarfile.PasswordRequired:
        listing.encrypted = True
    except _ARCHIVE_ERRORS:
        listing.unscannable.add("malformed")
    return listing


def list_7z(data: bytes, budget: ScanBudget, max_members: int) -> Listing:
    """Names and encryption flags; unencrypted archives are extracted when their declared
    sizes fit the budget and ratio guard."""
    try:
        return _read_7z(data, budget, max_members, None)
    except py7zr.exceptions.PasswordRequired:
        return Listing(encrypted=True)
    except _ARCHIVE_ERRORS:
        return Listing(unscannable={"malformed"})


def unlock_7z(
    data: bytes, passwords: Sequence[str], budget: ScanBudget, max_members: int
) -> Listing | None:
    """An encrypted 7z extracted with the first password that opens it (its names too, when
    the headers are encrypted); None when none does. 7z has no password check: a password
    is right when the content decrypts, inflates and matches its CRC."""

    def opens(password: str) -> Listing | None:
        try:
            return _read_7z(data, budget, max_members, password)
        except Exception:  # a wrong key feeds garbage to py7zr's parsers: they raise anything
            return None

    return budget.first_to_open(passwords, opens)


def _read_7z(data: bytes, budget: ScanBudget, max_members: int, password: str | None) -> Listing:
    listing = Listing()
    archive = py7zr.SevenZipFile(io.BytesIO(data), password=password)
    infos = [f for f in archive.list() if not f.is_directory]
    listing.encrypted = archive.needs_password() and password is None
    for info in infos[:max_members]:
        listing.members.append(Member(info.filename, encrypted=listing.encrypted))
    if len(infos) > max_members:
        listing.unscannable.add("over_budget")
    if listing.encrypted or not listing.members:
        return listing
    declared = sum(f.uncompressed or 0 for f in infos)
    refused = _member_allowed(declared, len(data), budget)
    if refused:
        listing.unscannable.add(refused)
        return listing
    factory = py7zr.io.BytesIOFactory(declared + 1)
    archive.reset()
    archive.extract(targets=[m.name for m in listing.members], factory=factory)
    for member in listing.members:
        if member.name in factory.products:
            member.payload = factory.get(member.name).read()[: declared + 1]
            budget.charge_bytes(len(member.payload))
    return listing


# 7-Zip derives an AES key from SHA-256 over 2**19 copies of salt + password + a counter.
# py7zr feeds them to the hash from Python (0.2 s a password); built in chunks of 65536
# copies with slice assignments, the same bytes hash in C in a tenth of that. An archive
# may ask for up to 2**24 rounds (32 times the cost); 7-Zip writes 19, more is refused.
MAX_7Z_KEY_CYCLES = 20
_7Z_CHUNK_CYCLES = 16


@functools.lru_cache(maxsize=8)  # a header-encrypted archive derives the same key twice
def seven_zip_key(password: bytes, cycles: int, salt: bytes, digest: str) -> bytes:
    """py7zr.helpers.calculate_key, computed faster (see above)."""
    if cycles == 0x3F:
        return (salt + password + bytes(32))[:32]
    if cycles > MAX_7Z_KEY_CYCLES:
        raise py7zr.exceptions.UnsupportedCompressionMethodError(cycles, "7zAES cost too high")
    record = salt + password
    stride = len(record) + 8
    per_chunk = 1 << min(cycles, _7Z_CHUNK_CYCLES)
    buffer = bytearray(per_chunk * stride)
    for offset, byte in enumerate(record):
        buffer[offset::stride] = bytes((byte,)) * per_chunk
    low = array("Q", range(per_chunk))
    if sys.byteorder == "big":
        low.byteswap()
    counters = low.tobytes()
    for k in range(8):
        buffer[len(record) + k :: stride] = counters[k::8]
    hasher = hashlib.new(digest)
    for chunk in range((1 << cycles) // per_chunk):
        # The counter's two low bytes run through the chunk; the six high ones are the chunk's.
        high = (chunk * per_chunk).to_bytes(8, "little")
        for k in range(_7Z_CHUNK_CYCLES // 8, 8):
            buffer[len(record) + k :: stride] = bytes((high[k],)) * per_chunk
        hasher.update(buffer)
    return hasher.digest()[:32]


py7zr.compressor.calculate_key = seven_zip_key  # where py7zr's AES decoder looks it up


def list_tar(data: bytes, budget: ScanBudget, max_members: int) -> Listing:
    """Regular files, read when their declared size fits the budget. A tar is not compressed,
    but a GNU sparse member can declare any size over a few bytes, hence the check."""
    listing = Listing()
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as archive:
            for info in archive:
                if not info.isfile():
                    continue
                if len(listing.members) >= max_members:
                    listing.unscannable.add("over_budget")
                    break
                member = Member(info.name)
                stream = archive.extractfile(info) if info.size <= budget.bytes_left else None
                if stream is None:
                    member.unscannable.add("over_budget")
                else:
                    member.payload = stream.read(info.size)
                    budget.charge_bytes(len(member.payload))
                listing.members.append(member)
    except _ARCHIVE_ERRORS:
        listing.unscannable.add("malformed")
    return listing


def compressed_member_name(data: bytes, kind: str, outer_name: str | None) -> str:
    """gzip's stored original name when it has one, else the outer name less its suffix."""
    if kind == "gzip" and len(data) > 10 and data[3] & 0x08:  # FNAME
        start = 10
        if data[3] & 0x04:  # FEXTRA comes first: two length bytes, then that many
            start += 2 + int.from_bytes(data[10:12], "little")
        end = data.find(b"\0", start, start + 1024)
        if end > start:
            return data[start:end].decode("latin-1").replace("\\", "/").rsplit("/", 1)[-1]
    name = outer_name or kind
    for suffix, replacement in _COMPRESSED_SUFFIXES.items():
        if name.lower().endswith(suffix) and len(name) > len(suffix):
            return name[: -len(suffix)] + replacement
    return name


_DECOMPRESSING_READERS: dict[str, Callable[[io.BytesIO], IO[bytes]]] = {
    "gzip": lambda source: gzip.GzipFile(fileobj=source, mode="rb"),
    "bzip2": bz2.BZ2File,
    "xz": lzma.LZMAFile,
}


def unpack_compressed(data: bytes, kind: str, name: str, budget: ScanBudget) -> Listing:
    """The one file inside a gzip, bzip2 or xz stream (concatenated streams read as one),
    inflated in chunks: no more than the budget, nor the ratio guard's share beyond
    RATIO_FLOOR. What was inflated before a limit or damage is still returned for scanning."""
    cap = min(budget.bytes_left, max(RATIO_FLOOR, budget.limits.max_archive_ratio * len(data)))
    member = Member(name)
    payload = _read_at_most(lambda: _DECOMPRESSING_READERS[kind](io.BytesIO(data)), cap, member)
    if len(payload) > cap:
        member.unscannable.add("over_budget")
    member.payload = payload[:cap]
    budget.charge_bytes(len(member.payload))
    return Listing(members=[member])

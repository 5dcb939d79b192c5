"""Archive listing and bounded extraction: zip (with ZipCrypto/AES flags), rar, 7z.

Nothing here inflates more than the message budget allows: declared sizes and the
compression ratio are checked before a member is read, and reads are capped while streaming,
so a bomb costs at most the budget.
"""

from __future__ import annotations

import io
import lzma
import struct
import zipfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field

import py7zr
import py7zr.exceptions
import py7zr.io
import rarfile

from .scanbudget import ScanBudget

ZIP_SIGNATURES = (b"PK\x03\x04", b"PK\x05\x06", b"PK\x07\x08")
RAR_SIGNATURES = (b"Rar!\x1a\x07\x00", b"Rar!\x1a\x07\x01\x00")
SEVENZIP_SIGNATURE = b"7z\xbc\xaf\x27\x1c"
# Below this size a high compression ratio is harmless (a page of blanks compresses 1000:1).
RATIO_FLOOR = 1 << 20
_AES_EXTRA_ID = 0x9901
_ZIP_AES_METHOD = 99
_CHUNK = 1 << 16
# What a damaged archive raises from the standard library and the two archive libraries.
_ARCHIVE_ERRORS = (
    zipfile.BadZipFile,
    zlib.error,
    lzma.LZMAError,
    EOFError,
    OSError,
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
    """'zip', 'rar' or '7z' from the leading bytes, else None. A zip is also recognised by
    its end-of-central-directory record, which finds self-extractors and polyglots."""
    head = data[:8]
    if head.startswith(ZIP_SIGNATURES):
        return "zip"
    if head.startswith(RAR_SIGNATURES):
        return "rar"
    if head.startswith(SEVENZIP_SIGNATURE):
        return "7z"
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
    cap = info.file_size
    chunks: list[bytes] = []
    got = 0
    try:
        with zf.open(info) as stream:
            while got <= cap:
                chunk = stream.read(min(_CHUNK, cap + 1 - got))
                if not chunk:
                    break
                chunks.append(chunk)
                got += len(chunk)
    except _ARCHIVE_ERRORS:
        member.unscannable.add("malformed")
    budget.charge_bytes(got)
    member.payload = b"".join(chunks)
    return member


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
    listing = Listing()
    try:
        archive = py7zr.SevenZipFile(io.BytesIO(data))
        infos = [f for f in archive.list() if not f.is_directory]
        encrypted = archive.needs_password()
        listing.encrypted = encrypted
        for info in infos[:max_members]:
            listing.members.append(Member(info.filename, encrypted=encrypted))
        if len(infos) > max_members:
            listing.unscannable.add("over_budget")
        if encrypted or not listing.members:
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
    except py7zr.exceptions.PasswordRequired:
        listing.encrypted = True
    except _ARCHIVE_ERRORS:
        listing.unscannable.add("malformed")
    return listing

"""Builders for test messages and attachments, generated from scratch (no binary fixtures).

Reused for golden fixtures: every builder returns bytes and says in its docstring what a
scanner should find in it. Messages use CRLF line ends, as on the wire.
"""

from __future__ import annotations

import base64
import binascii
import bz2
import gzip
import hashlib
import io
import lzma
import os
import struct
import tarfile
import zipfile
import zlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import msoffcrypto.format.ooxml
import py7zr
import pyzipper

from tests.support.cfb import cfb_file

EICAR = rb"X5O!P%@AP[4\PZX54(P^)7CC)7}$EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*"
VISA_TEST_CARD = "4111 1111 1111 1111"

# --------------------------------------------------------------------------- messages


def crlf(text: str | bytes) -> bytes:
    """Text with bare LF line ends turned into CRLF."""
    data = text.encode("utf-8") if isinstance(text, str) else text
    return data.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")


def headers_block(
    subject: str = "Test message",
    extra: Iterable[tuple[str, str]] = (),
    *,
    mime: bool = True,
    sender: str = "Alice Example <alice@example.com>",
    to: str = "Bob Example <bob@example.org>",
    message_id: str = "<sample@example.com>",
) -> bytes:
    lines = [
        f"From: {sender}",
        f"To: {to}",
        f"Subject: {subject}",
        "Date: Mon, 01 Jan 2024 10:00:00 +0000",
        f"Message-ID: {message_id}",
    ]
    if mime:
        lines.append("MIME-Version: 1.0")
    lines.extend(f"{name}: {value}" for name, value in extra)
    return crlf("\n".join(lines) + "\n")


_DIGITS_TO_LETTERS = str.maketrans("0123456789", "ghijklmnop")


def message(
    subject: str = "hello",
    body: str | bytes = "Just a test.\r\n",
    *,
    sender: str = "Alice Example <alice@example.com>",
    to: str = "Bob Example <bob@example.org>",
    message_id: str | None = None,
    extra_headers: Iterable[tuple[str, str]] = (),
) -> bytes:
    """A plain (not MIME) message as a client submits it, for the door, pool and rule tests:
    the headers of `headers_block`, then `body` exactly as given, line ends included. Unless
    given, the Message-ID is made from the subject and body in letters only: the same message
    has the same id, and no run of digits in it can pass for a card number."""
    data = body.encode() if isinstance(body, str) else body
    if message_id is None:
        digest = hashlib.sha256(subject.encode() + b"\0" + data).hexdigest()[:24]
        message_id = f"<{digest.translate(_DIGITS_TO_LETTERS)}@example.com>"
    head = headers_block(
        subject, extra_headers, mime=False, sender=sender, to=to, message_id=message_id
    )
    return head + b"\r\n" + data


def text_message(
    body: str,
    *,
    subject: str = "Test message",
    content_type: str = "text/plain; charset=utf-8",
    encoding: str = "8bit",
    extra_headers: Iterable[tuple[str, str]] = (),
) -> bytes:
    """A single-part message; `encoding` is applied to the UTF-8 body (8bit, base64,
    quoted-printable)."""
    payload = encode_body(body.encode("utf-8"), encoding)
    head = headers_block(
        subject,
        [("Content-Type", content_type), ("Content-Transfer-Encoding", encoding), *extra_headers],
    )
    return head + b"\r\n" + payload


def encode_body(data: bytes, encoding: str) -> bytes:
    if encoding == "base64":
        return base64.encodebytes(data).replace(b"\n", b"\r\n")
    if encoding == "quoted-printable":
        return binascii.b2a_qp(data).replace(b"\n", b"\r\n")
    return crlf(data)


@dataclass
class MimePart:
    """One body part: raw header lines plus the already-encoded body."""

    headers: list[tuple[str, str]]
    body: bytes

    def to_bytes(self) -> bytes:
        head = "".join(f"{name}: {value}\r\n" for name, value in self.headers)
        return head.encode("utf-8", "surrogateescape") + b"\r\n" + self.body


def text_part(
    text: str,
    subtype: str = "plain",
    *,
    charset: str = "utf-8",
    encoding: str = "8bit",
    params: str = "",
) -> MimePart:
    """A text/<subtype> body part; the text is encoded in `charset`, then `encoding`."""
    data = text.encode(charset)
    return MimePart(
        [
            ("Content-Type", f"text/{subtype}; charset={charset}{params}"),
            ("Content-Transfer-Encoding", encoding),
        ],
        encode_body(data, encoding),
    )


def attachment_part(
    payload: bytes,
    filename: str,
    content_type: str = "application/octet-stream",
    *,
    disposition: str | None = None,
    name_param: str | None = None,
    encoding: str = "base64",
) -> MimePart:
    """An attachment. `disposition` overrides the Content-Disposition value (to test RFC
    2231/2047 names); `name_param` adds a Content-Type name= parameter verbatim."""
    ctype = content_type + (f"; name={name_param}" if name_param else "")
    cd = disposition if disposition is not None else f'attachment; filename="{filename}"'
    headers = [("Content-Type", ctype), ("Content-Transfer-Encoding", encoding)]
    if cd:
        headers.append(("Content-Disposition", cd))
    return MimePart(headers, encode_body(payload, encoding))


def message_part(inner: bytes, filename: str | None = "forwarded.eml") -> MimePart:
    """An attached message/rfc822 part wrapping the raw message `inner`."""
    headers = [("Content-Type", "message/rfc822")]
    if filename:
        headers.append(("Content-Disposition", f'attachment; filename="{filename}"'))
    return MimePart(headers, inner)


def multipart_body(parts: Iterable[MimePart | bytes], boundary: str) -> bytes:
    """The body of a multipart: each part (a MimePart or a raw nested multipart entity)."""
    chunks = []
    for part in parts:
        data = part.to_bytes() if isinstance(part, MimePart) else part
        chunks.append(b"--" + boundary.encode() + b"\r\n" + data.rstrip(b"\r\n") + b"\r\n")
    return b"".join(chunks) + b"--" + boundary.encode() + b"--\r\n"


def multipart_entity(
    parts: Iterable[MimePart | bytes], subtype: str = "alternative", boundary: str = "inner-b"
) -> bytes:
    """A nested multipart entity (headers and body) to put inside another multipart."""
    head = f'Content-Type: multipart/{subtype}; boundary="{boundary}"\r\n\r\n'.encode()
    return head + multipart_body(parts, boundary)


def mime_message(
    *parts: MimePart | bytes,
    subject: str = "Test message",
    subtype: str = "mixed",
    boundary: str = "outer-boundary-42",
    extra_headers: Iterable[tuple[str, str]] = (),
) -> bytes:
    """A multipart message with the given parts."""
    head = headers_block(
        subject,
        [("Content-Type", f'multipart/{subtype}; boundary="{boundary}"'), *extra_headers],
    )
    return head + b"\r\n" + multipart_body(parts, boundary)


def nested_messages(depth: int, body: str = "innermost", innermost: bytes | None = None) -> bytes:
    """A message with `depth` levels of attached message/rfc822, the innermost holding
    `body` as text/plain (or being `innermost`)."""
    msg = text_message(body, subject="level 0") if innermost is None else innermost
    for level in range(1, depth + 1):
        msg = mime_message(
            text_part(f"level {level} cover"),
            message_part(msg),
            subject=f"level {level}",
            boundary=f"level-{level}",
        )
    return msg


# --------------------------------------------------------------------------- zip archives


def tar_bytes(members: Mapping[str, bytes]) -> bytes:
    """A POSIX (ustar) tar of regular files."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.USTAR_FORMAT) as archive:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return out.getvalue()


def gzip_bytes(data: bytes, stored_name: str | None = None) -> bytes:
    """gzip of `data`; with `stored_name`, the header keeps that original name (FNAME)."""
    out = io.BytesIO()
    with gzip.GzipFile(filename=stored_name or "", fileobj=out, mode="wb", mtime=0) as stream:
        stream.write(data)
    return out.getvalue()


def bzip2_bytes(data: bytes) -> bytes:
    return bz2.compress(data)


def xz_bytes(data: bytes) -> bytes:
    return lzma.compress(data, format=lzma.FORMAT_XZ)


def zip_bytes(members: Mapping[str, bytes], compression: int = zipfile.ZIP_DEFLATED) -> bytes:
    """A plain zip of `members` (name -> content), byte for byte the same every time (a fixed
    timestamp), so rebuilt golden examples do not change."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression) as zf:
        for name, data in members.items():
            info = zipfile.ZipInfo(name, date_time=(2026, 1, 1, 0, 0, 0))
            info.external_attr = (0o40755 if name.endswith("/") else 0o100644) << 16
            zf.writestr(info, data, compress_type=compression)
    return buf.getvalue()


def nested_zip(names: list[str], leaf_name: str, leaf: bytes) -> bytes:
    """Zips inside zips: names[0] holds names[1] ... whose innermost zip holds `leaf_name`.
    Returns the outermost archive (named names[0] by the caller)."""
    data = zip_bytes({leaf_name: leaf})
    for name in reversed(names[1:]):
        data = zip_bytes({name: data})
    return data


@dataclass
class RawZipEntry:
    name: str
    data: bytes  # stored as-is (already "compressed"/"encrypted")
    method: int = 0
    flags: int = 0
    extra: bytes = b""
    file_size: int | None = None  # declared uncompressed size (defaults to len(data))
    crc: int | None = None


def raw_zip(entries: Iterable[RawZipEntry]) -> bytes:
    """A zip written field by field, for what zipfile cannot write: encryption flags, the
    AES method and extra field, lying sizes."""
    out = io.BytesIO()
    central = io.BytesIO()
    count = 0
    for entry in entries:
        name = entry.name.encode("utf-8")
        size = len(entry.data) if entry.file_size is None else entry.file_size
        crc = zlib.crc32(entry.data) if entry.crc is None else entry.crc
        offset = out.tell()
        out.write(
            struct.pack(
                "<IHHHHHIIIHH",
                0x04034B50,
                20,
                entry.flags | 0x800,
                entry.method,
                0,
                0x21,
                crc,
                len(entry.data),
                size,
                len(name),
                len(entry.extra),
            )
        )
        out.write(name + entry.extra + entry.data)
        central.write(
            struct.pack(
                "<IHHHHHHIIIHHHHHII",
                0x02014B50,
                20,
                20,
                entry.flags | 0x800,
                entry.method,
                0,
                0x21,
                crc,
                len(entry.data),
                size,
                len(name),
                len(entry.extra),
                0,
                0,
                0,
                0,
                offset,
            )
        )
        central.write(name + entry.extra)
        count += 1
    cd = central.getvalue()
    start = out.tell()
    out.write(cd)
    out.write(struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, count, count, len(cd), start, 0))
    return out.getvalue()


def zipcrypto_zip(members: Mapping[str, bytes], password: str | None = None) -> bytes:
    """A traditional (ZipCrypto) encrypted zip: flag bit 0 set, 12-byte encryption header
    and ciphertext: random bytes without a password (no scanner can read it), else the
    members stored and encrypted with it (PKWARE APPNOTE 6.1)."""
    if password is None:
        return raw_zip(
            RawZipEntry(name, os.urandom(12 + len(data)), flags=0x1, file_size=len(data))
            for name, data in members.items()
        )
    return raw_zip(
        RawZipEntry(
            name,
            _zipcrypto_encrypt(data, password.encode(), zlib.crc32(data) >> 24),
            flags=0x1,
            file_size=len(data),
            crc=zlib.crc32(data),
        )
        for name, data in members.items()
    )


def _zipcrypto_encrypt(data: bytes, password: bytes, check: int) -> bytes:
    keys = [0x12345678, 0x23456789, 0x34567890]

    def crc(value: int, byte: int) -> int:  # one byte of CRC-32 on the raw register
        return zlib.crc32(bytes([byte]), value ^ 0xFFFFFFFF) ^ 0xFFFFFFFF

    def update(byte: int) -> None:
        keys[0] = crc(keys[0], byte)
        keys[1] = ((keys[1] + (keys[0] & 0xFF)) * 134775813 + 1) & 0xFFFFFFFF
        keys[2] = crc(keys[2], keys[1] >> 24)

    for byte in password:
        update(byte)
    out = bytearray()
    for byte in os.urandom(11) + bytes([check]) + data:
        k = keys[2] | 2
        out.append(byte ^ (((k * (k ^ 1)) >> 8) & 0xFF))
        update(byte)
    return bytes(out)


def aes_zip(members: Mapping[str, bytes], password: str | None = None) -> bytes:
    """A WinZip AES-256 encrypted zip: method 99, extra field 0x9901 (AE-2, strength 3,
    real method deflate), salt + verifier + ciphertext + MAC as random bytes; with a
    password, the real thing, as pyzipper (like WinZip and 7-Zip) writes it."""
    if password is not None:
        out = io.BytesIO()
        with pyzipper.AESZipFile(
            out, "w", compression=pyzipper.ZIP_DEFLATED, encryption=pyzipper.WZ_AES
        ) as archive:
            archive.setpassword(password.encode())
            for name, data in members.items():
                archive.writestr(name, data)
        return out.getvalue()
    extra = struct.pack("<HHH2sBH", 0x9901, 7, 2, b"AE", 3, 8)
    return raw_zip(
        RawZipEntry(
            name,
            os.urandom(16 + 2 + len(data) + 10),
            method=99,
            flags=0x1,
            extra=extra,
            file_size=len(data),
            crc=0,
        )
        for name, data in members.items()
    )


def zip_bomb(uncompressed: int = 50 << 20, name: str = "zeros.bin") -> bytes:
    """One deflated member of `uncompressed` zero bytes (ratio ~1000:1)."""
    return zip_bytes({name: bytes(uncompressed)})


def lying_size_zip(real_size: int = 20 << 20, declared: int = 1000) -> bytes:
    """A bomb whose headers declare `declared` bytes while the deflate stream inflates to
    `real_size`: only a reader that trusts the stream (not the header) blows up."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
    data = compressor.compress(bytes(real_size)) + compressor.flush()
    return raw_zip([RawZipEntry("small.txt", data, method=8, file_size=declared, crc=0)])


# --------------------------------------------------------------------------- OOXML

_CONTENT_TYPES = (
    '<?xml version="1.0" encoding="UTF-8"?>'
    '<Types xmlns="http://schemas.openxmlformats.org/package/2006/content-types">'
    '<Default Extension="xml" ContentType="application/xml"/></Types>'
)
_W = 'xmlns:w="http://schemas.openxmlformats.org/wordprocessingml/2006/main"'
_S = 'xmlns="http://schemas.openxmlformats.org/spreadsheetml/2006/main"'


def _xml_escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def docx_bytes(paragraphs: Iterable[Iterable[str]], *, vba: bool = False) -> bytes:
    """A .docx whose paragraphs are given as lists of runs (Word splits text into runs at
    will: ["4111 11", "11 1111 1111"] must read as one number). With `vba`, it is a .docm
    carrying word/vbaProject.bin."""
    body = "".join(
        "<w:p>" + "".join(f"<w:r><w:t>{_xml_escape(r)}</w:t></w:r>" for r in runs) + "</w:p>"
        for runs in paragraphs
    )
    members = {
        "[Content_Types].xml": _CONTENT_TYPES.encode(),
        "word/document.xml": f"<w:document {_W}><w:body>{body}</w:body></w:document>".encode(),
    }
    if vba:
        members["word/vbaProject.bin"] = cfb_file({"VBA/dir": b"\x01" * 64, "PROJECT": b"x"})
    return zip_bytes(members)


def xlsx_bytes(
    shared: Iterable[str] = (),
    inline: Iterable[str] = (),
    numbers: Iterable[str] = (),
    *,
    vba: bool = False,
    macro_sheet: bool = False,
) -> bytes:
    """An .xlsx with shared strings, inline-string cells and numeric cells (one row each);
    `vba` adds xl/vbaProject.bin (.xlsm), `macro_sheet` an Excel 4 macro sheet."""
    shared = list(shared)
    sst = "".join(f"<si><t>{_xml_escape(s)}</t></si>" for s in shared)
    cells = [f'<c t="s"><v>{i}</v></c>' for i in range(len(shared))]
    cells += [f'<c t="inlineStr"><is><t>{_xml_escape(s)}</t></is></c>' for s in inline]
    cells += [f"<c><v>{n}</v></c>" for n in numbers]
    sheet = f'<worksheet {_S}><sheetData><row r="1">{"".join(cells)}</row></sheetData></worksheet>'
    members = {
        "[Content_Types].xml": _CONTENT_TYPES.encode(),
        "xl/workbook.xml": f"<workbook {_S}/>".encode(),
        "xl/sharedStrings.xml": f"<sst {_S}>{sst}</sst>".encode(),
        "xl/worksheets/sheet1.xml": sheet.encode(),
    }
    if vba:
        members["xl/vbaProject.bin"] = cfb_file({"VBA/dir": b"\x01" * 64, "PROJECT": b"x"})
    if macro_sheet:
        members["xl/macrosheets/sheet1.xml"] = f"<xm:macrosheet {_S}/>".encode()
    return zip_bytes(members)


# --------------------------------------------------------------------------- OLE (CFB)


def ole_doc_with_vba() -> bytes:
    """A Word 97 .doc (WordDocument stream) with a Macros/VBA storage: has macros."""
    return cfb_file(
        {"WordDocument": _word_fib(0), "Macros/VBA/dir": b"\x01" * 64, "Macros/PROJECT": b"x"}
    )


def ole_doc_plain() -> bytes:
    """A Word 97 .doc without macros or encryption."""
    return cfb_file({"WordDocument": _word_fib(0), "1Table": b"\x00" * 16})


def ole_doc_encrypted() -> bytes:
    """A Word 97 .doc whose FIB has fEncrypted set (password to open)."""
    return cfb_file({"WordDocument": _word_fib(0x0100), "1Table": b"\x00" * 16})


def _word_fib(flags: int) -> bytes:
    return struct.pack("<HHHHHH", 0xA5EC, 0xC1, 0, 0, 0, flags) + bytes(500)


def _biff(record: int, body: bytes) -> bytes:
    return struct.pack("<HH", record, len(body)) + body


def xls_bytes(*, macro_sheet: bool = False, encrypted: bool = False) -> bytes:
    """A BIFF8 .xls (Workbook stream): a worksheet, plus an Excel 4 macro sheet
    (BOUNDSHEET type 0x01) with `macro_sheet`, or a FILEPASS record with `encrypted`."""
    stream = _biff(0x0809, struct.pack("<HHHHII", 0x0600, 0x0005, 0, 0, 0, 0))
    if encrypted:
        stream += _biff(0x002F, b"\x01\x00" + bytes(52))
    stream += _biff(0x0085, struct.pack("<IBB", 0, 0, 0x00) + b"\x06\x00Sheet1")
    if macro_sheet:
        stream += _biff(0x0085, struct.pack("<IBB", 0, 1, 0x01) + b"\x06\x00Macro1")
    stream += _biff(0x000A, b"")
    return cfb_file({"Workbook": stream})


def password_docx(paragraphs: Iterable[Iterable[str]], password: str) -> bytes:
    """A .docx encrypted with `password` as Office does it (agile encryption, through
    msoffcrypto-tool). Padded past 4 KiB with a stored thumbnail's worth of random bytes:
    msoffcrypto writes a smaller package unreadably (into OLE's mini stream)."""
    source = zipfile.ZipFile(io.BytesIO(docx_bytes(paragraphs)))
    plain = io.BytesIO()
    with zipfile.ZipFile(plain, "w") as package:
        for info in source.infolist():
            package.writestr(info.filename, source.read(info))
        package.writestr("docProps/thumbnail.bin", os.urandom(5000), zipfile.ZIP_STORED)
    out = io.BytesIO()
    msoffcrypto.format.ooxml.OOXMLFile(io.BytesIO(plain.getvalue())).encrypt(password, out)
    return out.getvalue()


def encrypted_ooxml() -> bytes:
    """A password-protected .docx/.xlsx as Office writes it: an OLE file with
    EncryptionInfo and EncryptedPackage streams."""
    return cfb_file(
        {
            "EncryptionInfo": b"\x04\x00\x04\x00" + os.urandom(200),
            "EncryptedPackage": os.urandom(5000),
        }
    )


# --------------------------------------------------------------------------- executables


def pe_executable() -> bytes:
    """A minimal PE32 header (MZ stub, PE signature, COFF header for i386): enough for
    libmagic to say application/vnd.microsoft.portable-executable."""
    mz = bytearray(b"MZ" + bytes(0x3A) + struct.pack("<I", 0x80))
    mz = mz.ljust(0x80, b"\x00")
    coff = struct.pack("<4sHHIIIHH", b"PE\x00\x00", 0x14C, 1, 0, 0, 0, 0xE0, 0x0102)
    optional = struct.pack("<HBB", 0x10B, 14, 0).ljust(0xE0, b"\x00")
    return bytes(mz) + coff + optional + bytes(512)


def elf_executable() -> bytes:
    """A minimal 64-bit little-endian ELF executable header (x86-64)."""
    ident = b"\x7fELF" + bytes([2, 1, 1, 0]) + bytes(8)
    header = ident + struct.pack(
        "<HHIQQQIHHHHHH", 2, 0x3E, 1, 0x401000, 64, 0, 0, 64, 56, 1, 64, 0, 0
    )
    return header + bytes(256)


# --------------------------------------------------------------------------- rar and 7z


def _rar4_block(head_type: int, flags: int, body: bytes) -> bytes:
    size = 7 + len(body)
    rest = struct.pack("<BHH", head_type, flags, size) + body
    return struct.pack("<H", zlib.crc32(rest) & 0xFFFF) + rest


def rar4_bytes(members: Mapping[str, bytes], *, encrypted: bool = False) -> bytes:
    """A RAR 4 archive with stored (uncompressed) members. With `encrypted` each file
    header carries the password flag (names stay readable; content is random bytes)."""
    out = b"Rar!\x1a\x07\x00" + _rar4_block(0x73, 0, bytes(6))
    for name, data in members.items():
        stored = os.urandom(len(data) + 16) if encrypted else data
        encoded = name.encode("ascii")
        file_header = (
            struct.pack(
                "<IIBIIBBHI",
                len(stored),
                len(data),
                2,
                zlib.crc32(data),
                0x5A210000,
                29,
                0x30,
                len(encoded),
                0x20,
            )
            + encoded
        )
        flags = 0x8000 | (0x0004 if encrypted else 0)
        out += _rar4_block(0x74, flags, file_header) + stored
    return out + _rar4_block(0x7B, 0x4000, b"")


def rar4_header_encrypted() -> bytes:
    """A RAR 4 archive whose headers are encrypted (`rar -hp`): no names are readable."""
    return b"Rar!\x1a\x07\x00" + _rar4_block(0x73, 0x0080, bytes(6)) + os.urandom(64)


def sevenzip_bytes(
    members: Mapping[str, bytes], *, password: str | None = None, header_encryption: bool = False
) -> bytes:
    """A 7z archive (py7zr), optionally AES-encrypted and with encrypted headers."""
    buf = io.BytesIO()
    with py7zr.SevenZipFile(
        buf, "w", password=password, header_encryption=header_encryption
    ) as archive:
        for name, data in members.items():
            archive.writestr(data, name)
    return buf.getvalue()


def odt_bytes(paragraphs: Iterable[str]) -> bytes:
    """An OpenDocument text (LibreOffice's .odt): a zip with mimetype and content.xml, one
    <text:p> per item, each item's markup as given (spans and all)."""
    body = "".join(f"<text:p>{paragraph}</text:p>" for paragraph in paragraphs)
    content = (
        '<?xml version="1.0" encoding="UTF-8"?><office:document-content'
        ' xmlns:office="urn:oasis:names:tc:opendocument:xmlns:office:1.0"'
        ' xmlns:text="urn:oasis:names:tc:opendocument:xmlns:text:1.0">'
        f"<office:body><office:text>{body}</office:text></office:body></office:document-content>"
    )
    return zip_bytes(
        {
            "mimetype": b"application/vnd.oasis.opendocument.text",
            "content.xml": content.encode(),
            "META-INF/manifest.xml": b"<manifest:manifest/>",
        }
    )

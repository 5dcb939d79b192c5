"""PDFs built byte by byte for tests, examples and benches: pages of text, compressed or
encrypted (standard security handler, RC4), with a correct xref table."""

from __future__ import annotations

import hashlib
import struct
import zlib

# Standard security handler padding (PDF 1.7, 7.6.3.3, Algorithm 2 step a).
_PAD = bytes.fromhex("28BF4E5E4E758A4164004E56FFFA01082E2E00B6D0683E802F0CA9FE6453697A")
_FILE_ID = hashlib.md5(b"mailgate test").digest()


def show(text: str) -> bytes:
    """A content stream showing `text` in one Tj at the top left."""
    return b"BT /F1 12 Tf 72 720 Td (" + text.encode("latin-1") + b") Tj ET"


def build_pdf(objs: dict[int, bytes], trailer: bytes = b"") -> bytes:
    """A PDF of numbered objects (1 is the catalog) with a correct xref table."""
    out = bytearray(b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n")
    offsets = []
    for num in sorted(objs):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % num + objs[num] + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objs) + 1)
    for offset in offsets:
        out += b"%010d 00000 n \n" % offset
    out += b"trailer\n<< /Size %d /Root 1 0 R%s >>\n" % (len(objs) + 1, trailer)
    out += b"startxref\n%d\n%%%%EOF\n" % xref
    return bytes(out)


def page_objects(
    contents: list[bytes], compress: bool = False, key: bytes | None = None
) -> dict[int, bytes]:
    """Catalog, page tree, Helvetica and one page per content stream (RC4 under `key`)."""
    kids = b" ".join(b"%d 0 R" % (4 + 2 * i) for i in range(len(contents)))
    objs = {
        1: b"<< /Type /Catalog /Pages 2 0 R >>",
        2: b"<< /Type /Pages /Kids [" + kids + b"] /Count %d >>" % len(contents),
        3: b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
    }
    for i, content in enumerate(contents):
        page, stream = 4 + 2 * i, 5 + 2 * i
        objs[page] = (
            b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792]"
            b" /Resources << /Font << /F1 3 0 R >> >> /Contents %d 0 R >>" % stream
        )
        data = zlib.compress(content) if compress else content
        if key is not None:
            data = rc4(object_key(key, stream), data)
        flate = b" /Filter /FlateDecode" if compress else b""
        objs[stream] = b"<< /Length %d%s >>\nstream\n" % (len(data), flate) + data + b"\nendstream"
    return objs


def make_pdf(contents: list[bytes], compress: bool = False) -> bytes:
    return build_pdf(page_objects(contents, compress))


def rc4(key: bytes, data: bytes) -> bytes:
    s = list(range(256))
    j = 0
    for i in range(256):
        j = (j + s[i] + key[i % len(key)]) & 0xFF
        s[i], s[j] = s[j], s[i]
    out = bytearray()
    i = j = 0
    for byte in data:
        i = (i + 1) & 0xFF
        j = (j + s[i]) & 0xFF
        s[i], s[j] = s[j], s[i]
        out.append(byte ^ s[(s[i] + s[j]) & 0xFF])
    return bytes(out)


def object_key(key: bytes, num: int, gen: int = 0) -> bytes:
    """Algorithm 1: the per-object RC4 key."""
    salt = struct.pack("<i", num)[:3] + struct.pack("<h", gen)
    return hashlib.md5(key + salt).digest()[: min(len(key) + 5, 16)]


def make_encrypted_pdf(
    contents: list[bytes], user: bytes = b"secret", owner: bytes = b"owner"
) -> bytes:
    """Standard security handler V1 R2 (40-bit RC4): a user password opens it, so does owner."""
    perms = -44  # no printing, no copying: what the owner password protects
    padded_user = (user + _PAD)[:32]
    o_entry = rc4(hashlib.md5((owner + _PAD)[:32]).digest()[:5], padded_user)  # Algorithm 3
    file_key = hashlib.md5(  # Algorithm 2
        padded_user + o_entry + struct.pack("<i", perms) + _FILE_ID
    ).digest()[:5]
    u_entry = rc4(file_key, _PAD)  # Algorithm 4
    objs = page_objects(contents, key=file_key)
    encrypt = len(objs) + 1
    objs[encrypt] = b"<< /Filter /Standard /V 1 /R 2 /O <%s> /U <%s> /P %d >>" % (
        o_entry.hex().encode(),
        u_entry.hex().encode(),
        perms,
    )
    file_id = _FILE_ID.hex().encode()
    return build_pdf(objs, b" /Encrypt %d 0 R /ID [<%s> <%s>]" % (encrypt, file_id, file_id))


def pdf_with_blob(text: str, blob: bytes) -> bytes:
    """One page showing `text`, plus an unreferenced binary stream (an image's worth of
    bytes that a reader never draws), for realistic sizes."""
    objs = page_objects([show(text)])
    objs[len(objs) + 1] = b"<< /Length %d >>\nstream\n" % len(blob) + blob + b"\nendstream"
    return build_pdf(objs)


def _literal(text: str) -> bytes:
    """A PDF text string: UTF-16BE with a byte-order mark, as hex (any character fits)."""
    return b"<FEFF" + text.encode("utf-16-be").hex().upper().encode() + b">"


def pdf_with_extras(
    text: str,
    *,
    files: dict[str, bytes] | None = None,
    note: str | None = None,
    info: dict[str, str] | None = None,
) -> bytes:
    """One page showing `text`, with embedded files (the EmbeddedFiles name tree), a comment
    note on the page (a /Text annotation) and document properties (the /Info dictionary)."""
    objs = page_objects([show(text)])
    names = []
    for name, data in (files or {}).items():
        stream, spec = len(objs) + 1, len(objs) + 2
        objs[stream] = b"<< /Type /EmbeddedFile /Length %d >>\nstream\n" % len(data) + data
        objs[stream] += b"\nendstream"
        objs[spec] = b"<< /Type /Filespec /F %s /UF %s /EF << /F %d 0 R >> >>" % (
            _literal(name),
            _literal(name),
            stream,
        )
        names.append(_literal(name) + b" %d 0 R" % spec)
    if names:
        objs[1] = b"<< /Type /Catalog /Pages 2 0 R /Names << /EmbeddedFiles << /Names ["
        objs[1] += b" ".join(names) + b"] >> >> >>"
    if note is not None:
        annot = len(objs) + 1
        objs[annot] = b"<< /Type /Annot /Subtype /Text /Rect [72 600 92 620] /Contents %s >>" % (
            _literal(note)
        )
        objs[4] = objs[4].removesuffix(b">>") + b"/Annots [%d 0 R] >>" % annot  # the page
    trailer = b""
    if info:
        entries = b" ".join(b"/%s %s" % (k.encode(), _literal(v)) for k, v in info.items())
        objs[len(objs) + 1] = b"<< " + entries + b" >>"
        trailer = b" /Info %d 0 R" % len(objs)
    return build_pdf(objs, trailer)

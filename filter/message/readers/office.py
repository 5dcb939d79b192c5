"""Office documents: macros, encryption and text, for OOXML (zip) and OLE (CFB) files; a
password-protected one decrypted (msoffcrypto-tool) with a password found in the message."""

from __future__ import annotations

import html
import io
import re
import struct
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass, field

import msoffcrypto
import olefile

from mailgate.filter.message.budget import ScanBudget
from mailgate.filter.message.readers import outlook
from mailgate.filter.message.readers.archives import read_zip_member

OLE_SIGNATURE = b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1"
_VBA_STORAGES = frozenset({"macros", "_vba_project_cur", "vba"})
# Parts whose text a reader sees: Word body, headers, footers, notes and comments; Excel
# shared strings and sheets (inline strings, values); PowerPoint slides and notes.
_OOXML_TEXT_PARTS = re.compile(
    r"^(word/(document|header\d*|footer\d*|footnotes|endnotes|comments)\.xml"
    r"|xl/sharedStrings\.xml|xl/worksheets/sheet\d+\.xml"
    r"|ppt/(slides/slide|notesSlides/notesSlide)\d+\.xml)$",
    re.IGNORECASE,
)
# Text runs (<w:t>, <t>, <a:t>) and inline cell values (<v>); a run closes with `</w:t>`.
_XML_TEXT = re.compile(r"<(?:[a-z]+:)?(t|v)(?:\s[^<>]*)?>([^<]*)</(?:[a-z]+:)?\1>")
# Paragraph, row, shared-string and cell ends become separators, so runs inside one
# paragraph join up (Word splits "4111 1111" into runs at will) but cells do not.
_XML_BREAK = re.compile(r"</(?:[a-z]+:)?(p|row|si|c|tr|tc)>|<(?:[a-z]+:)?(?:tab|br)\b[^<>]*/>")
# A shared-string cell holds an index into sharedStrings.xml, not a value.
_SHARED_STRING_CELL = re.compile(r'<c\b[^<>]*\bt="s"[^<>]*>\s*<v>[^<]*</v>')
_BIFF_BOF = 0x0809
_BIFF_EOF = 0x000A
_BIFF_FILEPASS = 0x002F
_BIFF_BOUNDSHEET = 0x0085
_BIFF_MACRO_SHEET = 0x01
_BIFF_SCAN_BYTES = 1 << 20
_WORD_ENCRYPTED = 0x0100
_WORD_OBFUSCATED = 0x8000


@dataclass
class OfficeFacts:
    macros: bool = False
    encrypted: bool = False
    text: str | None = None
    outlook_message: bool = False  # an OLE file that is a saved Outlook item (.msg)
    unscannable: set[str] = field(default_factory=set)


def is_ooxml(names: list[str]) -> bool:
    return "[Content_Types].xml" in names and any(
        n.startswith(("word/", "xl/", "ppt/")) for n in names
    )


def _xml_text(xml: str) -> str:
    xml = _SHARED_STRING_CELL.sub("", xml)
    xml = _XML_BREAK.sub("\x00", xml)
    pieces: list[str] = []
    pos = 0
    for m in _XML_TEXT.finditer(xml):
        if "\x00" in xml[pos : m.start()]:
            pieces.append("\n")
        pieces.append(m.group(2))
        pos = m.end()
    return html.unescape("".join(pieces))


def ooxml_facts(zf: zipfile.ZipFile, budget: ScanBudget) -> OfficeFacts:
    """Macros (vbaProject.bin, Excel 4 macro sheets) and the document text."""
    facts = OfficeFacts()
    texts: list[str] = []
    for info in zf.infolist():
        name = info.filename
        lowered = name.lower()
        if lowered.endswith("vbaproject.bin") or lowered.startswith("xl/macrosheets/"):
            facts.macros = True
        if _OOXML_TEXT_PARTS.match(name):
            member = read_zip_member(zf, info, budget)
            facts.unscannable |= member.unscannable
            if member.payload:
                texts.append(_xml_text(member.payload.decode("utf-8", "replace")))
    facts.text = "\n".join(t for t in texts if t) if texts else None
    return facts


def _biff_facts(stream: bytes, facts: OfficeFacts) -> None:
    """Walk the workbook globals of a BIFF8 stream: FILEPASS means encrypted, a
    BOUNDSHEET of type 1 is an Excel 4 (XLM) macro sheet."""
    pos = 0
    end = min(len(stream), _BIFF_SCAN_BYTES)
    while pos + 4 <= end:
        record, length = struct.unpack_from("<HH", stream, pos)
        body = stream[pos + 4 : pos + 4 + length]
        if record == _BIFF_FILEPASS:
            facts.encrypted = True
        elif record == _BIFF_BOUNDSHEET and len(body) >= 6 and body[5] == _BIFF_MACRO_SHEET:
            facts.macros = True
        elif record == _BIFF_EOF or (pos and record == _BIFF_BOF):
            return
        pos += 4 + length


def ole_facts(data: bytes) -> OfficeFacts:
    """VBA storages, Excel 4 macro sheets, and encryption (an encrypted OOXML package,
    a password-protected .xls or .doc) in an OLE compound file."""
    facts = OfficeFacts()
    try:
        with olefile.OleFileIO(io.BytesIO(data)) as ole:
            entries = ole.listdir(streams=True, storages=True)
            facts.outlook_message = outlook.is_msg(ole)
            for path in entries:
                lowered = [p.lower() for p in path]
                if _VBA_STORAGES.intersection(lowered):
                    facts.macros = True
                if lowered == ["encryptedpackage"]:
                    facts.encrypted = True
            if ole.exists("Workbook") or ole.exists("Book"):
                name = "Workbook" if ole.exists("Workbook") else "Book"
                with ole.openstream(name) as stream:
                    _biff_facts(stream.read(_BIFF_SCAN_BYTES), facts)
            if ole.exists("WordDocument"):
                with ole.openstream("WordDocument") as stream:
                    fib = stream.read(12)
                if len(fib) >= 12:
                    (flags,) = struct.unpack_from("<H", fib, 10)
                    facts.encrypted |= bool(flags & (_WORD_ENCRYPTED | _WORD_OBFUSCATED))
    except Exception:  # olefile raises a wide variety on damaged files
        facts.unscannable.add("malformed")
    return facts


# Office derives an agile-encrypted document's key with 100,000 rounds of SHA-512 (0.2 s a
# try, in Python); the file says how many, so a crafted one could ask for a billion.
MAX_SPIN_COUNT = 100_000


def unlock_office(data: bytes, passwords: Sequence[str], budget: ScanBudget) -> bytes | None:
    """The document decrypted with the first password that opens it (an OOXML package, or
    the OLE file of a .doc, .xls or .ppt); None when none does or the file asks for more
    key rounds than Office writes (then `budget.unlock_cut_short` is set)."""
    try:
        document = msoffcrypto.OfficeFile(io.BytesIO(data))
        spin = document.info.get("spinValue", 0) if isinstance(document.info, dict) else 0
    except Exception:  # msoffcrypto raises a wide variety on damaged or unknown files
        return None
    if not isinstance(spin, int) or spin > MAX_SPIN_COUNT:
        budget.unlock_cut_short = True
        return None

    def opens(password: str) -> bytes | None:
        # The old formats check the password in load_key; an OOXML package is checked by
        # decrypt, which refuses output that is not a zip.
        try:
            document.load_key(password=password)
            out = io.BytesIO()
            document.decrypt(out)
        except Exception:  # InvalidKeyError, or garbage a wrong key made
            return None
        return out.getvalue()

    decrypted = budget.first_to_open(passwords, opens)
    if decrypted is not None:
        budget.charge_bytes(len(decrypted))
    return decrypted

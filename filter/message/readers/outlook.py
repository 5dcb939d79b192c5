"""Outlook .msg files ([MS-OXMSG]): subject, people, body and attachments of a saved message,
so that DLP reads a forwarded .msg like any other attachment.

A .msg is an OLE compound file with one MAPI object per storage. Fixed-size properties sit
in the storage's `__properties_version1.0` stream, 16 bytes each; every string or binary
property is a stream of its own, `__substg1.0_IIIITTTT` (property id and type in hex).
Recipients and attachments are sub-storages of the same shape, and an attached message is
a sub-storage of its attachment.
"""

from __future__ import annotations

import io
import re
import struct
from dataclasses import dataclass, field

import olefile
from olefile.olefile import OleDirectoryEntry

from mailgate.filter.message.budget import ScanBudget
from mailgate.filter.message.charsets import codepage_charset, decode_bytes
from mailgate.filter.message.html import html_to_text
from mailgate.filter.message.readers.archives import Member
from mailgate.filter.message.rtf import rtf_to_text
from mailgate.filter.message.textview import clean_text

PROPERTIES_STREAM = "__properties_version1.0"
SUBSTG_PREFIX = "__substg1.0_"
RECIPIENT_PREFIX = "__recip_version1.0_#"
ATTACHMENT_PREFIX = "__attach_version1.0_#"
# Messages attached to messages are read to this depth; deeper ones are listed as too deep.
MAX_EMBEDDED_DEPTH = 3
EMBEDDED_MARKER = "--- attached message ---"

# What olefile raises on damaged files (found by fuzzing: OleFileError is an OSError, a
# huge sector shift overflows, its recursive directory walk can overflow the stack).
_OLE_ERRORS = (OSError, ValueError, OverflowError, IndexError, struct.error, RecursionError)
_Path = tuple[str, ...]
# Size of the header before the property entries ([MS-OXMSG] 2.4.1): top-level message,
# message embedded in an attachment, recipient or attachment.
_TOP_HEADER, _EMBEDDED_HEADER, _CHILD_HEADER = 32, 24, 8
_ENTRY = struct.Struct("<HHI4s4x")  # type, id, flags, value (a PT_LONG uses 4 of its 8 bytes)

_PT_LONG = 0x0003
# The other types only appear in stream names, as lower-case hex.
_PT_OBJECT = "000d"
_PT_STRING8 = "001e"
_PT_UNICODE = "001f"
_PT_BINARY = "0102"

_MESSAGE_CLASS = 0x001A
_SUBJECT = 0x0037
_SENT_REPRESENTING_NAME = 0x0042
_SENT_REPRESENTING_EMAIL = 0x0065
_RECIPIENT_TYPE = 0x0C15
_SENDER_NAME = 0x0C1A
_SENDER_EMAIL = 0x0C1F
_DISPLAY_BCC, _DISPLAY_CC, _DISPLAY_TO = 0x0E02, 0x0E03, 0x0E04
_BODY, _RTF_COMPRESSED, _HTML, _NATIVE_BODY = 0x1000, 0x1009, 0x1013, 0x1016
_DISPLAY_NAME = 0x3001
_EMAIL_ADDRESS = 0x3003
_ATTACH_DATA = 0x3701
_ATTACH_FILENAME, _ATTACH_METHOD, _ATTACH_LONG_FILENAME = 0x3704, 0x3705, 0x3707
_SMTP_ADDRESS = 0x39FE
_INTERNET_CPID, _MESSAGE_CODEPAGE = 0x3FDE, 0x3FFD
_SENDER_SMTP, _SENT_REPRESENTING_SMTP = 0x5D01, 0x5D02
_ATTACH_OLE = 6  # PR_ATTACH_METHOD: the 0x3701 storage is an OLE object, not a message
_NATIVE_PLAIN, _NATIVE_RTF, _NATIVE_HTML = 1, 2, 3
_RECIPIENT_LABELS = {1: "To", 2: "Cc", 3: "Bcc"}
_WORD = re.compile(r"\w+")

# [MS-OXRTFCP]: the ring buffer starts with these 207 bytes, so early tokens can refer to them.
_RTF_DICTIONARY = (
    b"{\\rtf1\\ansi\\mac\\deff0\\deftab720{\\fonttbl;}{\\f0\\fnil \\froman \\fswiss \\fmodern "
    b"\\fscript \\fdecor MS Sans SerifSymbolArialTimes New RomanCourier"
    b"{\\colortbl\\red0\\green0\\blue0\r\n\\par \\pard\\plain\\f0\\fs20\\b\\i\\u\\tab\\tx"
)


@dataclass
class MsgFacts:
    """What a .msg holds: `text` is the header lines and body of the message and of the
    messages attached to it; `attachments` are the files, by value."""

    text: str | None = None
    attachments: list[Member] = field(default_factory=list)
    encrypted: bool = False
    unscannable: set[str] = field(default_factory=set)


def is_msg(ole: olefile.OleFileIO) -> bool:
    """An Outlook item: a property stream and property value streams at the root."""
    names = {p[0].lower() for p in ole.listdir(streams=True, storages=False) if len(p) == 1}
    return PROPERTIES_STREAM in names and any(n.startswith(SUBSTG_PREFIX) for n in names)


def msg_facts(data: bytes, budget: ScanBudget, max_members: int) -> MsgFacts:
    """Read a .msg under the budget. Never raises: damage makes it "malformed", keeping the
    attachments read before it."""
    facts = MsgFacts()
    try:
        with olefile.OleFileIO(io.BytesIO(data)) as ole:
            if not is_msg(ole):
                facts.unscannable.add("malformed")
                return facts
            text = _Reader(ole, budget, max_members, facts).message((), _TOP_HEADER, 0, "")
            facts.text = clean_text(text).strip() or None
    except _OLE_ERRORS:
        facts.unscannable.add("malformed")
    return facts


def _unicode(raw: bytes) -> str:
    return raw[: len(raw) & ~1].decode("utf-16-le", "replace").rstrip("\x00")


def _person(name: str | None, address: str | None) -> str | None:
    if name and address and name != address:
        return f"{name} <{address}>"
    return name or address


def _protected(message_class: str) -> bool:
    """S/MIME encrypted or opaque-signed (the content is inside CMS either way; the
    clear-signed variant keeps it readable in its attachment), or rights-managed (IRM)."""
    lowered = message_class.lower()
    if ".rpmsg" in lowered:
        return True
    return lowered.startswith("ipm.note.smime") and not lowered.startswith(
        "ipm.note.smime.multipartsigned"
    )


def _ole10native(data: bytes) -> bytes | None:
    """The file in an OLE Packager object: size, flags, label, path, flags, command, then
    the length-prefixed file data ([MS-OLEDS] 2.3.6 leaves the payload to the Packager)."""
    label_end = data.find(b"\x00", 6)
    path_end = data.find(b"\x00", label_end + 1)
    if label_end < 0 or path_end < 0:
        return None
    pos = path_end + 1 + 4
    try:
        (command_len,) = struct.unpack_from("<I", data, pos)
        pos += 4 + command_len
        (size,) = struct.unpack_from("<I", data, pos)
    except struct.error:
        return None
    payload = data[pos + 4 : pos + 4 + size]
    return payload if len(payload) == size else None


def decompress_rtf(data: bytes) -> bytes | None:
    """The RTF in a PR_RTF_COMPRESSED value ([MS-OXRTFCP]), at most its declared size: LZ77
    over a 4 KB ring buffer primed with RTF words. None when the header names no known
    format. The CRC is not checked: a damaged body is still worth scanning."""
    if len(data) < 16:
        return None
    raw_size, kind = struct.unpack_from("<4xI4s", data)
    if kind == b"MELA":  # stored uncompressed
        return data[16 : 16 + raw_size]
    if kind != b"LZFu":
        return None
    ring = bytearray(4096)
    ring[: len(_RTF_DICTIONARY)] = _RTF_DICTIONARY
    write = len(_RTF_DICTIONARY)
    out = bytearray()
    pos, end = 16, len(data)
    while pos < end and len(out) < raw_size:
        control = data[pos]
        pos += 1
        for bit in range(8):
            if not control >> bit & 1:
                if pos >= end:
                    return bytes(out[:raw_size])
                ring[write] = data[pos]
                write = (write + 1) & 0xFFF
                out.append(data[pos])
                pos += 1
                continue
            if pos + 2 > end:
                return bytes(out[:raw_size])
            offset = data[pos] << 4 | data[pos + 1] >> 4
            length = (data[pos + 1] & 0xF) + 2
            pos += 2
            if offset == write:  # the end marker
                return bytes(out[:raw_size])
            # Byte by byte: a reference may overlap the bytes it is producing.
            for i in range(length):
                byte = ring[(offset + i) & 0xFFF]
                ring[write] = byte
                write = (write + 1) & 0xFFF
                out.append(byte)
    return bytes(out[:raw_size])


class _Reader:
    """Walks one .msg: every stream read is checked against and charged to the budget."""

    def __init__(
        self, ole: olefile.OleFileIO, budget: ScanBudget, max_members: int, facts: MsgFacts
    ) -> None:
        self.ole = ole
        self.budget = budget
        self.max_members = max_members
        self.facts = facts
        # Stream entries by lower-cased path (olefile matches names case-insensitively, and
        # writers differ in hex digit case) and each storage's children, from one walk.
        self.streams: dict[_Path, OleDirectoryEntry] = {}
        self.children: dict[_Path, set[str]] = {}
        pending: list[tuple[_Path, OleDirectoryEntry]] = [((), ole.root)]
        while pending:
            path, storage = pending.pop()
            for kid in storage.kids:
                key = (*path, kid.name.lower())
                if kid.entry_type == olefile.STGTY_STREAM:
                    self.streams[key] = kid
                elif kid.entry_type == olefile.STGTY_STORAGE:
                    pending.append((key, kid))
                else:
                    continue
                self.children.setdefault(path, set()).add(key[-1])

    def read(self, path: _Path, marks: set[str] | None = None) -> bytes | None:
        """A stream's bytes, or None when it is absent or bigger than what the budget has
        left; reasons go to `marks` (the message's, by default)."""
        entry = self.streams.get(path)
        if entry is None:
            return None
        marks = self.facts.unscannable if marks is None else marks
        if entry.size > self.budget.bytes_left:
            marks.add("over_budget")
            return None
        # Not openstream(): it finds a path by a linear scan of each storage on the way, which
        # makes a message with thousands of recipients or attachments quadratic.
        with self.ole._open(entry.isectStart, entry.size) as stream:
            data = stream.read()
        self.budget.charge_bytes(len(data))
        if len(data) != entry.size:  # olefile reads a truncated file short instead of raising
            marks.add("malformed")
            self.facts.unscannable.add("malformed")
        return data

    def longs(self, storage: _Path, header: int) -> dict[int, int]:
        """The PT_LONG properties of a storage, by property id."""
        data = self.read((*storage, PROPERTIES_STREAM)) or b""
        entries = data[header : header + (len(data) - header) // 16 * 16]
        return {
            prop: int.from_bytes(value, "little")
            for kind, prop, _flags, value in _ENTRY.iter_unpack(entries)
            if kind == _PT_LONG
        }

    def value(self, storage: _Path, prop: int, kind: str) -> bytes | None:
        return self.read((*storage, f"{SUBSTG_PREFIX}{prop:04x}{kind}"))

    def string(self, storage: _Path, prop: int, charset: str) -> str | None:
        """A string property, Unicode or 8-bit in the message's code page."""
        raw = self.value(storage, prop, _PT_UNICODE)
        if raw is not None:
            return _unicode(raw)
        raw = self.value(storage, prop, _PT_STRING8)
        return None if raw is None else decode_bytes(raw, charset).rstrip("\x00")

    def names(self, storage: _Path, prefix: str) -> list[str]:
        return sorted(n for n in self.children.get(storage, ()) if n.startswith(prefix))

    def message(self, storage: _Path, header: int, depth: int, prefix: str) -> str:
        """Header lines and body of the message in `storage`, then those of the messages
        attached to it; its files join the facts' attachments, named below `prefix`."""
        longs = self.longs(storage, header)
        charset = codepage_charset(longs.get(_MESSAGE_CODEPAGE))
        if _protected(self.string(storage, _MESSAGE_CLASS, charset) or ""):
            self.facts.encrypted = True
        lines = []
        subject = self.string(storage, _SUBJECT, charset)
        if subject:
            lines.append(f"Subject: {subject}")
        sender = _person(
            self.string(storage, _SENDER_NAME, charset)
            or self.string(storage, _SENT_REPRESENTING_NAME, charset),
            self.string(storage, _SENDER_SMTP, charset)
            or self.string(storage, _SENDER_EMAIL, charset)
            or self.string(storage, _SENT_REPRESENTING_SMTP, charset)
            or self.string(storage, _SENT_REPRESENTING_EMAIL, charset),
        )
        if sender:
            lines.append(f"From: {sender}")
        lines += self.recipients(storage, charset)
        pieces = ["\n".join(lines), self.body(storage, longs, charset)]
        for name in self.names(storage, ATTACHMENT_PREFIX):
            if len(self.facts.attachments) >= self.max_members:
                self.facts.unscannable.add("over_budget")
                break
            embedded = self.attachment((*storage, name), charset, depth, prefix)
            if embedded is not None:
                pieces.append(f"{EMBEDDED_MARKER}\n{embedded}")
        return "\n\n".join(p for p in pieces if p)

    def recipients(self, storage: _Path, charset: str) -> list[str]:
        """To, Cc and Bcc lines from the recipient storages, else from the display lists."""
        people: dict[int, list[str]] = {kind: [] for kind in _RECIPIENT_LABELS}
        for name in self.names(storage, RECIPIENT_PREFIX):
            path = (*storage, name)
            kind = self.longs(path, _CHILD_HEADER).get(_RECIPIENT_TYPE, 1) & 0xF
            person = _person(
                self.string(path, _DISPLAY_NAME, charset),
                self.string(path, _SMTP_ADDRESS, charset)
                or self.string(path, _EMAIL_ADDRESS, charset),
            )
            if person:
                people.setdefault(kind, []).append(person)
        displays = {1: _DISPLAY_TO, 2: _DISPLAY_CC, 3: _DISPLAY_BCC}
        lines = []
        for kind, label in _RECIPIENT_LABELS.items():
            listed = "; ".join(people[kind]) or self.string(storage, displays[kind], charset)
            if listed:
                lines.append(f"{label}: {listed}")
        return lines

    def body(self, storage: _Path, longs: dict[int, int], charset: str) -> str:
        """The body Outlook shows (PR_NATIVE_BODY_INFO) when present, else the plain text,
        HTML or RTF body, in that order; then every other body with words the ones before
        lack. A crafted item can pair a harmless plain body with an HTML one holding the
        data, and which one a reader sees is up to the client; bodies that agree (Outlook
        saves the same text in two or three forms) are read once, so nothing counts twice."""
        readers = {
            _NATIVE_PLAIN: lambda: self.string(storage, _BODY, charset),
            _NATIVE_HTML: lambda: self.html(storage, longs, charset),
            _NATIVE_RTF: lambda: self.rtf(storage),
        }
        native = longs.get(_NATIVE_BODY)
        first = [native] if native in readers else []
        bodies: list[str] = []
        words: set[str] = set()
        for kind in [*first, *(k for k in readers if k != native)]:
            text = readers[kind]()
            if text is None:
                continue
            found = set(_WORD.findall(text.lower()))
            if bodies and found <= words:
                continue
            bodies.append(text)
            words |= found
        return "\n\n".join(bodies)

    def html(self, storage: _Path, longs: dict[int, int], charset: str) -> str | None:
        raw = self.value(storage, _HTML, _PT_BINARY)
        if raw is not None:
            # Binary HTML is in the Internet code page Outlook records beside it.
            cpid = longs.get(_INTERNET_CPID) or longs.get(_MESSAGE_CODEPAGE)
            return html_to_text(decode_bytes(raw, codepage_charset(cpid)))
        source = self.string(storage, _HTML, charset)
        return None if source is None else html_to_text(source)

    def rtf(self, storage: _Path) -> str | None:
        data = self.value(storage, _RTF_COMPRESSED, _PT_BINARY)
        if data is None:
            return None
        declared = struct.unpack_from("<I", data, 4)[0] if len(data) >= 8 else 0
        if declared > self.budget.bytes_left:
            self.facts.unscannable.add("over_budget")
            return None
        rtf = decompress_rtf(data)
        if rtf is None:
            self.facts.unscannable.add("malformed")
            return None
        self.budget.charge_bytes(len(rtf))
        return rtf_to_text(rtf)

    def attachment(self, path: _Path, charset: str, depth: int, prefix: str) -> str | None:
        """Add one attachment to the facts; the text of an attached message, if it is one."""
        longs = self.longs(path, _CHILD_HEADER)
        name = (
            self.string(path, _ATTACH_LONG_FILENAME, charset)
            or self.string(path, _ATTACH_FILENAME, charset)
            or self.string(path, _DISPLAY_NAME, charset)
            or f"attachment-{path[-1].removeprefix(ATTACHMENT_PREFIX)}"
        )
        # Windows ends a file name at a NUL: "x.exe\0.txt" is saved as x.exe.
        member = Member(prefix + name.split("\x00", 1)[0])
        self.facts.attachments.append(member)
        if member.name.lower().endswith(".rpmsg"):  # a rights-managed (IRM) message's content
            member.encrypted = self.facts.encrypted = True
            return None
        data_name = f"{SUBSTG_PREFIX}{_ATTACH_DATA:04x}"
        member.payload = self.read((*path, data_name + _PT_BINARY), member.unscannable)
        obj = (*path, data_name + _PT_OBJECT)
        if member.payload is not None or obj not in self.children:
            return None  # by value, or by reference (nothing to read)
        if longs.get(_ATTACH_METHOD) == _ATTACH_OLE:
            member.payload = self.ole_object(obj, member.unscannable)
            return None
        if depth >= MAX_EMBEDDED_DEPTH:
            member.unscannable.add("too_deep")
            return None
        return self.message(obj, _EMBEDDED_HEADER, depth + 1, f"{member.name}/")

    def ole_object(self, storage: _Path, marks: set[str]) -> bytes | None:
        """The file in an embedded OLE object: a Packager object wraps it in an Ole10Native
        stream, an OOXML object keeps it in Package, others in CONTENTS. An object kept as
        storages (a Word 97 document) is not one file to hand on: malformed."""
        native = self.read((*storage, "\x01ole10native"), marks)
        if native is not None:
            payload = _ole10native(native)
            if payload is None:
                marks.add("malformed")
            return payload
        for name in ("package", "contents"):
            data = self.read((*storage, name), marks)
            if data is not None:
                return data
        marks.add("malformed")
        return None

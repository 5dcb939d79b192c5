"""The parsed message: built once from raw bytes, read by every detector.

CONTRACT (filled in by the message-model work; the engine relies on exactly these names):

mime.parse_message(raw: bytes, limits: ScanLimits | None = None) -> Message
    Never raises on any input and is bounded in time and memory by `limits`.
    Problems that stop the engine from looking inside something are recorded as
    reasons in `Part.unscannable` / `Message.unscannable`, drawn from UNSCANNABLE_REASONS.

Message fields:
    raw: bytes                       the bytes as received
    size: int                        len(raw)
    headers: list[tuple[str, str]]   top-level headers, names as sent, values decoded
                                     (RFC 2047, unfolded, bounded length)
    header(name) -> list[str]        all values of a top-level header, case-insensitive name
    subject: str                     decoded Subject ('' if none)
    message_id: str                  Message-ID ('' if none)
    parts: list[Part]                flattened, in document order: every MIME leaf part, the
                                     parts of attached message/rfc822 messages (to a depth
                                     limit), and every archive member (nested to depth 3)
    unscannable: set[str]            union of all parts' reasons plus message-level ones
    attachments -> list[Part]        parts that are attachments or archive members
    texts() -> Iterator[Part]        parts whose `text` is not None

Part fields:
    path: str             where it is: MIME path "1.2", archive members "1.2/report.zip/a.exe";
                          human-readable, used in Hit.where
    content_type: str     declared type, lower-case, 'application/octet-stream' if absent
    filename: str | None  decoded name (RFC 2047/2231 with continuations; from
                          Content-Disposition, else Content-Type name=; for archive members
                          the member name)
    extensions: tuple[str, ...]  every extension of the name, lower-case, without dots, with
                          trailing dots/spaces stripped: "a.PDF.exe . " -> ("pdf", "exe")
    is_attachment: bool   has a filename, or Content-Disposition: attachment, or is a
                          non-text leaf, or is an archive member
    payload: bytes        decoded content (transfer encoding undone), bounded
    text: str | None      text view for DLP (text/plain incl. format=flowed joined,
                          text/html rendered, txt/csv/html/eml attachments, docx/xlsx text);
                          None when the part has no text view
    detected_type: str | None  MIME type from the content (libmagic)
    size: int             len(payload)
    encrypted: bool       an encrypted archive (zip incl. AES, rar, 7z), Office document or PDF
                          that no password found in the message opens
    unlocked: bool        opened with a password found in the message's own text (the file
                          itself and everything read out of it); `where` says so
    macros: bool          Office macros (OOXML vbaProject.bin, OLE VBA, Excel 4 macro sheets)
    member_of: str | None path of the archive this part came out of
    depth: int            nesting depth (message/rfc822 and archives)
    unscannable: set[str] reasons this part could not be fully looked into
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

# fragment: a message/partial piece (RFC 2046 5.2.2), whose content is whole only once the
# recipient's client joins the pieces, so no one piece shows what is being sent.
UNLOCKED_NOTE = "opened with a password found in the message"
UNSCANNABLE_REASONS = ("encrypted", "too_deep", "over_budget", "malformed", "timeout", "fragment")


@dataclass(frozen=True)
class ScanLimits:
    max_depth: int = 5  # nested message/rfc822 levels
    max_archive_depth: int = 3  # nested archives
    max_parts: int = 1000
    max_header_bytes: int = 1 << 20  # per message, before parsing headers is cut short
    max_header_value: int = 16 << 10  # per decoded header value
    max_decoded_total: int = 100 << 20  # all decoded payloads and archive members together
    max_archive_ratio: int = 100  # uncompressed / compressed size per archive member
    max_text_chars: int = 20 << 20  # all text views together
    # Passwords found in the message's text, tried on its encrypted files (zip, 7z, PDF,
    # Office) after the walk: candidates per file, files per message, key derivations per
    # message (each candidate on each file, each AES zip member read) and seconds in all,
    # a share of the worker's time budget (engine.time_budget, 10 s by default).
    max_password_candidates: int = 20
    max_locked_files: int = 5
    max_unlock_trials: int = 200
    max_unlock_seconds: float = 3.0


@dataclass
class Part:
    path: str
    content_type: str = "application/octet-stream"
    filename: str | None = None
    extensions: tuple[str, ...] = ()
    is_attachment: bool = False
    payload: bytes = b""
    text: str | None = None
    detected_type: str | None = None
    size: int = 0
    encrypted: bool = False
    unlocked: bool = False
    macros: bool = False
    member_of: str | None = None
    depth: int = 0
    unscannable: set[str] = field(default_factory=set)

    @property
    def where(self) -> str:
        """Label for evidence: the path plus the name, if any, and whether a password found in
        the message opened it (never the password)."""
        notes = [self.filename] if self.filename else []
        if self.unlocked:
            notes.append(UNLOCKED_NOTE)
        return f"{self.path} ({'; '.join(notes)})" if notes else self.path


@dataclass
class Message:
    raw: bytes
    headers: list[tuple[str, str]] = field(default_factory=list)
    parts: list[Part] = field(default_factory=list)
    unscannable: set[str] = field(default_factory=set)

    @property
    def size(self) -> int:
        return len(self.raw)

    def header(self, name: str) -> list[str]:
        lname = name.lower()
        return [v for k, v in self.headers if k.lower() == lname]

    @property
    def subject(self) -> str:
        values = self.header("subject")
        return values[0] if values else ""

    @property
    def message_id(self) -> str:
        values = self.header("message-id")
        return values[0].strip() if values else ""

    @property
    def attachments(self) -> list[Part]:
        return [p for p in self.parts if p.is_attachment]

    def texts(self) -> Iterator[Part]:
        return (p for p in self.parts if p.text is not None)

"""Attachment facts: detected type, archive members, Office macros, encryption, text views
(also of PDFs).

`AttachmentInspector.inspect` fills in a Part's facts and returns the Parts for what is
inside it (archive members, recursively to `max_archive_depth`), in document order. The
encrypted files it meets are kept (`locked`) for `unlock`, which the MIME walk calls with the
passwords found in the message once it has read every text.
"""

from __future__ import annotations

import mimetypes
import threading
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import magic

from mailgate.filter.message import rtf
from mailgate.filter.message.budget import ScanBudget
from mailgate.filter.message.headers import extensions_of
from mailgate.filter.message.model import Part
from mailgate.filter.message.readers import archives, office, outlook, pdf
from mailgate.filter.message.textview import (
    FOLDED_EXTENSIONS,
    FOLDED_TYPES,
    HTML_EXTENSIONS,
    TEXT_EXTENSIONS,
    clean_text,
    looks_like_text,
    render_text,
)

# libmagic reads the first few KB; its text heuristics cost ~0.3 ms per KB, so text gets a
# short sample and only the builtin tests (see detect_type).
_MAGIC_SAMPLE = 8192
_TEXT_MAGIC_SAMPLE = 512
_MAGIC_NO_SOFT = 0x0004000  # MAGIC_NO_CHECK_SOFT: skip the (slow, regex) magic database
# Formats that look like text but that libmagic's soft database names: these get the full
# (slow) check. Messages are among them so that an attached .eml is recognised.
_TEXTUAL_FORMATS = (
    b"#!",
    b"%PDF",
    b"%!",
    b"{\\rtf",
    b"<?xml",
    b"<svg",
    b"BEGIN:",
    b"From ",
    b"Received:",
    b"Return-Path:",
    b"From:",
    b"Delivered-To:",
    b"MIME-Version:",
    b"Message-ID:",
    b"Date:",
)
_EML_TYPES = frozenset({"message/rfc822"})
_EML_EXTENSIONS = frozenset({"eml"})
# Parses an embedded .eml: (payload, path, depth) -> its parts.
EmbeddedParser = Callable[[bytes, str, int], list[Part]]

_local = threading.local()


def _magic(text_mode: bool) -> magic.Magic:
    """One libmagic handle per thread and mode: libmagic handles are not thread-safe."""
    attr = "text" if text_mode else "full"
    handle = getattr(_local, attr, None)
    if handle is None:
        handle = magic.Magic(mime=True)
        if text_mode:
            magic.magic_setflags(handle.cookie, magic.MAGIC_MIME_TYPE | _MAGIC_NO_SOFT)
        setattr(_local, attr, handle)
    return handle


def detect_type(payload: bytes) -> str | None:
    """MIME type from the content. Text skips libmagic's soft database (scripts, HTML are
    refined by cheap checks), which keeps a text file that starts with "MZ" text/plain."""
    if not payload:
        return None
    if payload.startswith(pdf.PDF_SIGNATURE):
        return "application/pdf"  # libmagic's own rule, without its 26 us of other tests
    sample = payload[:_TEXT_MAGIC_SAMPLE]
    try:
        if looks_like_text(sample):
            head = sample.lstrip()[:64]
            if head.startswith(_TEXTUAL_FORMATS):
                return str(_magic(False).from_buffer(sample))
            if head.lower().startswith((b"<!doctype html", b"<html")) or b"<html" in sample.lower():
                return "text/html"
            return str(_magic(True).from_buffer(sample))
        return str(_magic(False).from_buffer(payload[:_MAGIC_SAMPLE]))
    except magic.MagicException:
        return None


def is_text_like(part: Part) -> bool:
    if part.content_type.startswith("text/") or TEXT_EXTENSIONS.intersection(part.extensions):
        return True
    return bool(part.detected_type and part.detected_type.startswith("text/"))


def _wide_charset(charset: str | None) -> bool:
    """UTF-16 or UTF-32 text without a byte-order mark is all NULs and letters to libmagic;
    the declared charset is how a reader's client decodes it."""
    label = (charset or "").lower().replace("-", "").replace("_", "")
    return label.startswith(("utf16", "utf32", "ucs2", "ucs4"))


def _is_pdf(part: Part) -> bool:
    """A PDF by its content, or one that says it is a PDF and has the header where readers
    look for it (libmagic only looks at the first bytes)."""
    if part.payload.startswith(pdf.PDF_SIGNATURE) or part.detected_type == "application/pdf":
        return True
    says_pdf = part.content_type == "application/pdf" or "pdf" in part.extensions[-1:]
    return says_pdf and pdf.is_pdf(part.payload)


# Markup rendered like HTML: tags vanish, so `4111 <text:span>1111</text:span>` in an
# OpenDocument's content.xml or any XML file reads as the number it shows.
_MARKUP_TYPES = frozenset({"text/html", "text/xml", "application/xml"})


def _is_kind(part: Part, types: frozenset[str], extensions: frozenset[str]) -> bool:
    """Declared or detected as one of `types`, or saved under one of `extensions`."""
    return (
        part.content_type in types
        or part.detected_type in types
        or bool(extensions.intersection(part.extensions[-1:]))
    )


def is_folded(part: Part) -> bool:
    """Calendar or contact content, whose folded lines a reader's client joins."""
    return _is_kind(part, FOLDED_TYPES, FOLDED_EXTENSIONS)


def is_html(part: Part) -> bool:
    return _is_kind(part, _MARKUP_TYPES, HTML_EXTENSIONS)


def _unseal(part: Part) -> None:
    """A file a password opened is no longer encrypted; what is read out of it may be."""
    part.encrypted = False
    part.unscannable.discard("encrypted")


class DocumentFacts(Protocol):
    """What the PDF and Outlook readers report alike."""

    text: str | None
    encrypted: bool
    unscannable: set[str]
    attachments: list[archives.Member]


@dataclass
class Locked:
    """An encrypted file a password could open: a zip, 7z, PDF or Office document."""

    part: Part
    kind: str  # "zip", "7z", "pdf" or "office"
    archive_depth: int
    placeholders: list[Part] = field(default_factory=list)  # its members listed locked


class AttachmentInspector:
    """Looks inside attachments under one message's budget."""

    def __init__(self, budget: ScanBudget, parse_embedded: EmbeddedParser) -> None:
        self.budget = budget
        self.parse_embedded = parse_embedded
        self.locked: deque[Locked] = deque()  # in the order met, for `unlock`

    def inspect(self, part: Part, charset: str | None, archive_depth: int = 0) -> list[Part]:
        payload = part.payload
        part.detected_type = detect_type(payload)
        if (
            part.content_type in _EML_TYPES
            or _EML_EXTENSIONS.intersection(part.extensions[-1:])
            or part.detected_type in _EML_TYPES
        ) and looks_like_text(payload[:_TEXT_MAGIC_SAMPLE]):
            return self.parse_embedded(payload, part.path, part.depth + 1)
        if payload.startswith(office.OLE_SIGNATURE):
            facts = office.ole_facts(payload)
            part.macros, part.encrypted = facts.macros, facts.encrypted
            part.unscannable |= facts.unscannable
            if facts.encrypted:
                part.unscannable.add("encrypted")
            if facts.outlook_message:
                return self._outlook_message(part, archive_depth)
            if facts.encrypted:
                self.locked.append(Locked(part, "office", archive_depth))
            return []
        kind = archives.archive_kind(payload)
        if _is_pdf(part):
            # Not exclusive: a PDF that is also a zip (a polyglot) is read both ways.
            embedded = self._pdf(part, archive_depth)
            return embedded + (self._archive(part, kind, archive_depth) if kind else [])
        if kind is not None:
            return self._archive(part, kind, archive_depth)
        if payload.lstrip()[:5].lower() == rtf.RTF_SIGNATURE:
            # Word's other format (also under a .doc name): its text, not its control words.
            self.set_text(part, clean_text(rtf.rtf_to_text(payload)))
            return []
        if is_text_like(part) and (
            part.detected_type is None
            or part.detected_type.startswith("text/")
            or _wide_charset(charset)
        ):
            text = render_text(payload, charset, html=is_html(part), folded=is_folded(part))
            self.set_text(part, text)
        return []

    def _outlook_message(self, part: Part, archive_depth: int) -> list[Part]:
        """A saved Outlook item: its text like a message's, its attachments like an
        archive's members (one archive level)."""
        max_members = max(0, self.budget.limits.max_parts - self.budget.part_count)
        facts = outlook.msg_facts(part.payload, self.budget, max_members)
        return self._document(part, facts, archive_depth)

    def _pdf(self, part: Part, archive_depth: int) -> list[Part]:
        """A PDF's text, and the files embedded in it as an archive's members."""
        facts = pdf.pdf_facts(part.payload, self.budget)
        if facts.encrypted:
            self.locked.append(Locked(part, "pdf", archive_depth))
        return self._document(part, facts, archive_depth)

    def _document(self, part: Part, facts: DocumentFacts, archive_depth: int) -> list[Part]:
        """What a document reader found: its text, whether it is locked, and the files it
        carries (a .msg's attachments, a PDF's embedded files) as members one archive level
        down."""
        part.unscannable |= facts.unscannable
        if facts.encrypted:
            part.encrypted = True
            part.unscannable.add("encrypted")
        if facts.text is not None:
            self.set_text(part, facts.text)
        if not facts.attachments:
            return []
        if archive_depth >= self.budget.limits.max_archive_depth:
            part.unscannable.add("too_deep")
            return []
        return self._members(part, archives.Listing(members=facts.attachments), archive_depth)

    def set_text(self, part: Part, text: str) -> None:
        text, cut = self.budget.fit_text(text)
        part.text = text
        if cut:
            part.unscannable.add("over_budget")

    def _archive(self, part: Part, kind: str, archive_depth: int) -> list[Part]:
        max_members = max(0, self.budget.limits.max_parts - self.budget.part_count)
        if kind == "zip":
            zf = archives.open_zip(part.payload)
            if zf is None:
                # Only a file that starts like a zip is a damaged zip; an end-of-directory
                # signature found by chance in other data is not.
                if part.payload.startswith(archives.ZIP_SIGNATURES):
                    part.unscannable.add("malformed")
                return []
            with zf:
                names = zf.namelist()
                if office.is_ooxml(names):
                    facts = office.ooxml_facts(zf, self.budget)
                    part.macros = facts.macros
                    part.unscannable |= facts.unscannable
                    if facts.text is not None:
                        self.set_text(part, facts.text)
                    return []
                if archive_depth >= self.budget.limits.max_archive_depth:
                    part.unscannable.add("too_deep")
                    return []
                listing = archives.list_zip(zf, self.budget, max_members)
        elif archive_depth >= self.budget.limits.max_archive_depth:
            part.unscannable.add("too_deep")
            return []
        elif kind == "rar":
            listing = archives.list_rar(part.payload, self.budget, max_members)
        elif kind == "7z":
            listing = archives.list_7z(part.payload, self.budget, max_members)
        elif kind == "tar":
            listing = archives.list_tar(part.payload, self.budget, max_members)
        else:
            name = archives.compressed_member_name(part.payload, kind, part.filename)
            listing = archives.unpack_compressed(part.payload, kind, name, self.budget)
        members = self._listed(part, listing, archive_depth)
        if listing.encrypted and kind in ("zip", "7z"):
            placeholders = [m for m in members if m.member_of == part.path and m.encrypted]
            self.locked.append(Locked(part, kind, archive_depth, placeholders))
        return members

    def _listed(self, part: Part, listing: archives.Listing, archive_depth: int) -> list[Part]:
        part.unscannable |= listing.unscannable
        if listing.encrypted:
            part.encrypted = True
            part.unscannable.add("encrypted")
        return self._members(part, listing, archive_depth)

    def unlock(self, locked: Locked, passwords: Sequence[str]) -> list[Part] | None:
        """Open a locked file with the first of `passwords` that opens it: the parts read out
        of it (in place of its placeholders), each marked unlocked, scanned exactly as an
        unencrypted file's; None when none opens it, and the file stays encrypted."""
        part = locked.part
        max_members = max(0, self.budget.limits.max_parts - self.budget.part_count)
        if locked.kind in ("zip", "7z"):
            opener = archives.unlock_zip if locked.kind == "zip" else archives.unlock_7z
            listing = opener(part.payload, passwords, self.budget, max_members)
            if listing is None:
                return None
            _unseal(part)
            found = self._listed(part, listing, locked.archive_depth)
        elif locked.kind == "pdf":
            facts = pdf.unlock_pdf(part.payload, passwords, self.budget)
            if facts is None:
                return None
            _unseal(part)
            found = self._document(part, facts, locked.archive_depth)
        else:
            decrypted = office.unlock_office(part.payload, passwords, self.budget)
            if decrypted is None:
                return None
            _unseal(part)
            part.payload, part.size = decrypted, len(decrypted)
            found = self.inspect(part, None, locked.archive_depth)
        for opened in (part, *found):
            opened.unlocked = True
        return found

    def _members(self, archive: Part, listing: archives.Listing, archive_depth: int) -> list[Part]:
        # A MIME part's path is a number, so the archive's name joins the member paths
        # ("2/report.zip/a.exe"); a member's path already ends with its own name.
        base = archive.path
        if archive.member_of is None:
            base = f"{base}/{archive.filename or 'archive'}"
        parts: list[Part] = []
        for member in listing.members:
            if not self.budget.take_part():
                archive.unscannable.add("over_budget")
                break
            payload = member.payload or b""
            declared = mimetypes.guess_type(member.name, strict=False)[0]
            part = Part(
                path=f"{base}/{member.name}",
                content_type=declared or "application/octet-stream",
                filename=member.name,
                extensions=extensions_of(member.name),
                is_attachment=True,
                payload=payload,
                size=len(payload),
                encrypted=member.encrypted,
                member_of=archive.path,
                depth=archive.depth + 1,
                unscannable=set(member.unscannable),
            )
            if member.encrypted:
                part.unscannable.add("encrypted")
            parts.append(part)
            if member.payload is not None:
                parts.extend(self.inspect(part, None, archive_depth + 1))
        return parts

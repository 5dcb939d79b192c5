"""PDF attachments: the text on their pages, their comment notes and document properties,
the files embedded in them, and whether a password keeps us out (or one found in the
message lets us in: `unlock_pdf`).

Text comes from PDFium (through pypdfium2): Chrome's PDF engine, fuzzed by Chrome against
hostile files for years and running at C speed, so a crafted PDF meets the parser that
browsers already trust, and what we scan is what Chrome shows.
"""

from __future__ import annotations

import ctypes
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import pypdfium2 as pdfium
import pypdfium2.raw as pdfium_c

from mailgate.filter.message.budget import ScanBudget
from mailgate.filter.message.readers.archives import Member

PDF_SIGNATURE = b"%PDF-"
MAX_PDF_PAGES = 500
PAGE_SEPARATOR = "\n\f\n"
_PROPERTIES = ("Title", "Subject", "Keywords", "Author")
# PDFium (like other readers) finds the header at any offset up to 1024.
_MAX_HEADER_OFFSET = 1024
# The whole plane: text placed off the page is not seen on screen but is in the file.
_PLANE = 3.0e38
# PDFium marks a word hyphenated across a line end with \x02 in place of "-\r\n"; drop it
# so the word reads whole, as a reader sees it.
_HYPHEN_MARK = "\x02"
# PDFium keeps global state (last error, font caches) and is not thread-safe: one call in
# the library at a time.
_PDFIUM_LOCK = threading.Lock()


@dataclass
class PdfFacts:
    # Pages (each followed by its comment notes) joined by PAGE_SEPARATOR, then the document
    # properties; None when nothing was read.
    text: str | None = None
    encrypted: bool = False  # needs a password to open (owner-password-only PDFs open)
    unscannable: set[str] = field(default_factory=set)  # encrypted, malformed, over_budget
    # Files embedded in the document (a PDF can carry any file, like an archive).
    attachments: list[Member] = field(default_factory=list)


def is_pdf(data: bytes) -> bool:
    return PDF_SIGNATURE in data[: _MAX_HEADER_OFFSET + len(PDF_SIGNATURE)]


def pdf_facts(data: bytes, budget: ScanBudget) -> PdfFacts:
    """Text of up to MAX_PDF_PAGES pages, within what is left of the budget's text chars.

    The caller fits the text into the budget; this only stops reading once it is used up.
    """
    with _PDFIUM_LOCK:
        # Loaded through the raw call: pypdfium2's PdfDocument(bytes) raises for a document
        # without pages but never closes it, leaking the parsed file (a crafted mail loop).
        # PDFium reads `data` in place; it stays alive as our argument until we close.
        raw = pdfium_c.FPDF_LoadMemDocument64(data, len(data), None)
        if raw:
            return _read_document(raw, budget)
        facts = PdfFacts()
        error = pdfium_c.FPDF_GetLastError()
        if error in (pdfium_c.FPDF_ERR_PASSWORD, pdfium_c.FPDF_ERR_SECURITY):
            facts.encrypted = True
            facts.unscannable.add("encrypted")
        else:
            facts.unscannable.add("malformed")
        return facts


def unlock_pdf(data: bytes, passwords: Sequence[str], budget: ScanBudget) -> PdfFacts | None:
    """What `pdf_facts` reads, from a PDF opened with the first password that opens it;
    None when none does. A try costs PDFium's key check (MD5 or SHA-256 rounds)."""
    with _PDFIUM_LOCK:

        def opens(password: str) -> object | None:
            raw = pdfium_c.FPDF_LoadMemDocument64(data, len(data), password.encode("utf-8"))
            return raw or None

        raw = budget.first_to_open(passwords, opens)
        return None if raw is None else _read_document(raw, budget)


def _read_document(doc: Any, budget: ScanBudget) -> PdfFacts:
    """Pages, properties and embedded files of a loaded document, which this closes. PDFium's
    own calls on its handle: a pypdfium2 PdfDocument (finalizer, object tracking) costs more
    than a short document's properties."""
    facts = PdfFacts()
    left = budget.limits.max_text_chars - budget.text_chars
    try:
        _read_pages(doc, facts, left)
        properties = _properties(doc)
        if properties:
            facts.text = "\n\n".join(filter(None, [facts.text, properties]))[:left]
        _read_embedded_files(doc, facts, budget)
    except (pdfium.PdfiumError, ctypes.ArgumentError):  # what a damaged part can raise
        facts.unscannable.add("malformed")
    finally:
        pdfium_c.FPDF_CloseDocument(doc)
    return facts


def _utf16(read: Callable[[object, int], int]) -> str:
    """A string PDFium hands out as UTF-16LE: asked for its size first, then read."""
    size = read(None, 0)
    if size <= 2:
        return ""
    buffer = ctypes.create_string_buffer(size)
    read(buffer, size)
    return buffer.raw[: size - 2].decode("utf-16-le", "replace")


def _wide(buffer: ctypes.Array[ctypes.c_char] | None) -> object:
    """A byte buffer as the FPDF_WCHAR pointer some calls are declared with."""
    return None if buffer is None else ctypes.cast(buffer, ctypes.POINTER(ctypes.c_ushort))


def _properties(doc: Any) -> str:
    """Title, subject, keywords and author: shown in a reader's document properties."""
    values = []
    for key in _PROPERTIES:
        tag = key.encode() + b"\0"
        value = _utf16(
            lambda buffer, size, tag=tag: pdfium_c.FPDF_GetMetaText(doc, tag, buffer, size)
        )
        if value.strip():
            values.append(f"{key}: {value.strip()}")
    return "\n".join(values)


def _notes(page: Any, count: int) -> list[str]:
    """The text of the page's `count` annotations (comment notes, free text, form field
    tooltips)."""
    notes = []
    for index in range(count):
        annot = pdfium_c.FPDFPage_GetAnnot(page, index)
        if not annot:
            continue
        try:
            note = _utf16(
                lambda buffer, size, annot=annot: pdfium_c.FPDFAnnot_GetStringValue(
                    annot, b"Contents", _wide(buffer), size
                )
            )
        finally:
            pdfium_c.FPDFPage_CloseAnnot(annot)
        if note.strip():
            notes.append(note.strip())
    return notes


def _read_embedded_files(doc: Any, facts: PdfFacts, budget: ScanBudget) -> None:
    """Embedded files as members, each read only if its size fits what the budget has left."""
    for index in range(pdfium_c.FPDFDoc_GetAttachmentCount(doc)):
        if len(facts.attachments) >= budget.limits.max_parts:
            facts.unscannable.add("over_budget")
            return
        raw = pdfium_c.FPDFDoc_GetAttachment(doc, index)
        if not raw:
            raise pdfium.PdfiumError(f"Failed to get attachment at index {index}.")
        attachment = pdfium.PdfAttachment(raw, doc)
        member = Member(attachment.get_name() or f"embedded-{index + 1}")
        facts.attachments.append(member)
        size = ctypes.c_ulong()
        if not pdfium_c.FPDFAttachment_GetFile(attachment, None, 0, ctypes.byref(size)):
            member.unscannable.add("malformed")
            continue
        if size.value > budget.bytes_left:
            member.unscannable.add("over_budget")
            continue
        buffer = ctypes.create_string_buffer(size.value)
        got = ctypes.c_ulong()
        if not pdfium_c.FPDFAttachment_GetFile(attachment, buffer, size.value, ctypes.byref(got)):
            member.unscannable.add("malformed")
            continue
        member.payload = buffer.raw[: got.value]
        budget.charge_bytes(len(member.payload))


def _read_pages(doc: Any, facts: PdfFacts, left: int) -> None:
    count = pdfium_c.FPDF_GetPageCount(doc)
    if count < 1:
        facts.unscannable.add("malformed")
        return
    if count > MAX_PDF_PAGES:
        facts.unscannable.add("over_budget")
    texts: list[str] = []
    size = 0
    for index in range(min(count, MAX_PDF_PAGES)):
        if size >= left:
            facts.unscannable.add("over_budget")
            break
        try:
            text = _page_text(doc, index)
        except pdfium.PdfiumError:  # a page (or its text) PDFium cannot load
            facts.unscannable.add("malformed")
            continue
        size += len(text) + (len(PAGE_SEPARATOR) if texts else 0)
        texts.append(text)
    if not texts:
        return
    text = PAGE_SEPARATOR.join(texts)
    if len(text) > left:
        text = text[: max(0, left)]
        facts.unscannable.add("over_budget")
    facts.text = text


def _page_text(doc: Any, index: int) -> str:
    # PDFium's own calls on the page and its text: pypdfium2's page and text-page objects
    # (finalizers, parent tracking) cost more than loading a short page's text.
    page = _load_page(doc, index)
    try:
        annotations = pdfium_c.FPDFPage_GetAnnotCount(page)
        # Before flattening, which folds some annotations into the page.
        notes = _notes(page, annotations)
        # Filled-in form fields and other annotations live outside the page content; flatten
        # draws their appearance into it (in memory only), and the page must then be reloaded.
        # A page without annotations has nothing to flatten: PDFium would parse its content
        # again only to find that out.
        if (
            annotations
            and pdfium_c.FPDFPage_Flatten(page, pdfium_c.FLAT_NORMALDISPLAY)
            == pdfium_c.FLATTEN_SUCCESS
        ):
            pdfium_c.FPDF_ClosePage(page)
            page = None
            page = _load_page(doc, index)
        textpage = pdfium_c.FPDFText_LoadPage(page)
        if not textpage:
            raise pdfium.PdfiumError("Failed to load text page.")
        try:
            text = _bounded_text(textpage)
        finally:
            pdfium_c.FPDFText_ClosePage(textpage)
    finally:
        if page:
            pdfium_c.FPDF_ClosePage(page)
    text = text.replace("\r\n", "\n").replace(_HYPHEN_MARK, "")
    return "\n".join([text, *notes]) if notes else text


def _load_page(doc: Any, index: int) -> Any:
    page = pdfium_c.FPDF_LoadPage(doc, index)
    if not page:
        raise pdfium.PdfiumError("Failed to load page.")
    return page


def _bounded_text(textpage: Any) -> str:
    """The text within the whole plane rather than by character range: the same text (joined
    along lines, CRLF between lines) but full Unicode, and no Python recursion per glyph left
    out of the text at the page's start (pypdfium2's get_text_range raises
    ctypes.ArgumentError from a RecursionError after ~1000 of them)."""
    box = (-_PLANE, _PLANE, _PLANE, -_PLANE)  # left, top, right, bottom
    count = pdfium_c.FPDFText_GetBoundedText(textpage, *box, None, 0)
    if count <= 0:
        return ""
    buffer = (ctypes.c_ushort * count)()
    pdfium_c.FPDFText_GetBoundedText(textpage, *box, buffer, count)
    return bytes(buffer).decode("utf-16-le", "ignore")

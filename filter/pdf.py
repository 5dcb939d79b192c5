"""PDF attachments: the text on their pages, and whether a password keeps us out.

Text comes from PDFium (through pypdfium2): Chrome's PDF engine, fuzzed by Chrome against
hostile files for years and running at C speed, so a crafted PDF meets the parser that
browsers already trust, and what we scan is what Chrome shows.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

import pypdfium2 as pdfium
import pypdfium2.raw as pdfium_c

from .scanbudget import ScanBudget

PDF_SIGNATURE = b"%PDF-"
MAX_PDF_PAGES = 500
PAGE_SEPARATOR = "\n\f\n"
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
    text: str | None = None  # pages joined by PAGE_SEPARATOR; None when nothing was read
    encrypted: bool = False  # needs a password to open (owner-password-only PDFs open)
    unscannable: set[str] = field(default_factory=set)  # encrypted, malformed, over_budget


def is_pdf(data: bytes) -> bool:
    return PDF_SIGNATURE in data[: _MAX_HEADER_OFFSET + len(PDF_SIGNATURE)]


def pdf_facts(data: bytes, budget: ScanBudget) -> PdfFacts:
    """Text of up to MAX_PDF_PAGES pages, within what is left of the budget's text chars.

    The caller fits the text into the budget; this only stops reading once it is used up.
    """
    facts = PdfFacts()
    left = budget.limits.max_text_chars - budget.text_chars
    with _PDFIUM_LOCK:
        # Loaded through the raw call: pypdfium2's PdfDocument(bytes) raises for a document
        # without pages but never closes it, leaking the parsed file (a crafted mail loop).
        # PDFium reads `data` in place; it stays alive as our argument until we close.
        raw = pdfium_c.FPDF_LoadMemDocument64(data, len(data), None)
        if not raw:
            error = pdfium_c.FPDF_GetLastError()
            if error in (pdfium_c.FPDF_ERR_PASSWORD, pdfium_c.FPDF_ERR_SECURITY):
                facts.encrypted = True
                facts.unscannable.add("encrypted")
            else:
                facts.unscannable.add("malformed")
            return facts
        doc = pdfium.PdfDocument(raw)  # owns the handle: close() frees it
        try:
            _read_pages(doc, facts, left)
        finally:
            doc.close()
    return facts


def _read_pages(doc: pdfium.PdfDocument, facts: PdfFacts, left: int) -> None:
    count = len(doc)
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


def _page_text(doc: pdfium.PdfDocument, index: int) -> str:
    page = doc.get_page(index)
    try:
        # Filled-in form fields and other annotations live outside the page content; flatten
        # draws their appearance into it (in memory only), and the page must then be reloaded.
        if pdfium_c.FPDFPage_Flatten(page, pdfium_c.FLAT_NORMALDISPLAY) == pdfium_c.FLATTEN_SUCCESS:
            page.close()
            page = doc.get_page(index)
        textpage = page.get_textpage()
        try:
            # Bounded over the whole plane rather than get_text_range: the same text (joined
            # along lines, CRLF between lines) but full Unicode, and no Python recursion per
            # glyph left out of the text at the page's start (get_text_range raises
            # ctypes.ArgumentError from a RecursionError after ~1000 of them).
            text = textpage.get_text_bounded(-_PLANE, -_PLANE, _PLANE, _PLANE)
        finally:
            textpage.close()
    finally:
        page.close()
    return text.replace("\r\n", "\n").replace(_HYPHEN_MARK, "")

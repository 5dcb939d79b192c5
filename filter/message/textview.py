"""Text views of parts: charset decoding, format=flowed, HTML rendering, clean-up for DLP."""

from __future__ import annotations

import re
import sys
import unicodedata
from array import array

import regex

from mailgate.filter.message.charsets import decode_bytes
from mailgate.filter.message.html import INVISIBLE, html_to_text

# Attachment extensions whose content is text a reader would see.
TEXT_EXTENSIONS = frozenset(
    {"txt", "text", "csv", "tsv", "log", "md", "json", "xml", "ics", "vcf", "htm", "html"}
)
HTML_EXTENSIONS = frozenset({"htm", "html", "xhtml", "xml"})
# Calendar and contact files, in the folded line format of RFC 5545 and RFC 6350.
FOLDED_TYPES = frozenset({"text/calendar", "text/vcard", "text/x-vcard", "text/directory"})
FOLDED_EXTENSIONS = frozenset({"ics", "ical", "ifb", "vcs", "vcf", "vcard"})
_FOLD = re.compile("\n[ \t]")
# Control bytes that do not occur in text files; their absence is the cheap "is text" test.
_BINARY_BYTES = bytes([*range(0, 8), 11, *range(14, 27), *range(28, 32), 127])


def _read_as_table() -> dict[int, str]:
    """Digits of every script (fullwidth, Arabic-Indic, Devanagari, mathematical bold...) as
    ASCII digits, Unicode spaces (no-break, thin, figure...) as a space, Unicode dashes and
    the minus sign as "-". The Basic Multilingual Plane and the mathematical digits cover what
    mail carries; building this takes a few milliseconds."""
    planes = (range(0x80, 0x10000), range(0x1D7CE, 0x1D800))
    candidates = "".join(chr(point) for points in planes for point in points)
    table = {}
    for found in re.finditer(r"[\d\s\u2010-\u2015\u2212\ufe58\ufe63\uff0d]", candidates):
        char = found.group()
        category = unicodedata.category(char)
        if category == "Nd":
            table[ord(char)] = str(unicodedata.digit(char))
        elif category == "Zs":
            table[ord(char)] = " "
        elif category in ("Pd", "Sm"):
            table[ord(char)] = "-"
    return table


def ignorable_characters() -> str:
    """Every Default_Ignorable_Code_Point (zero-width characters, soft hyphen, joiners, bidi
    and invisible operators, variation selectors, Hangul fillers, tags...): Unicode's own
    list of what a renderer shows as nothing, kept current by the `regex` module's tables.
    Outside the planes searched here Unicode assigns and reserves none."""
    planes = (range(0x80, 0xD800), range(0xE000, 0x20000), range(0xE0000, 0xE1000))
    points = array("I", [point for plane in planes for point in plane])  # 4 bytes each
    candidates = points.tobytes().decode(f"utf-32-{sys.byteorder[0]}e")
    return "".join(regex.findall(r"\p{Default_Ignorable_Code_Point}+", candidates))


# Characters nobody sees are not read (the part texts have lost the common ones already;
# the Subject, names and headers have not): a card number with U+2063 between its groups is
# the number a reader sees.
_READ_AS: dict[int, str | None] = {
    **_read_as_table(),
    **dict.fromkeys(map(ord, ignorable_characters())),
}


def as_read(text: str) -> str:
    """The text as the detectors read it: a card number typed in fullwidth digits, with
    no-break spaces between its groups or invisible characters inside is the number a
    reader sees."""
    return text if text.isascii() else text.translate(_READ_AS)


def as_read_mapped(text: str) -> tuple[str, list[int]]:
    """`as_read(text)` and, for each of its characters, the index in `text` it was read from
    (plus `len(text)` at the end), so that what a detector finds in the reading can be masked
    in the original. Every character reads as at most one character."""
    if text.isascii():
        return text, list(range(len(text) + 1))
    read: list[str] = []
    origins: list[int] = []
    for index, char in enumerate(text):
        seen = _READ_AS.get(ord(char), char)
        if seen is not None:
            read.append(seen)
            origins.append(index)
    origins.append(len(text))
    return "".join(read), origins


def looks_like_text(sample: bytes) -> bool:
    return bool(sample) and len(sample.translate(None, _BINARY_BYTES)) == len(sample)


def unflow(text: str, delsp: bool) -> str:
    """Join RFC 3676 format=flowed soft line breaks (a line ending in a space)."""
    out: list[str] = []
    for line in text.split("\n"):
        if line.startswith(" "):
            line = line[1:]  # space-stuffing
        if line.endswith(" ") and line != "-- ":
            out.append(line[:-1] if delsp else line)
        else:
            out.append(line + "\n")
    return "".join(out)


def clean_text(text: str) -> str:
    """Line ends to \\n; NULs and zero-width characters removed (they hide numbers)."""
    if "\r" in text:
        text = text.replace("\r\n", "\n")
    if "\x00" in text:
        text = text.replace("\x00", "")
    if not text.isascii() and INVISIBLE.search(text):
        text = INVISIBLE.sub("", text)
    return text


def render_text(
    payload: bytes,
    charset: str | None,
    *,
    html: bool = False,
    flowed: bool = False,
    delsp: bool = False,
    folded: bool = False,
) -> str:
    """`folded`: iCalendar and vCard content, whose long lines continue on lines that start
    with a space or tab (RFC 5545 3.1); a calendar shows them joined, so the text joins them."""
    text = clean_text(decode_bytes(payload, charset))
    if html:
        return html_to_text(text)
    if folded:
        return _FOLD.sub("", text)
    return unflow(text, delsp) if flowed else text

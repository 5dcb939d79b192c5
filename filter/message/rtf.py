"""RTF to text, for RTF documents and the RTF bodies of Outlook messages.

Crude on purpose and linear in the input: paragraph and tab breaks kept, control words,
hidden destinations (fonts, styles, pictures, metadata) and `{\\*...}` groups dropped, `\\'hh`
bytes decoded in the document's code page, `\\uN` characters kept.
"""

from __future__ import annotations

import re

from mailgate.filter.message.charsets import codepage_charset, decode_bytes

RTF_SIGNATURE = b"{\\rtf"
_RTF_TOKEN = re.compile(
    rb"\\([a-z]{1,32})(-?\d{1,10})? ?|\\'([0-9a-f]{2})|\\(.)|([{}])|[\r\n]+|[^\\{}\r\n]+",
    re.IGNORECASE | re.DOTALL,
)
# Destinations whose content is not text a reader sees (fonts, styles, pictures, metadata).
_RTF_HIDDEN = frozenset(
    {
        b"fonttbl",
        b"colortbl",
        b"stylesheet",
        b"info",
        b"pict",
        b"objdata",
        b"listtable",
        b"listoverridetable",
        b"rsidtbl",
        b"generator",
        b"xmlnstbl",
        b"themedata",
        b"colorschememapping",
        b"datastore",
        b"latentstyles",
    }
)
_RTF_BREAKS = {b"par": b"\n", b"line": b"\n", b"row": b"\n", b"sect": b"\n", b"page": b"\n"}
_RTF_BREAKS.update({b"tab": b"\t", b"cell": b"\t"})
_RTF_SYMBOLS = {
    b"\\": b"\\",
    b"{": b"{",
    b"}": b"}",
    b"~": b" ",
    b"_": b"-",
    b"\n": b"\n",
    b"\r": b"\n",
}


def rtf_to_text(rtf: bytes) -> str:
    """Crude RTF to text: paragraphs and tabs kept, control words, hidden destinations and
    `{\\*...}` groups dropped; \\'hh bytes decode with \\ansicpg, \\uN is a character whose
    \\ucN fallback bytes are skipped. Linear in the input."""
    pieces: list[str] = []
    raw = bytearray()  # text bytes, decoded in the document's code page at the next \u
    charset = "cp1252"
    stack: list[tuple[bool, int]] = []
    hidden, uc, fallback = False, 1, 0
    pos = 0
    while m := _RTF_TOKEN.match(rtf, pos):
        pos = m.end()
        word, arg, hexbyte, symbol, brace = m.groups()
        number = int(arg) if arg else 0
        if brace == b"{":
            stack.append((hidden, uc))
        elif brace == b"}" and stack:
            hidden, uc = stack.pop()
        elif word == b"bin":  # raw bytes that could hold braces
            pos += max(0, number)
        elif hidden or brace or m.group(0)[0] in b"\r\n":  # line ends in RTF are not text
            continue
        elif word is not None:
            word = word.lower()
            if word in _RTF_HIDDEN:
                hidden = True
            elif word == b"ansicpg":
                pieces.append(decode_bytes(bytes(raw), charset))
                raw.clear()
                # RTF is 7-bit text with 8-bit escapes: only ASCII-compatible code pages fit.
                label = codepage_charset(number)
                charset = label if "\n".encode(label) == b"\n" else charset
            elif word == b"uc":
                uc = max(0, number)
            elif word == b"u":
                pieces.append(decode_bytes(bytes(raw), charset))
                raw.clear()
                pieces.append(chr(number % 0x10000))
                fallback = uc
                continue
            elif word in _RTF_BREAKS:
                raw += _RTF_BREAKS[word]
        elif symbol == b"*":
            hidden = True
        elif symbol is not None:
            raw += _RTF_SYMBOLS.get(symbol, b"")
        elif hexbyte is not None:
            if fallback:
                fallback -= 1
                continue
            raw.append(int(hexbyte, 16))
        else:
            text = m.group(0)
            raw += text[fallback:]
            fallback = max(0, fallback - len(text))
            continue
        fallback = 0
    pieces.append(decode_bytes(bytes(raw), charset))
    # \u escapes come as UTF-16 units: join surrogate pairs, replace lone halves.
    return "".join(pieces).encode("utf-16-le", "surrogatepass").decode("utf-16-le", "replace")

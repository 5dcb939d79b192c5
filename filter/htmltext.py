"""HTML to text for DLP, in linear time.

Inline tags vanish without a trace so `4111<b>1111</b>` reads `41111111` as the reader sees
it; block tags become line breaks; script, style, title and comments are dropped; named and
numeric entities are decoded after the tags are gone (so `&lt;b&gt;` stays text).
"""

from __future__ import annotations

import html
import re

# Elements whose content is never shown as text; the closing tag is found with str.find so
# an unterminated `<script` costs one scan, not one per occurrence.
_HIDDEN_OPEN = re.compile(r"<(script|style|title|template)\b[^<>]*>|<!--", re.IGNORECASE)
_HIDDEN_CLOSE = {
    name: re.compile(f"</{name}\\b[^<>]*>", re.IGNORECASE)
    for name in ("script", "style", "title", "template")
}
# Block-level tags end a line; every other tag vanishes. `[^<>]` keeps both regexes linear
# on `<<<<...`: every attempt stops at the next `<`.
_BLOCK_TAG = re.compile(
    r"</?(?:address|article|aside|blockquote|br|dd|div|dl|dt|fieldset|figcaption|figure"
    r"|footer|form|h[1-6]|header|hr|li|main|nav|ol|p|pre|section|table|tbody|td|tfoot|th"
    r"|thead|tr|ul)\b[^<>]*>",
    re.IGNORECASE,
)
_TAG = re.compile(r"<[^<>]*>")
_BREAKS = re.compile(r"\n[\n ]*")
# Zero-width and soft-hyphen characters: invisible when rendered, so they must not split
# a number for the detectors either.
INVISIBLE = re.compile("[\u00ad\u200b-\u200d\u2060\ufeff]")


def _drop_hidden(text: str) -> str:
    """Remove comments and script/style/title/template elements; an unterminated one runs
    to the end of the text, as it does in a browser."""
    pieces: list[str] = []
    pos = 0
    while m := _HIDDEN_OPEN.search(text, pos):
        pieces.append(text[pos : m.start()])
        if m.group(1):
            close = _HIDDEN_CLOSE[m.group(1).lower()].search(text, m.end())
            end = close.end() if close else -1
        else:
            end = text.find("-->", m.end())
            end = end + 3 if end >= 0 else -1
        if end < 0:
            return "".join(pieces)
        pos = end
    pieces.append(text[pos:])
    return "".join(pieces)


def html_to_text(source: str) -> str:
    text = _drop_hidden(source) if "<" in source else source
    # A browser renders any whitespace run, newlines included, as one space (str.split is
    # much faster here than a regex whose first item is a character class).
    text = " ".join(text.split())
    text = _TAG.sub("", _BLOCK_TAG.sub("\n", text))
    if "&" in text:
        text = html.unescape(text)
    if not text.isascii() and INVISIBLE.search(text):
        text = INVISIBLE.sub("", text)
    if "\xa0" in text:
        text = text.replace("\xa0", " ")
    return _BREAKS.sub("\n", text).strip()

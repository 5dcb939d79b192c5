"""HTML to text for DLP, in linear time.

Two views in one text. First what a reader sees: inline tags vanish without a trace so
`4111<b>1111</b>` reads `41111111`; block tags become line breaks; named and numeric entities
are decoded after the tags are gone (so `&lt;b&gt;` stays text); what is never shown is left
out (comments, script, style, title, template, and elements hidden by the `hidden` attribute
or an inline `display:none`, `visibility:hidden` or `font-size:0`), so digits hidden between
the groups of a card number cannot break it. Then, after a blank line, that hidden content
and the text of `alt` and `title` attributes: it leaves with the message all the same, so the
detectors read it too.
"""

from __future__ import annotations

import html
import re

# Where content that is never shown begins: a comment, an element that is never rendered,
# or an element hidden by an attribute or inline style (not a void element: it holds nothing).
# `[^<>]` keeps the search linear on `<<<<...`.
_HIDDEN_OPEN = re.compile(
    r"<!--|<(script|style|title|template)\b[^<>]*>"
    r"|<(?!(?:area|base|br|col|embed|hr|img|input|link|meta|source|track|wbr)\b)([a-z][a-z0-9]*)"
    r"\b(?=[^<>]*?(?:\shidden(?=[\s/>=])|style\s*=\s*[\"']?[^<>\"']*?"
    r"(?:display\s*:\s*none|visibility\s*:\s*hidden|font-size\s*:\s*0+(?:\.0+)?(?![\d.]))))"
    r"[^<>]*>",
    re.IGNORECASE,
)
# Every start _HIDDEN_OPEN can match contains one of these (lower-cased): most mail has none
# of them, and looking for them is a tenth of the cost of the search itself.
_HIDDEN_MARKERS = ("<!--", "<script", "<style", "<title", "<template", "hidden", "display")
_HIDDEN_MARKERS += ("visibility", "font-size")
_COMMENT_END = re.compile("-->")
# Attributes whose text a reader sees: an image's alternative text, a tooltip. (Link targets
# are not read: newsletters carry long tracking numbers in them.)
_TEXT_ATTRIBUTE = re.compile(
    r"""<[^<>]*?\s(?:alt|title)\s*=\s*(?:"([^"<>]*)"|'([^'<>]*)'|([^\s"'<>=`]+))""", re.I
)
_CLOSE = {
    name: re.compile(f"</{name}\\b[^<>]*>", re.IGNORECASE)
    for name in ("script", "style", "title", "template")
}
# Block-level tags end a line; every other tag vanishes. `[^<>]` keeps both regexes linear
# on `<<<<...`: every attempt stops at the next `<`.
# The names are grouped by their first letters: Python's re tries an alternation in order,
# and the grouping halves the time spent on each tag. A namespace prefix is allowed, so
# XML dialects break lines the same way (OpenDocument's `text:p`, `text:h`, `table:table-cell`).
_BLOCK_TAG = re.compile(
    r"</?(?:[a-z][\w.-]*:)?(?:a(?:ddress|rticle|side)|b(?:lockquote|r)|d(?:[dlt]|iv)"
    r"|f(?:ieldset|ig(?:caption|ure)|o(?:oter|rm))|h(?:[1-6r]|eader)?|li|main|nav|ol|p(?:re)?"
    r"|section|t(?:able|body|[dhr]|foot|head)|ul)\b[^<>]*>",
    re.IGNORECASE,
)
_TAG = re.compile(r"<[^<>]*>")
_BREAKS = re.compile(r"\n[\n ]*")
# Zero-width and soft-hyphen characters: invisible when rendered, so they must not split
# a number for the detectors either.
INVISIBLE_CHARS = "\u00ad\u200b\u200c\u200d\u2060\ufeff"
INVISIBLE = re.compile(f"[{INVISIBLE_CHARS}]")


def _closing_tag(text: str, name: str, start: int) -> re.Match[str] | None:
    """The closing tag of the element opened just before `start`, counting nested elements
    of the same name; None when it is never closed."""
    tags = re.compile(f"<(/?){re.escape(name)}\\b[^<>]*>", re.IGNORECASE)
    depth = 1
    for tag in tags.finditer(text, start):
        depth += -1 if tag.group(1) else 1
        if depth == 0:
            return tag
    return None


def _split_hidden(text: str) -> tuple[str, list[str]]:
    """The shown text and the hidden pieces. An unterminated hidden element runs to the end
    of the text, as it does in a browser."""
    shown: list[str] = []
    hidden: list[str] = []
    pos = 0
    while m := _HIDDEN_OPEN.search(text, pos):
        shown.append(text[pos : m.start()])
        if m.group(1):
            close = _CLOSE[m.group(1).lower()].search(text, m.end())
        elif m.group(2):
            close = _closing_tag(text, m.group(2), m.end())
        else:
            close = _COMMENT_END.search(text, m.end())
        if close is None:
            hidden.append(text[m.end() :])
            return "".join(shown), hidden
        hidden.append(text[m.end() : close.start()])
        pos = close.end()
    shown.append(text[pos:])
    return "".join(shown), hidden


def _render(text: str) -> str:
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


def html_to_text(source: str) -> str:
    lowered = source.lower()
    if any(marker in lowered for marker in _HIDDEN_MARKERS):
        shown, hidden = _split_hidden(source)
    else:
        shown, hidden = source, []
    if "alt" in lowered or "title" in lowered:
        hidden += ["".join(m.groups("")) for m in _TEXT_ATTRIBUTE.finditer(source)]
    text = _render(shown)
    # Each hidden piece on lines of its own, so nothing in it joins what is shown.
    unseen = [rendered for piece in hidden if (rendered := _render(piece))]
    return "\n\n".join([text, *unseen]) if unseen else text

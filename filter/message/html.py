"""HTML to text for DLP, from a real HTML tokenizer (libxml2's, through lxml), in linear time.

Two views in one text. First what a reader sees: inline tags vanish without a trace so
`4111<b>1111</b>` reads `41111111`; block tags become line breaks; what is never shown is left
out (comments, script, style, title, template, and what the `hidden` attribute or an inline
style hides: `display:none`, `visibility:hidden`, a zero `font-size`), so digits hidden
between the groups of a card number cannot break it. Then, after a blank line, that hidden
content and the text of `alt` and `title` attributes: it leaves with the message all the
same, so the detectors read it too.

Why a parser: the tags used to be found with regexes over `[^<>]`, and a `>` inside a quoted
attribute (`<span title="a>b" style="display:none">`) ended the tag for them, not for a
browser. libxml2 (2.14 on) tokenizes as HTML5 says, and decodes entities in text and in
attribute values (`display:&#110;one` is `display:none`). Only its parse events are used, not
a tree: a tag out of place (a `<td>` outside a table) still breaks a line, and nesting depth
costs nothing. Inline styles are read as CSS is: comments and escapes decoded, the last
declaration of a property winning (`!important` first), and a child can show again what its
parent hid with the inherited `visibility` and `font-size` (not `display:none`).
"""

from __future__ import annotations

import contextlib
import functools
import re
import threading
from typing import Any

from lxml import etree

# Block-level elements end a line; every other tag vanishes. A namespace prefix is allowed, and
# a name that only starts with one of these counts too, so XML dialects break lines the same
# way (OpenDocument's `text:p`, `text:h`, `table:table-cell`).
_BLOCK = frozenset(
    "address article aside blockquote br dd div dl dt fieldset figcaption figure footer form "
    "h h1 h2 h3 h4 h5 h6 header hr li main nav ol p pre section table tbody td tfoot th thead "
    "tr ul".split()
)
_NAME_HEAD = re.compile(r"\w*")
# Elements whose content is never rendered.
_NEVER_SHOWN = frozenset({"script", "style", "title", "template"})
# A computed style, as bits: hidden when any is set.
_NONE, _INVISIBLE, _NO_FONT = 1, 2, 4
_CSS_COMMENT = re.compile(r"/\*.*?(?:\*/|$)", re.DOTALL)
_CSS_ESCAPE = re.compile(r"\\(?:([0-9a-fA-F]{1,6})[ \t\r\n\f]?|(.))", re.DOTALL)
_IMPORTANT = re.compile(r"!\s*important\s*$")
_ZERO = re.compile(r"[+-]?(?:0+\.?0*|\.0+)(?:[a-z]+|%)?")
# Font sizes that do not scale the parent's: they show text again under a zero font-size.
_ABSOLUTE_SIZE = re.compile(
    r"[+-]?(?:\d+\.?\d*|\.\d+)(?:px|pt|pc|in|cm|mm|q|rem|vw|vh|vmin|vmax)"
    r"|xx-small|x-small|small|medium|large|x-large|xx-large|xxx-large|initial"
)
_TEXT_ATTRIBUTES = ("alt", "title")  # an image's alternative text, a tooltip (not link targets)
_SURROGATES = re.compile("[\ud800-\udfff]")
# While pieces are collected: where a block begins or ends, and where any other tag stood
# (whitespace collapses between tags, not across them). Neither reaches here as text.
_BREAK, _TAG = "\x00", "\x01"
_BREAKS = re.compile(r"\n[\n ]*")
# What str.split() splits on besides the space (str.isspace), the ASCII ones apart. Unicode
# has none past U+3000 (a test checks every code point), so the search stops there.
SPACES = "".join(c for c in map(chr, range(0x3001)) if c.isspace() and c != " ")
_ASCII_SPACES = "".join(c for c in SPACES if c.isascii())
# Zero-width and soft-hyphen characters: invisible when rendered, so they must not split
# a number for the detectors either.
INVISIBLE_CHARS = "\u00ad\u200b\u200c\u200d\u2060\ufeff"
INVISIBLE = re.compile(f"[{INVISIBLE_CHARS}]")


@functools.cache
def _kind(tag: str) -> tuple[str, bool]:
    """What a tag leaves in the text (`_BREAK` or `_TAG`), and whether its element is never
    shown."""
    name = tag.rpartition(":")[2].lower()
    head = _NAME_HEAD.match(name)
    block = head is not None and head.group() in _BLOCK
    return (_BREAK if block else _TAG), name in _NEVER_SHOWN


def _css_char(escape: re.Match[str]) -> str:
    if escape[2] is not None:
        return escape[2]
    code = int(escape[1], 16)
    # As CSS decodes it: nothing that is not a character reads as one.
    return "\ufffd" if code == 0 or code > 0x10FFFF or 0xD800 <= code <= 0xDFFF else chr(code)


def _css_declarations(style: str) -> dict[str, str]:
    """An inline style's properties and the value each ends with: the last declaration wins,
    an `!important` one over any that is not."""
    style = style.lower()
    if "/*" in style:
        style = _CSS_COMMENT.sub("", style)
    if "\\" in style:
        style = _CSS_ESCAPE.sub(_css_char, style)
    values: dict[str, str] = {}
    important: set[str] = set()
    for declaration in style.split(";"):
        name, colon, value = declaration.partition(":")
        if not colon:
            continue
        name, value = name.strip(), value.strip()
        forced = _IMPORTANT.search(value)
        if forced:
            value = value[: forced.start()].strip()
        if name in important and not forced:
            continue
        values[name] = value
        if forced:
            important.add(name)
    return values


@functools.lru_cache(maxsize=4096)
def _style_bits(style: str) -> tuple[int, int, bool]:
    """What an inline style does to the hiding bits: the bits it sets, the bits it clears,
    and whether it says what `display` is (which then decides over the `hidden` attribute).
    Mail repeats its styles, hence the cache."""
    declared = _css_declarations(style)
    sets = clears = 0
    display = declared.get("display")
    if display == "none":
        sets |= _NONE
    visibility = declared.get("visibility")
    if visibility in ("hidden", "collapse"):
        sets |= _INVISIBLE
    elif visibility in ("visible", "initial"):
        clears |= _INVISIBLE
    size = declared.get("font-size")
    if size is not None and _ZERO.fullmatch(size):
        sets |= _NO_FONT
    elif size is not None and _ABSOLUTE_SIZE.fullmatch(size):
        clears |= _NO_FONT
    return sets, clears, display is not None


def _computed(parent: int, attrib: Any) -> int:
    """An element's hiding bits from its parent's and its own attributes. `visibility` and
    `font-size` are inherited, so a child can undo them; `display:none` takes the subtree."""
    style = attrib.get("style")
    sets, clears, display = _style_bits(style) if style else (0, 0, False)
    if "hidden" in attrib and not display:
        sets |= _NONE
    return (parent | sets) & ~clears


class _Renderer:
    """lxml parser target: the text in document order, with `_BREAK` and `_TAG` where tags
    stood, and which stretches of it are hidden pieces (the rest is what is shown)."""

    def __init__(self, comments_as_markup: bool) -> None:
        # Comments are parsed as HTML in turn (Outlook renders `<!--[if mso]>` blocks), once.
        self.comments_as_markup = comments_as_markup
        self.pieces: list[str] = []
        # lxml calls this for every text node: the list's own append, no Python frame each.
        # lxml looks the target's methods up once, so `reset` empties this list, never swaps it.
        self.data = self.pieces.append
        self.reset()

    def reset(self) -> None:
        self.pieces.clear()
        # [start, end) in `pieces` of each hidden piece, in order; where the one text goes
        # into now began (None: text is shown now).
        self.hidden: list[tuple[int, int]] = []
        self.hiding_from: int | None = None
        self.attributes: list[str] = []
        self.states = [0]  # the hiding bits of each open element, the document's first

    def _into(self, state: int) -> None:
        if not state:
            if self.hiding_from is not None:
                self.hidden.append((self.hiding_from, len(self.pieces)))
                self.hiding_from = None
        elif self.hiding_from is None:
            self.hiding_from = len(self.pieces)

    def start(self, tag: str, attrib: Any) -> None:
        mark, never_shown = _kind(tag)
        parent = self.states[-1]
        state = parent
        if attrib:
            self.attributes += [attrib[name] for name in _TEXT_ATTRIBUTES if name in attrib]
            state = _computed(parent, attrib)
        if never_shown:
            state |= _NONE
        if state != parent:
            self._into(state)
        self.states.append(state)
        self.pieces.append(mark)

    def end(self, tag: str) -> None:
        self.pieces.append(_kind(tag)[0])
        state = self.states.pop()
        if state != self.states[-1]:
            self._into(self.states[-1])

    def comment(self, text: str) -> None:
        # HTML5 reads `<?...>` and `<![CDATA[...]]>` as comments. The first is markup (an XML
        # declaration, a processing instruction); the second is text in XML documents.
        if text.startswith("?"):
            return
        if text.startswith("[CDATA["):
            self.pieces.append(text[7:].removesuffix("]]"))
            return
        if self.comments_as_markup and "<" in text:
            text = _parse(text, nested=True).text().replace("\n", _BREAK)
        if self.hiding_from is None:  # in shown text: the comment is a hidden piece alone
            self.hidden.append((len(self.pieces), len(self.pieces) + 1))
        self.pieces.append(text)

    def close(self) -> _Renderer:
        return self

    def text(self) -> str:
        """Everything as one text, hidden pieces after what is shown."""
        pieces, hidden = self.pieces, self.hidden
        if self.hiding_from is not None:  # a document can end inside a hidden element
            hidden = [*hidden, (self.hiding_from, len(pieces))]
        shown: list[str] = []
        at = 0
        for start, end in hidden:
            shown += pieces[at:start]
            at = end
        unseen = [rendered for start, end in hidden if (rendered := _render(pieces[start:end]))]
        unseen += [rendered for value in self.attributes if (rendered := _render([value]))]
        text = _render([*shown, *pieces[at:]] if hidden else pieces)
        # Each hidden piece on lines of its own, so nothing in it joins what is shown.
        return "\n\n".join([text, *unseen]) if unseen else text


class _Parsers(threading.local):
    """Per thread, a parser for documents and one for the comments inside them, each with its
    renderer: lxml inspects a target when a parser is built, which costs more than parsing a
    short document, so they are built once."""

    def __init__(self) -> None:
        self.by_kind = {
            # huge_tree: libxml2 would drop an attribute value past 10 MB (and its alt text).
            nested: etree.HTMLParser(
                target=_Renderer(comments_as_markup=not nested),
                no_network=True,
                recover=True,
                huge_tree=True,
            )
            for nested in (False, True)
        }


_PARSERS = _Parsers()


def _parse(source: str, nested: bool = False) -> _Renderer:
    if not source.isascii():
        # Lone surrogates (from undecodable bytes) cannot be handed to libxml2 as UTF-8.
        source = _SURROGATES.sub("\ufffd", source)
    if _BREAK in source or _TAG in source:
        source = source.replace(_BREAK, "").replace(_TAG, "")
    parser = _PARSERS.by_kind[nested]
    renderer: _Renderer = parser.target
    renderer.reset()
    try:
        parser.feed(source)
    finally:
        # Always: a parser that stopped half-way would go on with the next document.
        with contextlib.suppress(etree.ParseError):
            parser.close()
    return renderer


def collapse_spaces(text: str) -> str:
    """`" ".join(text.split())`: every whitespace run as one space, none at the ends. Most
    text has single spaces only, once its other white space is spaces: that is found and made
    with a few scans in C, where str.split would make a string of every word."""
    if "  " not in text:
        if "\r\n" in text:
            text = text.replace("\r\n", " ")
        for space in _ASCII_SPACES if text.isascii() else SPACES:
            if space in text:
                text = text.replace(space, " ")
        if "  " not in text:
            return text.strip(" ")
    return " ".join(text.split())


def _render(pieces: list[str]) -> str:
    # A browser renders any whitespace run, newlines included, as one space.
    text = collapse_spaces("".join(pieces)).replace(_TAG, "")
    if _BREAK in text:
        text = _BREAKS.sub("\n", text.replace(_BREAK, "\n"))
    if not text.isascii() and INVISIBLE.search(text):
        text = INVISIBLE.sub("", text)
    return text.strip()


def html_to_text(source: str) -> str:
    if not source:
        return ""
    return _parse(source).text()

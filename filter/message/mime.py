"""Raw bytes to Message: one compat32 parse, then a bounded walk of every part, then a
pass that opens encrypted files with the passwords the message's text gives.

compat32 is used because it keeps header values raw (policy.default's header parser took
9 s on one 500 KB header); decoding is done here, with limits. The parser gets two guards
through its factory class: a linear boundary lookup (compat32's parameter splitter is
quadratic on a long Content-Type) and a nesting limit (every line passes through one
generator frame per nesting level, so 900 levels cost seconds per MB).

No corner goes unread: a multipart whose boundary never appears is read as the text it is
(its encoded pieces decoded as the parts they were), and what lies past a nesting limit is
found by a flat pass (an iterative walk of what the parser split, a loose reading of what
it left whole) and scanned as leaves; the limit is still reported (too_deep).
"""

from __future__ import annotations

import binascii
import re
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from email import errors as email_errors
from email import feedparser
from email import message as email_message
from email.feedparser import FeedParser
from email.policy import compat32
from itertools import chain, compress, count, islice
from operator import itemgetter
from typing import Any

from mailgate.filter.message.budget import ScanBudget
from mailgate.filter.message.headers import (
    decode_header,
    extensions_of,
    parse_params,
    raw_to_str,
    unfold,
)
from mailgate.filter.message.model import Message, Part, ScanLimits
from mailgate.filter.message.passwords import find_passwords
from mailgate.filter.message.readers.dispatch import (
    AttachmentInspector,
    Locked,
    is_folded,
    is_html,
)
from mailgate.filter.message.textview import render_text

# Multipart and message levels the parser descends into; deeper entities stay opaque leaves
# (and are reported too_deep). Real mail rarely goes past 10.
MAX_PARSER_NESTING = 32
# Header lines beyond this are cut before parsing (the decoded value is cut further).
MAX_HEADER_LINE = 64 << 10
_MAX_BOUNDARY_RECOVERIES = 8
_HEADER_END = re.compile(rb"\r?\n\r?\n")
_TEXT_HEADER_END = re.compile(r"\r?\n\r?\n")
_LONG_LINE = re.compile(rb"[^\n]{%d,}" % (MAX_HEADER_LINE + 1))
_BASE64_JUNK = re.compile(rb"[^A-Za-z0-9+/]")
_BOUNDARY_LINE = re.compile(r"^--([^\s]{1,200}?)(--)?[ \t]*\r?$", re.MULTILINE)
# Content-Transfer-Encoding as mail clients read it: its first word ("base64; x=y" is base64).
_FIRST_WORD = re.compile(r"\s*([^\s;()]+)")
_UU_ENCODINGS = ("x-uuencode", "uuencode", "x-uue", "uue")
_UU_BEGIN = re.compile(rb"^begin[ \t]+[0-7]{1,4}[ \t]+([^\r\n]*?)[ \t]*\r?$", re.MULTILINE)
# uudecode and mail clients take every character modulo 64 and a line's bytes as its length
# character says, ignoring what follows: decoded the same way, nothing is refused or dropped.
_UU_CHARS = bytes.maketrans(bytes(range(256)), bytes(((c - 32) & 63) + 32 for c in range(256)))
# Defects after which the parser saw a multipart's body as one opaque blob.
_HIDDEN_CONTENT_DEFECTS = (
    email_errors.StartBoundaryNotFoundDefect,
    email_errors.NoBoundaryInMultipartDefect,
)
# Reading text no boundary splits (see _Walker.loose): a delimiter-looking line ends a piece,
# a blank line a paragraph; a paragraph of header fields with a MIME field in it starts a
# part; a paragraph of long base64 lines is a part whose headers were lost.
_DELIMITER_LINE = re.compile(r"^--\S[^\n]*(?:\n|$)", re.MULTILINE)
_PARAGRAPH_BREAK = re.compile(r"\r?\n[ \t]*\r?\n")
_HEADER_PARAGRAPH = re.compile(r"[!-9;-~]+:[^\n]*(?:\n(?:[!-9;-~]+:|[ \t])[^\n]*)*\n?")
_MIME_FIELD = re.compile(r"^content-(?:type|transfer-encoding|disposition)[ \t]*:", re.I | re.M)
_BASE64_PARAGRAPH = re.compile(
    r"(?:[A-Za-z0-9+/]{40,}={0,2}[ \t]*\r?\n)*[A-Za-z0-9+/]{4,}={0,2}[ \t]*\r?\n?"
)
_MIN_LOOSE_BASE64 = 64
_LOST_HEADERS = (
    b"Content-Type: application/octet-stream\r\nContent-Transfer-Encoding: base64\r\n\r\n"
)
_MAX_HEADER_PARAGRAPH = 64 << 10
_ENCODINGS = ("base64", "quoted-printable", *_UU_ENCODINGS)


class _Entity(email_message.Message):
    """compat32 Message with the two parser guards described in the module docstring."""

    nesting = 0
    too_deep = False

    def get_boundary(self, failobj: object = None) -> object:  # type: ignore[override]
        value = raw_header(self, "content-type")
        if value is None:
            return failobj
        boundary = parse_params(unfold(value[:MAX_HEADER_LINE]))[1].get("boundary")
        return boundary.rstrip() if boundary else failobj

    def get_content_maintype(self) -> str:
        maintype = super().get_content_maintype()
        if maintype in ("multipart", "message"):
            if self.nesting > MAX_PARSER_NESTING:
                self.too_deep = True
                return "application"
            if maintype == "message" and _transfer_encoding(self) in ("base64", "quoted-printable"):
                return "application"  # an encoded message is decoded and parsed by the walk
        return maintype


# How the feed parser's boundary patterns begin: the escaped "--" of its separator.
_BOUNDARY_PATTERNS = ("(?P<sep>" + re.escape("--"), "(?P<sep>--")


# How a line that may end a part begins: a boundary's "--", or a line end (the blank line
# that ends a delivery-status block); or it is no line at all, the "" that the parser pushes
# back at the end of its input.
_MAYBE_END = frozenset(("-", "\r", "\n", ""))
_FIRST_CHARACTER = itemgetter(slice(0, 1))
# Where str.splitlines breaks a line besides \n and \r (the feed parser's StringIO does not).
_OTHER_LINE_BREAKS = ("\x0b", "\x0c", "\x1c", "\x1d", "\x1e", "\x85", "\u2028", "\u2029")


class _LineBuffer(feedparser.BufferedSubFile):
    """The feed parser's line buffer, with its false-EOF test run only where it can match.

    Every line of every body passes through readline(), which runs each pushed matcher on
    it. The parser pushes two kinds: a multipart boundary (its pattern begins with the
    literal "--") and, in delivery-status bodies, the blank-line test. A line that starts
    with neither "--" nor a line end can match neither, so it skips them; the parser's
    `for line in buffer` loops (headers, bodies) get such lines in runs, read by C code
    (two Python calls a line were most of the parse). A matcher of any other kind (a future
    parser's) turns the shortcuts off, keeping the result exact."""

    def __init__(self) -> None:
        super().__init__()
        self._known_matchers = True
        # Set by the parser as it begins an entity: the next loop over the buffer reads its
        # header lines (each line matters); every other loop reads a body, which the parser
        # only joins.
        self.headers_next = False

    def push_eof_matcher(self, pred: Callable[[str], object]) -> None:
        pattern = getattr(getattr(pred, "__self__", None), "pattern", None)
        if not (
            isinstance(pattern, str)
            and (pattern.startswith(_BOUNDARY_PATTERNS) or pattern == feedparser.NLCRE.pattern)
        ):
            self._known_matchers = False
        super().push_eof_matcher(pred)

    def push(self, data: str) -> None:
        """The stock push splits `data` into lines through a StringIO, which copies it twice;
        str.splitlines splits it the same way (after LF, CRLF or a lone CR) unless the text
        holds one of the other line breaks splitlines knows, or a partial line waits."""
        if self._partial.tell() or any(c in data for c in _OTHER_LINE_BREAKS):
            super().push(data)
            return
        lines = data.splitlines(True)
        # As in the stock push, a last line without an LF waits for the rest (a CR at the
        # end may be the first half of a CRLF).
        if lines and not lines[-1].endswith("\n"):
            self._partial.write(lines.pop())
        self.pushlines(lines)

    def readline(self) -> str | object:
        if self._lines and self._known_matchers:
            line: str = self._lines[0]
            if line[:1] not in _MAYBE_END:
                return self._lines.popleft()
        return super().readline()

    def __iter__(self) -> Iterator[str | object]:
        """The lines readline() would return, taken off the buffer only as the loop asks for
        them (the header loop stops early and leaves the rest where it was): those that
        cannot end a part in runs, each other one through readline(). A body loop gets each
        run as one string: it only appends what it reads and joins it at the end."""
        if not self._known_matchers:
            return self
        headers, self.headers_next = self.headers_next, False
        return chain.from_iterable(self._runs(joined=not headers))

    def _runs(self, joined: bool) -> Iterator[Iterable[str | object]]:
        lines = self._lines
        take = iter(lines.popleft, None)  # a deque never holds None: pops until told to stop
        while True:
            # The lines before the first that may be a part's end (or all of them).
            ends = map(_MAYBE_END.__contains__, map(_FIRST_CHARACTER, lines))
            run = next(compress(count(), ends), len(lines))
            if run:
                yield ("".join(islice(take, run)),) if joined else islice(take, run)
            line = super().readline()
            if line == "":
                return
            yield (line,)


class _LineEndAtEnd:
    """The feed parser's `NLCRE_eol` (a line end at the very end of a text), searched from two
    characters before the end: the same match, as none can begin earlier, without the scan
    of the whole text that its search makes. The parser searches every part's body so."""

    def __init__(self, pattern: re.Pattern[str]) -> None:
        self.pattern = pattern

    def search(self, text: str) -> re.Match[str] | None:
        return self.pattern.search(text, max(0, len(text) - 2))


if not isinstance(feedparser.NLCRE_eol, _LineEndAtEnd):  # a module global: once per process
    feedparser.NLCRE_eol = _LineEndAtEnd(feedparser.NLCRE_eol)  # type: ignore[assignment]


class _BoundedFeedParser(FeedParser):
    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._input = _LineBuffer()

    def _new_message(self) -> None:
        super()._new_message()
        self._cur.nesting = len(self._msgstack)  # type: ignore[attr-defined]
        self._input.headers_next = True  # type: ignore[attr-defined]

    @property
    def current(self) -> email_message.Message:
        """The entity being parsed: after feeding a header block, the one it belongs to."""
        return self._cur  # type: ignore[no-any-return]


def raw_header(entity: email_message.Message, name: str) -> str | None:
    """First value of a header as parsed (compat32's get() wraps 8-bit values in Header)."""
    for key, value in entity.raw_items():
        if key.lower() == name:
            return str(value)
    return None


def _body(entity: email_message.Message) -> object:
    """The payload as parsed (a str, or a list of entities). get_payload() would re-decode
    8-bit text with errors='replace' via compat32's quadratic parameter splitter."""
    return entity._payload


def _transfer_encoding(entity: email_message.Message) -> str:
    value = raw_header(entity, "content-transfer-encoding")
    word = _FIRST_WORD.match(value) if value is not None else None
    return word.group(1).lower()[:64] if word else ""


def _cut_long_header_lines(raw: bytes, limits: ScanLimits) -> tuple[bytes, bool]:
    """Bound the top-level header block before the parser sees it."""
    end = _HEADER_END.search(raw, 0, limits.max_header_bytes)
    head_end = end.start() if end else min(len(raw), limits.max_header_bytes)
    head = raw[:head_end]
    cut = False
    if len(head) > MAX_HEADER_LINE and _LONG_LINE.search(head):
        head = _LONG_LINE.sub(lambda m: m.group(0)[:MAX_HEADER_LINE], head)
        cut = True
    if end is None and len(raw) > limits.max_header_bytes:
        # No end of headers within the allowance: the rest is read as body.
        return head + b"\r\n\r\n" + raw[head_end:], True
    return (head + raw[head_end:], cut) if cut else (raw, False)


def parse_entity(data: bytes) -> email_message.Message:
    text = data.decode("ascii", "surrogateescape")
    end = _TEXT_HEADER_END.search(text)
    if end is None:
        return _feed(text)
    parser = _BoundedFeedParser(_factory=_Entity, policy=compat32)
    # Most mail is a single part: parse its headers only, and hand the body over whole
    # instead of letting the feed parser split it into lines and join them again. The
    # parsed Content-Type decides; anything multipart or message is fed on to the same
    # parser (it takes its input in pieces), so the headers are parsed once either way.
    parser.feed(text[: end.end()])
    entity = parser.current
    # A line that is not a header began the body early (a defect): the full path.
    if entity.defects or entity.get_content_maintype() in ("multipart", "message"):
        parser.feed(text[end.end() :])
        return parser.close()
    entity = parser.close()
    if entity.get_payload():  # the headers had ended earlier (a blank first line)
        return _feed(text)
    entity.set_payload(text[end.end() :])
    return entity


def _feed(text: str) -> email_message.Message:
    parser = _BoundedFeedParser(_factory=_Entity, policy=compat32)
    parser.feed(text)
    return parser.close()


def decode_transfer(body: str, encoding: str) -> bytes:
    """Undo a transfer encoding, tolerating bad padding, junk and 8-bit bytes."""
    if encoding == "base64":
        data = body.encode("ascii", "ignore")
        try:
            return binascii.a2b_base64(data)
        except (binascii.Error, ValueError):
            data = _BASE64_JUNK.sub(b"", data)
            data = data[: len(data) - (len(data) % 4 == 1)]
            return binascii.a2b_base64(data + b"=" * (-len(data) % 4))
    raw = body.encode("utf-8", "surrogateescape")
    if encoding == "quoted-printable":
        return binascii.a2b_qp(raw)
    if encoding in _UU_ENCODINGS:
        return _decode_uu(raw)
    return raw


def _decode_uu(raw: bytes) -> bytes:
    """A part declared uuencoded: its files decoded, with any text around them kept (a
    client that does not decode shows that text); without a begin line, the body as it is,
    which is what such a client shows."""
    pieces: list[bytes] = []
    position = 0
    for _name, content, start, end in uuencoded_files(raw):
        if raw[position:start].strip():
            pieces.append(raw[position:start])
        pieces.append(content)
        position = end
    if not position:
        return raw
    if raw[position:].strip():
        pieces.append(raw[position:])
    return b"".join(pieces)


def uuencoded_files(data: bytes) -> Iterator[tuple[str, bytes, int, int]]:
    """(name, content, start, end) of each uuencoded file in `data`: from a "begin MODE
    NAME" line to the "end" line, or to the end of the data."""
    position = 0
    while (begin := _UU_BEGIN.search(data, position)) is not None:
        name = begin.group(1).decode("utf-8", "replace")
        lines: list[bytes] = []
        cursor = begin.end() + 1
        end = len(data)
        while cursor < len(data):
            newline = data.find(b"\n", cursor)
            stop = len(data) if newline < 0 else newline + 1
            line = data[cursor:stop].rstrip(b"\r\n")
            cursor = stop
            if line.strip() == b"end":
                end = stop
                break
            lines.append(_uu_line(line))
        yield name, b"".join(lines), begin.start(), end
        position = end


def _uu_line(line: bytes) -> bytes:
    if not line:
        return b""
    count = (line[0] - 32) & 63
    encoded = line[1 : 1 + (count + 2) // 3 * 4].translate(_UU_CHARS)
    return binascii.a2b_uu(bytes([count + 32]) + encoded)


def _guess_boundary(body: str) -> str | None:
    """The boundary a multipart without a (matching) boundary parameter actually uses:
    the first delimiter-looking line that occurs again."""
    for m in _BOUNDARY_LINE.finditer(body, 0, 1 << 16):
        candidate = m.group(1)
        if body.count("\n--" + candidate, m.end()) or m.group(2):
            return candidate
    return None


def _child_path(path: str, index: int) -> str:
    return f"{path}.{index}" if path else str(index)


class _Walker:
    def __init__(self, limits: ScanLimits) -> None:
        self.limits = limits
        self.budget = ScanBudget(limits)
        self.inspector = AttachmentInspector(self.budget, self._embedded)
        self.parts: list[Part] = []
        self.unscannable: set[str] = set()
        self.recoveries = 0
        # Past the nesting limit: trees waiting for the flat pass, drained by whichever call
        # started it, so a chain of ever deeper messages loops instead of recursing.
        self.deep: deque[tuple[email_message.Message | bytes, str, int]] = deque()
        self.flattening = False

    def _header(self, entity: email_message.Message, name: str) -> str:
        value = raw_header(entity, name)
        if value is None:
            return ""
        return unfold(value[: self.limits.max_header_value])

    def _embedded(self, payload: bytes, path: str, depth: int) -> list[Part]:
        """Parts of an .eml attachment (or an encoded message/rfc822), as an attached message;
        past the depth limit, as the flat pass finds them."""
        start = len(self.parts)
        if depth > self.limits.max_depth:
            self.unscannable.add("too_deep")
            self._past_limit(payload, path, depth)
        else:
            self.walk(parse_entity(payload), path, depth, message_root=True)
        found = self.parts[start:]
        del self.parts[start:]
        return found

    def _past_limit(self, source: email_message.Message | bytes, path: str, depth: int) -> None:
        """Every part below an entity (or in a message's bytes) past the nesting limit, found
        by the flat pass."""
        self.deep.append((source, path, depth))
        if self.flattening:
            return
        self.flattening = True
        try:
            while self.deep:
                # Each level's payload is decoded anew from the one above: the decoded-bytes
                # allowance bounds what a chain of nested files costs.
                if self.budget.bytes_left <= 0:
                    self.unscannable.add("over_budget")
                    self.deep.clear()
                    break
                source, where, level = self.deep.popleft()
                if isinstance(source, bytes):
                    self._flat_bytes(source, where, level)
                else:
                    self._flat(source, where, level)
        finally:
            self.flattening = False

    def _flat_bytes(self, data: bytes, path: str, depth: int) -> None:
        """A saved message past the limit, read loosely in one linear pass: parsing it would
        cost as much again for every level of message inside it."""
        part = self._new_part(_child_path(path, 1))
        if part is None:
            return
        part.content_type, part.depth = "message/rfc822", depth
        self.parts.append(part)
        self.loose(part, data, depth, None)

    def _flat(self, root: email_message.Message, path: str, depth: int) -> None:
        """The tree under `root` walked with a stack instead of level by level: each message's
        headers read as text, each leaf scanned as a leaf of this level (an entity the parser
        left whole past its own nesting limit is read loosely: see `loose`)."""
        stack = [(root, path)]
        while stack:
            node, node_path = stack.pop()
            body = _body(node)
            if not isinstance(body, list):
                self.walk(node, node_path, depth, message_root=False)
                continue
            ctype, _params = self._content_type(node)
            children = [c for c in body if isinstance(c, email_message.Message)]
            if ctype.startswith("message/") and children:
                part = self._new_part(node_path)
                if part is None:
                    return
                part.content_type, part.depth = ctype, depth
                self.parts.append(part)
                self.inspector.set_text(part, self._header_lines(children[:1]))
            stack.extend(
                (child, _child_path(node_path, index))
                for index, child in reversed(list(enumerate(children, 1)))
            )

    def walk(
        self, entity: email_message.Message, path: str, depth: int, message_root: bool
    ) -> None:
        ctype, params = self._content_type(entity)
        payload = _body(entity)
        if isinstance(payload, list) and ctype == "message/delivery-status":
            self._delivery_status(payload, path or "1", depth)
        elif isinstance(payload, list) and ctype.startswith("message/"):
            self._attached_message(entity, payload, path or "1", depth, params)
        elif isinstance(payload, list):
            self._outside_boundaries(entity, "preamble", path, depth)
            for index, child in enumerate(payload, 1):
                if isinstance(child, email_message.Message):
                    self.walk(child, _child_path(path, index), depth, message_root=False)
            self._outside_boundaries(entity, "epilogue", path, depth)
        elif ctype.startswith("multipart/") and self._recover_multipart(entity, path, depth):
            return
        else:
            leaf_path = _child_path(path, 1) if message_root else path or "1"
            if getattr(entity, "too_deep", False):
                self._too_deep(entity, leaf_path, depth, ctype)
            elif ctype.startswith("multipart/"):
                self._lump(entity, leaf_path, depth, ctype, params)
            else:
                self._leaf(entity, leaf_path, depth, ctype, params)

    def _outside_boundaries(
        self, entity: email_message.Message, which: str, path: str, depth: int
    ) -> None:
        """A multipart's preamble or epilogue (text before the first or after the last
        boundary) as a text part: MIME clients hide it, but it leaves with the message and
        shows in any plain reader, so a card number there leaks like one in the body."""
        text = getattr(entity, which, None)
        if not text or text.isspace():
            return
        part = self._new_part(f"{path}.{which}" if path else which)
        if part is None:
            return
        part.content_type = "text/plain"
        part.depth = depth
        self.parts.append(part)
        self.inspector.set_text(part, render_text(text.encode("ascii", "surrogateescape"), None))

    def _content_type(self, entity: email_message.Message) -> tuple[str, dict[str, str]]:
        value = self._header(entity, "content-type")
        ctype, params = parse_params(raw_to_str(value)) if value else ("", {})
        if ctype.count("/") != 1:
            ctype = entity.get_default_type()
        return ctype, params

    def _recover_multipart(self, entity: email_message.Message, path: str, depth: int) -> bool:
        """A multipart the parser could not split hides its parts: try again with the
        boundary its body actually uses (False: there is none, read it as a lump)."""
        if getattr(entity, "too_deep", False):
            return False
        if not any(isinstance(d, _HIDDEN_CONTENT_DEFECTS) for d in entity.defects):
            return False
        body = _body(entity)
        if not isinstance(body, str) or self.recoveries >= _MAX_BOUNDARY_RECOVERIES:
            return False
        boundary = _guess_boundary(body)
        if boundary is None:
            return False
        self.recoveries += 1
        header = f'Content-Type: multipart/mixed; boundary="{boundary}"\r\n\r\n'
        rebuilt = parse_entity((header + body).encode("ascii", "surrogateescape"))
        if not isinstance(_body(rebuilt), list):
            return False
        self.walk(rebuilt, path, depth, message_root=False)
        return True

    def _lump(
        self,
        entity: email_message.Message,
        path: str,
        depth: int,
        ctype: str,
        params: dict[str, str],
    ) -> None:
        """A multipart whose boundary never appears: a client that cannot split it shows the
        text it is, so it is read as that text, and its encoded pieces as the parts they
        were (see `loose`)."""
        part = self._decoded(entity, path, depth, ctype)
        if part is None:
            return
        self.parts.append(part)
        self.loose(part, part.payload, depth, params.get("charset"))

    def _decoded(
        self, entity: email_message.Message, path: str, depth: int, ctype: str
    ) -> Part | None:
        """A new part holding the entity's body with its transfer encoding undone."""
        part = self._new_part(path)
        if part is None:
            return None
        body = _body(entity)
        payload = decode_transfer(body if isinstance(body, str) else "", _transfer_encoding(entity))
        self.budget.charge_bytes(len(payload))
        part.content_type = ctype
        part.payload = payload
        part.size = len(payload)
        part.depth = depth
        return part

    def _too_deep(self, entity: email_message.Message, path: str, depth: int, ctype: str) -> None:
        """A multipart or message past the parser's nesting limit, left whole: reported
        too_deep, and read loosely so that every part in it is still scanned as a leaf."""
        part = self._new_part(path)
        if part is None:
            return
        body = _body(entity)
        payload = body.encode("ascii", "surrogateescape") if isinstance(body, str) else b""
        part.content_type = ctype
        part.payload = payload
        part.size = len(payload)
        part.depth = depth
        part.unscannable.add("too_deep")
        self.parts.append(part)
        self.loose(part, payload, depth, None)

    def loose(self, container: Part, data: bytes, depth: int, charset: str | None) -> None:
        """Read text that no boundary splits: each piece between delimiter-looking lines, by
        paragraphs. A paragraph of header fields with a MIME field starts a part: a file or
        an encoded part (base64, quoted-printable, uuencode) becomes a leaf with its body,
        the paragraphs up to the next such header; a multipart's or message's headers only
        say that more follows. A paragraph of base64 lines is a leaf whose headers were lost.
        All the rest, headers included, is the container's text; an encoded body is not
        (it is read decoded, in its leaf)."""
        text = data.decode("ascii", "surrogateescape")
        leftover: list[str] = []
        leaves: list[email_message.Message] = []
        # Each part found costs a header parse: no more of them than parts are left.
        room = self.limits.max_parts - self.budget.part_count
        for segment in _DELIMITER_LINE.split(text):
            paragraphs = _PARAGRAPH_BREAK.split(segment)
            index = 0
            while index < len(paragraphs):
                paragraph = paragraphs[index]
                index += 1
                header = _is_mime_header(paragraph)
                lost = not header and _is_base64_paragraph(paragraph)
                if (header or lost) and room <= 0:
                    container.unscannable.add("over_budget")
                    header = lost = False
                if header:
                    room -= 1
                    head = parse_entity(_loose_bytes(paragraph.rstrip("\r\n") + "\r\n\r\n"))
                    leftover.append(paragraph)
                    if head.get_content_maintype() in ("multipart", "message"):
                        continue
                    if self._is_file(head):
                        end = _body_end(paragraphs, index, _transfer_encoding(head))
                        head.set_payload("\r\n\r\n".join(paragraphs[index:end]))
                        leaves.append(head)
                        index = end
                elif lost:
                    room -= 1
                    leaves.append(parse_entity(_LOST_HEADERS))
                    leaves[-1].set_payload(paragraph)
                else:
                    leftover.append(paragraph)
        rest = "\n\n".join(p for p in leftover if p.strip())
        if rest:
            self.inspector.set_text(container, render_text(_loose_bytes(rest), charset))
        for number, leaf in enumerate(leaves, 1):
            ctype, params = self._content_type(leaf)
            self._leaf(leaf, _child_path(container.path, number), depth, ctype, params)

    def _is_file(self, entity: email_message.Message) -> bool:
        """A file or an encoded part: what a loose reading makes a leaf of."""
        ctype, params = self._content_type(entity)
        filename, _extensions, disposition = self._names(entity, params)
        return (
            _transfer_encoding(entity) in _ENCODINGS
            or bool(filename)
            or disposition == "attachment"
            or not ctype.startswith("text/")
        )

    def _new_part(self, path: str) -> Part | None:
        if not self.budget.take_part():
            self.unscannable.add("over_budget")
            return None
        return Part(path=path)

    def _names(
        self, entity: email_message.Message, params: dict[str, str]
    ) -> tuple[str | None, tuple[str, ...], str]:
        """The file name (Content-Disposition's, else Content-Type's), the extensions of both
        names, and the disposition. Clients differ in which name they use to save and open
        a file, so `notes.txt` beside `name="run.bat"` has the extensions txt and bat."""
        disposition = self._header(entity, "content-disposition")
        kind, dparams = parse_params(raw_to_str(disposition)) if disposition else ("", {})
        limit = self.limits.max_header_value
        names = [n[:limit] for n in (dparams.get("filename"), params.get("name")) if n]
        if not names:
            return None, (), kind
        # The other name's extensions go first: code that asks for the last extension
        # (`.html`, `.eml`) means the name the part is saved under.
        primary = extensions_of(names[0])
        others = tuple(e for name in names[1:] for e in extensions_of(name) if e not in primary)
        return names[0], tuple(dict.fromkeys(others)) + primary, kind

    def _header_lines(self, entities: list[email_message.Message]) -> str:
        return "\n".join(
            f"{raw_to_str(name)}: {decode_header(str(value), self.limits.max_header_value)}"
            for entity in entities
            for name, value in entity.raw_items()
        )

    def _delivery_status(self, blocks: list[email_message.Message], path: str, depth: int) -> None:
        """A bounce report: blocks of header fields, read as one text part."""
        part = self._new_part(path)
        if part is None:
            return
        part.content_type = "message/delivery-status"
        part.depth = depth
        self.parts.append(part)
        self.inspector.set_text(part, self._header_lines(blocks))

    def _attached_message(
        self,
        entity: email_message.Message,
        payload: list[email_message.Message],
        path: str,
        depth: int,
        params: dict[str, str],
    ) -> None:
        part = self._new_part(path)
        if part is None:
            return
        filename, extensions, disposition = self._names(entity, params)
        part.content_type = "message/rfc822"
        part.filename = filename
        part.extensions = extensions
        part.is_attachment = bool(filename) or disposition == "attachment"
        part.depth = depth
        self.parts.append(part)
        if entity.get_content_type() == "message/partial":
            part.unscannable.add("fragment")
        if not payload:
            return
        inner = payload[0]
        # The attached message's headers are text the recipient sees (its Subject, From...).
        self.inspector.set_text(part, self._header_lines([inner]))
        if depth + 1 > self.limits.max_depth:
            part.unscannable.add("too_deep")
            self._past_limit(inner, path, depth + 1)
            return
        self.walk(inner, path, depth + 1, message_root=True)

    def _leaf(
        self,
        entity: email_message.Message,
        path: str,
        depth: int,
        ctype: str,
        params: dict[str, str],
    ) -> None:
        part = self._decoded(entity, path, depth, ctype)
        if part is None:
            return
        payload, encoding = part.payload, _transfer_encoding(entity)
        filename, extensions, disposition = self._names(entity, params)
        part.filename = filename
        part.extensions = extensions
        part.is_attachment = (
            bool(filename) or disposition == "attachment" or not ctype.startswith("text/")
        )
        self.parts.append(part)
        charset = params.get("charset")
        if ctype.startswith("message/") and encoding in ("base64", "quoted-printable"):
            part.is_attachment = True
            self.parts.extend(self._embedded(payload, path, depth + 1))
        elif part.is_attachment:
            self.parts.extend(self.inspector.inspect(part, charset))
        else:
            flowed = ctype == "text/plain" and params.get("format", "").lower() == "flowed"
            text = render_text(
                payload,
                charset,
                html=is_html(part),
                flowed=flowed,
                delsp=params.get("delsp", "").lower() == "yes",
                folded=is_folded(part),
            )
            self.inspector.set_text(part, text)
            if ctype == "text/plain" and encoding not in _UU_ENCODINGS and b"begin " in payload:
                self.parts.extend(self._inline_files(payload, path, depth))

    def _inline_files(self, payload: bytes, path: str, depth: int) -> list[Part]:
        """uuencoded files in a plain text body: Outlook and Thunderbird show them as
        attachments, so they are read as attachments (path "1/name")."""
        found: list[Part] = []
        for name, content, _start, _end in uuencoded_files(payload):
            part = self._new_part(f"{path}/{name}")
            if part is None:
                break
            self.budget.charge_bytes(len(content))
            part.filename = name
            part.extensions = extensions_of(name)
            part.is_attachment = True
            part.payload = content
            part.size = len(content)
            part.depth = depth
            found.append(part)
            found.extend(self.inspector.inspect(part, None))
        return found

    def unlock(self, subjects: list[str]) -> None:
        """The second pass, once every text has been read: the encrypted files found, tried
        with the passwords in the message's text (Subject, body, any other part, earlier or
        later than the file), at most `max_locked_files` of them. What opens replaces its
        locked members and is scanned like any other content; a file some candidates were
        never tried on (trials or seconds used up) is also over_budget."""
        locked = self.inspector.locked
        if not locked:
            return
        limit = self.limits.max_password_candidates
        passwords = find_passwords([*subjects, *(p.text for p in self.parts if p.text)], limit)
        if not passwords:
            return
        tried = 0
        while locked:  # opening a file can find more locked ones inside it
            entry = locked.popleft()
            if tried >= self.limits.max_locked_files:
                entry.part.unscannable.add("over_budget")
                continue
            tried += 1
            self.budget.start_unlocking()
            found = self.inspector.unlock(entry, passwords)
            if found is None:
                if self.budget.unlock_cut_short:
                    entry.part.unscannable.add("over_budget")
                continue
            self._replace(entry, found)
            more = find_passwords((p.text for p in found if p.text), limit)
            passwords = list(dict.fromkeys([*passwords, *more]))[:limit]

    def _replace(self, entry: Locked, found: list[Part]) -> None:
        """Put what an opened file holds where its locked members were (after the file when
        none were listed: a 7z whose names were encrypted too, a PDF, an Office file)."""
        stale = {id(p) for p in entry.placeholders}
        at = next((i for i, p in enumerate(self.parts) if id(p) in stale), None)
        if at is None:
            at = next((i + 1 for i, p in enumerate(self.parts) if p is entry.part), len(self.parts))
        before = [p for p in self.parts[:at] if id(p) not in stale]
        after = [p for p in self.parts[at:] if id(p) not in stale]
        self.budget.part_count -= len(self.parts) - len(before) - len(after)
        self.parts = [*before, *found, *after]


def _body_end(paragraphs: list[str], start: int, encoding: str) -> int:
    """Where a loose part's body ends: at the next part's headers; base64 has no blank line
    inside, so its body is one paragraph."""
    last = min(len(paragraphs), start + 1 if encoding == "base64" else len(paragraphs))
    end = start
    while end < last and not _is_mime_header(paragraphs[end]):
        end += 1
    return end


def _is_base64_paragraph(paragraph: str) -> bool:
    return (
        len(paragraph) >= _MIN_LOOSE_BASE64 and _BASE64_PARAGRAPH.fullmatch(paragraph) is not None
    )


def _is_mime_header(paragraph: str) -> bool:
    return (
        len(paragraph) <= _MAX_HEADER_PARAGRAPH
        and _MIME_FIELD.search(paragraph) is not None
        and _HEADER_PARAGRAPH.fullmatch(paragraph) is not None
    )


def _loose_bytes(text: str) -> bytes:
    return text.encode("ascii", "surrogateescape")


def parse_message(raw: bytes, limits: ScanLimits | None = None) -> Message:
    """Parse raw bytes into a Message. Never raises: an input the parser cannot take at all
    becomes one opaque part (its bytes as text, for DLP) with the reason 'malformed'."""
    limits = limits or ScanLimits()
    message = Message(raw=raw)
    try:
        data, cut = _cut_long_header_lines(raw, limits)
        root = parse_entity(data)
        message.headers = [
            (raw_to_str(name)[:256], decode_header(str(value), limits.max_header_value))
            for name, value in root.raw_items()
        ]
        walker = _Walker(limits)
        walker.walk(root, "", 0, message_root=True)
        walker.unlock([v for k, v in message.headers if k.lower() == "subject"])
        message.parts = walker.parts
        message.unscannable = set(walker.unscannable)
        if cut:
            message.unscannable.add("over_budget")
    except Exception:  # the last line of defence: no input may crash the engine
        message.parts = [
            Part(
                path="1",
                payload=raw,
                size=len(raw),
                text=raw[: limits.max_text_chars].decode("latin-1"),
                unscannable={"malformed"},
            )
        ]
        message.unscannable = {"malformed"}
    for part in message.parts:
        message.unscannable |= part.unscannable
    return message

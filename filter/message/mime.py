"""Raw bytes to Message: one compat32 parse, then a bounded walk of every part.

compat32 is used because it keeps header values raw (policy.default's header parser took
9 s on one 500 KB header); decoding is done here, with limits. The parser gets two guards
through its factory class: a linear boundary lookup (compat32's parameter splitter is
quadratic on a long Content-Type) and a nesting limit (every line passes through one
generator frame per nesting level, so 900 levels cost seconds per MB).
"""

from __future__ import annotations

import binascii
import re
from collections.abc import Callable, Iterator
from email import errors as email_errors
from email import feedparser
from email import message as email_message
from email.feedparser import FeedParser
from email.policy import compat32
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
from mailgate.filter.message.readers.dispatch import AttachmentInspector, is_folded, is_html
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


class _LineBuffer(feedparser.BufferedSubFile):
    """The feed parser's line buffer, with its false-EOF test run only where it can match.

    Every line of every body passes through readline(), which runs each pushed matcher on
    it. The parser pushes two kinds: a multipart boundary (its pattern begins with the
    literal "--") and, in delivery-status bodies, the blank-line test. A line that starts
    with neither "--" nor a line end can match neither, so it skips them. A matcher of any
    other kind (a future parser's) turns the shortcut off, keeping the result exact."""

    def __init__(self) -> None:
        super().__init__()
        self._known_matchers = True

    def push_eof_matcher(self, pred: Callable[[str], object]) -> None:
        pattern = getattr(getattr(pred, "__self__", None), "pattern", None)
        if not (
            isinstance(pattern, str)
            and (pattern.startswith(_BOUNDARY_PATTERNS) or pattern == feedparser.NLCRE.pattern)
        ):
            self._known_matchers = False
        super().push_eof_matcher(pred)

    def readline(self) -> str | object:
        if self._lines and self._known_matchers:
            line: str = self._lines[0]
            if line[:1] not in ("-", "\r", "\n"):
                return self._lines.popleft()
        return super().readline()


class _BoundedFeedParser(FeedParser):
    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._input = _LineBuffer()

    def _new_message(self) -> None:
        super()._new_message()
        self._cur.nesting = len(self._msgstack)  # type: ignore[attr-defined]

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

    def _header(self, entity: email_message.Message, name: str) -> str:
        value = raw_header(entity, name)
        if value is None:
            return ""
        return unfold(value[: self.limits.max_header_value])

    def _embedded(self, payload: bytes, path: str, depth: int) -> list[Part]:
        """Parts of an .eml attachment (or an encoded message/rfc822), as an attached message."""
        if depth > self.limits.max_depth:
            self.unscannable.add("too_deep")
            return []
        start = len(self.parts)
        entity = parse_entity(payload)
        self.walk(entity, path, depth, message_root=True)
        found = self.parts[start:]
        del self.parts[start:]
        return found

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
        """A multipart the parser could not split hides its parts: report it malformed and
        try again with the boundary its body actually uses."""
        if getattr(entity, "too_deep", False):
            return False
        if not any(isinstance(d, _HIDDEN_CONTENT_DEFECTS) for d in entity.defects):
            return False
        self.unscannable.add("malformed")
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
        if depth + 1 > self.limits.max_depth:
            part.unscannable.add("too_deep")
            return
        if not payload:
            return
        inner = payload[0]
        # The attached message's headers are text the recipient sees (its Subject, From...).
        self.inspector.set_text(part, self._header_lines([inner]))
        self.walk(inner, path, depth + 1, message_root=True)

    def _leaf(
        self,
        entity: email_message.Message,
        path: str,
        depth: int,
        ctype: str,
        params: dict[str, str],
    ) -> None:
        part = self._new_part(path)
        if part is None:
            return
        body = _body(entity)
        if not isinstance(body, str):
            body = ""
        encoding = _transfer_encoding(entity)
        payload = decode_transfer(body, encoding)
        self.budget.charge_bytes(len(payload))
        filename, extensions, disposition = self._names(entity, params)
        part.content_type = ctype
        part.filename = filename
        part.extensions = extensions
        part.is_attachment = (
            bool(filename) or disposition == "attachment" or not ctype.startswith("text/")
        )
        part.payload = payload
        part.size = len(payload)
        part.depth = depth
        if getattr(entity, "too_deep", False):
            part.unscannable.add("too_deep")
        elif ctype.startswith("multipart/"):
            part.unscannable.add("malformed")
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

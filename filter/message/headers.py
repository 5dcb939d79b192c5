"""Bounded header decoding: RFC 2047 encoded words, RFC 2231 parameters, filename extensions.

Everything here works on header values as the compat32 parser hands them over (raw 8-bit
bytes surrogate-escaped), runs in linear time and never raises.
"""

from __future__ import annotations

import binascii
import re
from urllib.parse import unquote_to_bytes

from mailgate.filter.message.charsets import decode_bytes

_FOLD = re.compile(r"\r?\n(?=[ \t])|\r?\n$")
_ENCODED_WORD = re.compile(r"=\?([^?\s]{1,64})\?([bBqQ])\?([^?\s]*)\?=")
_BETWEEN_WORDS = re.compile(r"[ \t\r\n]*")
_Q_ESCAPE = re.compile(rb"=([0-9A-Fa-f]{2})")
# One `; name = value` parameter. The closing quote is optional so that an unterminated quote
# ends the header instead of making the regex rescan the rest of it at every semicolon.
_PARAM = re.compile(r';\s*([^\s=;"]+)\s*=\s*("(?:[^"\\]|\\.)*"?|[^;]*)', re.DOTALL)
_QUOTED_PAIR = re.compile(r"\\(.)", re.DOTALL)
_CONTINUATION = re.compile(r"^(.+?)\*(\d{1,3})(\*?)$")
# Separators and invisible characters that cannot be part of a real extension: controls,
# NUL (some clients truncate there) and bidi overrides used to disguise `exe` as `gpj`.
_EXTENSION_JUNK = re.compile(r"[\x00-\x1f\x7f\u200b-\u200f\u202a-\u202e\u2066-\u2069\ufeff]")


def raw_to_str(value: str) -> str:
    """Undo compat32's surrogate escaping of raw 8-bit header bytes: UTF-8, else Latin-1."""
    if value.isascii():
        return value
    try:
        raw = value.encode("utf-8", "surrogateescape")
    except UnicodeError:
        return value.encode("utf-8", "replace").decode("utf-8")
    return decode_bytes(raw, "utf-8")


def unfold(value: str) -> str:
    return _FOLD.sub("", value)


def _decode_word_payload(encoding: str, text: str) -> bytes:
    if encoding in "bB":
        text = text.rstrip("=")
        # Restore the padding that sloppy encoders drop; a stray single char cannot decode.
        text += "=" * (-len(text) % 4)
        try:
            return binascii.a2b_base64(text)
        except (binascii.Error, ValueError):
            return b""
    data = text.replace("_", " ").encode("ascii", "surrogateescape")
    return _Q_ESCAPE.sub(lambda m: bytes((int(m.group(1), 16),)), data)


def decode_rfc2047(value: str) -> str:
    """Decode encoded words; whitespace between adjacent encoded words is dropped, and
    adjacent words in the same charset are joined as bytes before decoding (a multi-byte
    character may be split across two words)."""
    if "=?" not in value:
        return raw_to_str(value)
    out: list[str] = []
    pending = b""
    pending_charset = ""
    pos = 0
    for m in _ENCODED_WORD.finditer(value):
        gap = value[pos : m.start()]
        if gap and (not pending or _BETWEEN_WORDS.fullmatch(gap) is None):
            if pending:
                out.append(decode_bytes(pending, pending_charset))
                pending = b""
            out.append(raw_to_str(gap))
        charset = m.group(1).split("*", 1)[0].lower()  # RFC 2231 language suffix
        data = _decode_word_payload(m.group(2), m.group(3))
        if pending and charset != pending_charset:
            out.append(decode_bytes(pending, pending_charset))
            pending = b""
        pending += data
        pending_charset = charset
        pos = m.end()
    if pending:
        out.append(decode_bytes(pending, pending_charset))
    out.append(raw_to_str(value[pos:]))
    return "".join(out)


def decode_header(value: str, max_len: int) -> str:
    """Unfold, cut to `max_len` and decode one header value."""
    value = unfold(value[: max_len * 2])
    return decode_rfc2047(value[:max_len]).strip()


def _unquote(value: str) -> str:
    value = value.strip()
    if value.startswith('"'):
        value = value[1:-1] if len(value) > 1 and value.endswith('"') else value[1:]
        return _QUOTED_PAIR.sub(r"\1", value)
    return value


def _split_2231(value: str) -> tuple[str, str]:
    """`charset'language'text` -> (text, charset); a value without the prefix is UTF-8."""
    if value.count("'") < 2:
        return value, ""
    charset, _, rest = value.partition("'")
    return rest.partition("'")[2], charset


def _decode_2231(value: str, charset: str) -> str:
    raw = unquote_to_bytes(value.encode("utf-8", "surrogateescape"))
    return decode_bytes(raw, charset or "utf-8")


def parse_params(value: str) -> tuple[str, dict[str, str]]:
    """Split `type/subtype; a=b; c*0*=...` into the lower-cased first token and parameters.

    Parameter names are lower-cased; RFC 2231 continuations and charsets are assembled and
    an extended (`name*`) value wins over a plain one; RFC 2047 inside a quoted value (as
    Outlook and others send filenames) is decoded too.
    """
    first, _, rest = value.partition(";")
    params: dict[str, str] = {}
    sections: dict[str, dict[int, tuple[str, bool]]] = {}
    extended: dict[str, str] = {}
    for m in _PARAM.finditer(";" + rest):
        name = m.group(1).lower()
        raw_value = m.group(2).strip()
        cont = _CONTINUATION.match(name)
        if cont:
            sections.setdefault(cont.group(1), {})[int(cont.group(2))] = (
                _unquote(raw_value),
                bool(cont.group(3)),
            )
        elif name.endswith("*"):
            extended[name[:-1]] = _decode_2231(*_split_2231(_unquote(raw_value)))
        else:
            params.setdefault(name, decode_rfc2047(_unquote(raw_value)))
    for name, parts in sections.items():
        charset = ""
        chunks: list[str] = []
        for position, index in enumerate(sorted(parts)):
            text, encoded = parts[index]
            if not encoded:
                chunks.append(decode_rfc2047(text))
                continue
            if position == 0 and text.count("'") >= 2:
                text, charset = _split_2231(text)
            chunks.append(_decode_2231(text, charset))
        extended.setdefault(name, "".join(chunks))
    params.update(extended)
    return first.strip().lower(), params


def extensions_of(name: str) -> tuple[str, ...]:
    """Every extension of a file name: `a.PDF.exe . ` -> ('pdf', 'exe')."""
    base = re.split(r"[/\\]", name)[-1]
    base = _EXTENSION_JUNK.sub("", base).rstrip(" .\t")
    pieces = base.split(".")[1:]
    return tuple(p for p in (piece.strip().lower() for piece in pieces) if p)

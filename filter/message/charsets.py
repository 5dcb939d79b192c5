"""Bytes to text with fallbacks: the declared charset, else UTF-8, else Latin-1 (never fails)."""

from __future__ import annotations

import codecs
from functools import lru_cache

# Codecs Python knows that no mail charset label should reach: non-text transforms and
# decoders that are slow (punycode is quadratic) or turn escapes into arbitrary characters.
_REFUSED = frozenset(
    {"punycode", "idna", "unicode_escape", "raw_unicode_escape", "escape", "palmos", "mbcs"}
)
# Labels mail software uses for "some 8-bit charset, we do not know which".
_UNKNOWN = frozenset({"unknown-8bit", "x-unknown", "unknown", "8bit", "default", "x-user-defined"})


@lru_cache(maxsize=256)
def codec_name(charset: str) -> str | None:
    """Python codec for a MIME charset label, or None when unknown or refused."""
    label = charset.strip().strip('"').lower()
    if not label or label in _UNKNOWN or len(label) > 64:
        return None
    try:
        info = codecs.lookup(label)
    except (LookupError, ValueError):
        return None
    if not info._is_text_encoding or info.name in _REFUSED:  # type: ignore[attr-defined]
        return None
    # Windows code pages are supersets of the ISO charsets mail software mislabels as.
    return {"iso8859-1": "cp1252", "ascii": "utf-8"}.get(info.name, info.name)


def decode_bytes(raw: bytes, charset: str | None) -> str:
    """Decode with the declared charset; a lying or unknown charset falls back to UTF-8,
    then Latin-1, so every byte ends up as some character."""
    name = codec_name(charset) if charset else None
    if name:
        try:
            return raw.decode(name)
        except (UnicodeDecodeError, LookupError):
            pass
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("latin-1")


# Windows code pages whose Python codec is not called cpNNN (ISO 8859 is 28590 + part).
_CODEPAGES = {
    1200: "utf-16-le",
    1201: "utf-16-be",
    10000: "mac-roman",
    20127: "us-ascii",
    20866: "koi8-r",
    21866: "koi8-u",
    50220: "iso-2022-jp",
    50221: "iso-2022-jp",
    50222: "iso-2022-jp",
    51932: "euc-jp",
    51949: "euc-kr",
    52936: "hz",
    54936: "gb18030",
    65001: "utf-8",
}


def codepage_charset(codepage: int | None) -> str:
    """A charset label for a Windows code page; cp1252 (Outlook's default) when unknown."""
    if codepage is None:
        return "cp1252"
    if 28591 <= codepage <= 28605:
        label = f"iso-8859-{codepage - 28590}"
    else:
        label = _CODEPAGES.get(codepage, f"cp{codepage}")
    return codec_name(label) or "cp1252"

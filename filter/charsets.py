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

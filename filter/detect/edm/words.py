"""What the index builder and the scanner agree on: the words of a value, and their hashes.

A value without letters is a number: its digits are its one word, so `1234-5678`, `1234 5678`
and `12345678` are the same value. Any other value is its words (runs of letters and digits),
case folded: `O'Brien, Anna` is `o brien anna`, `Anna.OBrien@Example.com` is `anna obrien
example com`. Text is read as the detectors read it (`as_read`), so fullwidth digits and
no-break spaces change nothing.

A word's hash is keyed BLAKE2b (8 bytes) under the index's random salt. A value of several
words hashes as a chain, `then(... then(h(w1), h(w2)) ..., h(wn))`, computed for every run of
adjacent words of a text at once (numpy), so a text costs one keyed hash per distinct word.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from itertools import chain
from typing import Any

import numpy as np

from mailgate.filter.message.textview import as_read

MAX_WORDS = 8  # words of one value; longer values (addresses, notes) are not indexed
WORD = re.compile(r"[^\W_]+")
_LETTER = re.compile(r"[^\W\d_]")
_NOT_DIGIT = re.compile(r"\D+")
EMAIL = re.compile(r"[\w.+-]+@[\w-]+(?:\.[\w-]+)+")
# splitmix64's finaliser: every bit of the chain so far moves every bit of the next step.
_M1, _M2, _MASK = 0xBF58476D1CE4E5B9, 0x94D049BB133111EB, (1 << 64) - 1


def value_words(value: str) -> list[str]:
    """The words a value is matched by (see the module's docstring); [] for no value."""
    if value.isascii():  # the same words, sooner: no letter but [A-Za-z], which fold to lower
        if value.isdigit():
            return [value]
        words = WORD.findall(value.lower())
        digits = "".join(words)
        return [digits] if digits.isdigit() else words
    value = as_read(value)
    if not _LETTER.search(value):
        digits = _NOT_DIGIT.sub("", value)
        return [digits] if digits else []
    return [word.casefold() for word in WORD.findall(value)]


def then(chain: Any, word: Any) -> Any:
    """The hash of words already chained to `chain`, followed by a word hashed to `word`:
    on Python ints, or element by element on uint64 arrays (the same arithmetic, mod 2**64)."""
    x = chain ^ (chain >> 30)
    x = (x * _M1) & _MASK
    x ^= x >> 27
    x = (x * _M2) & _MASK
    x ^= x >> 31
    return (x + word) & _MASK


class Hasher:
    """The keyed word hashes of one index. Words seen recently are remembered (mail repeats
    its words), at most CACHE of them."""

    CACHE = 1 << 16

    def __init__(self, salt: bytes) -> None:
        self.salt = salt
        self._cache: dict[str, int] = {}

    def chain(self, words: Sequence[str]) -> int:
        """The hash of one value's words (as `value_words` gives them)."""
        hashes = self.hashes(words)
        chained = hashes[0]
        for word in hashes[1:]:
            chained = then(chained, word)
        return chained

    def words(self, words: Sequence[str]) -> np.ndarray:
        """The hashes of `words`, as a uint64 array."""
        return np.array(self.hashes(words), dtype=np.uint64)

    def hashes(self, words: Sequence[str]) -> list[int]:
        """The hashes of `words`."""
        cache = self._cache
        found = list(map(cache.get, words))
        if None in found:
            if len(cache) >= self.CACHE:
                cache.clear()
            key = self.salt
            for index, known in enumerate(found):
                if known is None:
                    word = words[index]
                    data = word.encode("utf-8", "surrogatepass")
                    digest = hashlib.blake2b(data, key=key, digest_size=8).digest()
                    found[index] = cache[word] = int.from_bytes(digest, "little")
        return found

    def values(self, values: Sequence[Sequence[str]]) -> np.ndarray:
        """The hash of each value's words (as `value_words` gives them, none empty)."""
        lengths = np.fromiter(map(len, values), np.intp, len(values))
        hashes = self.words(list(chain.from_iterable(values)))
        starts = np.cumsum(lengths) - lengths
        out = np.empty(len(values), np.uint64)
        for length in np.unique(lengths):
            which = np.flatnonzero(lengths == length)
            first = starts[which]
            hashed = hashes[first]
            for index in range(1, int(length)):
                hashed = then(hashed, hashes[first + index])
            out[which] = hashed
        return out

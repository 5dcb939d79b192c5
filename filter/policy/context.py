"""The scan context: one message under scan, as the rule conditions read it.

The parsed message and envelope, plus per-part caches of what each detector found, so every
text is read (`as_read`) and scanned once however many conditions ask.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from mailgate.filter.detect.detectors import Match
from mailgate.filter.detect.detectors.registry import DLP_DETECTORS
from mailgate.filter.detect.detectors.yara_scan import YaraMatch
from mailgate.filter.detect.edm.match import Search, rows_in
from mailgate.filter.message.model import Message, Part
from mailgate.filter.message.textview import as_read
from mailgate.filter.policy.envelope import Envelope

if TYPE_CHECKING:
    from mailgate.filter.policy.pack import Pack


class ScanContext:
    """One message under scan: the parsed message plus per-part detector caches."""

    def __init__(
        self, message: Message, envelope: Envelope, pack: Pack, content: bool = True
    ) -> None:
        self.message = message
        self.envelope = envelope
        self.pack = pack
        # False: the content is not to be looked at (a message that already overran or
        # crashed a worker); content conditions then see nothing, and nothing can stall.
        self.content = content
        self._text_parts: list[tuple[int, Part]] | None = None
        self._by_index: dict[int, Part] = {}
        self._read: dict[int, str] = {}  # each text as the detectors read it (as_read)
        self._body: dict[int, dict[int, list[Match]]] = {}
        self._dlp: dict[tuple[str, int], list[Match]] = {}
        self._edm: dict[Search, list[dict[int, frozenset[int]]]] = {}
        self._yara: list[YaraMatch] | None = None
        self.yara_seconds = 0.0

    def text_parts(self) -> list[tuple[int, Part]]:
        """Every text the content conditions read, numbered: the Subject (every Subject header:
        clients differ in which one they show), the other top-level headers (display names,
        X- headers: they leave with the message), the attachments' file names (a card number
        there leaks as surely as one in the body), then each part's text view."""
        if self._text_parts is None and not self.content:
            self._text_parts = []
        if self._text_parts is None:
            texts = [(i, p) for i, p in enumerate(self.message.parts) if p.text is not None]
            headers = self.message.headers
            subjects = "\n".join(v for k, v in headers if k.lower() == "subject")
            others = "\n".join(f"{k}: {v}" for k, v in headers if k.lower() != "subject")
            names = "\n".join(p.filename for p in self.message.parts if p.filename)
            read_too = ((-1, "subject", subjects), (-2, "headers", others), (-3, "names", names))
            self._text_parts = [
                (index, Part(path=where, content_type="text/plain", text=text))
                for index, where, text in read_too
                if text
            ] + texts
            self._by_index = dict(self._text_parts)
        return self._text_parts

    def _text(self, index: int) -> str:
        text = self._read.get(index)
        if text is None:
            self.text_parts()
            text = self._read[index] = as_read(self._by_index[index].text or "")
        return text

    def body_matches(self, index: int) -> dict[int, list[Match]]:
        found = self._body.get(index)
        if found is None:
            found = self._body[index] = self.pack.patterns.scan(self._text(index))
        return found

    def dlp_matches(self, detector: str, index: int) -> list[Match]:
        key = (detector, index)
        found = self._dlp.get(key)
        if found is None:
            found = self._dlp[key] = DLP_DETECTORS[detector].find(self._text(index))
        return found

    def edm_rows(self, search: Search) -> list[dict[int, frozenset[int]]]:
        """For each of `text_parts`, the rows of an EDM index found in it, each with the
        columns found together (one pass over all of them)."""
        found = self._edm.get(search)
        if found is None:
            texts = [self._text(index) for index, _ in self.text_parts()]
            found = self._edm[search] = rows_in(self.pack.edm[search.index], texts, search)
        return found

    def yara_matches(self) -> list[YaraMatch]:
        if self._yara is None and not self.content:
            self._yara = []
        if self._yara is None:
            start = time.perf_counter()
            self._yara = self.pack.yara.scan(self.message)
            self.yara_seconds = time.perf_counter() - start
        return self._yara

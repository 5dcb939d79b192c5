"""The engine: raw bytes + envelope in, Verdict out. Parses once, scans each text once.

Detectors run lazily and cache per part, so a rule pack pays only for what its rules ask.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from email.utils import getaddresses
from pathlib import Path

from mailgate.filter.detect.detectors import Match
from mailgate.filter.detect.detectors.registry import DLP_DETECTORS
from mailgate.filter.detect.detectors.yara_scan import YaraMatch
from mailgate.filter.detect.masking import mask_sensitive
from mailgate.filter.message.model import Message, Part, ScanLimits
from mailgate.filter.message.rawheaders import top_headers
from mailgate.filter.message.textview import as_read
from mailgate.filter.policy.envelope import Envelope
from mailgate.filter.policy.pack import DEFAULT_REPLY, Pack, PackSource, build_pack
from mailgate.filter.policy.verdict import Action, Hit, Verdict

log = logging.getLogger("mailgate.engine")


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
        self._yara: list[YaraMatch] | None = None
        self.yara_seconds = 0.0

    def text_parts(self) -> list[tuple[int, Part]]:
        """Every text the content conditions read, numbered: the Subject and the attachments'
        file names (a card number there leaks as surely as one in the body), then each
        part's text view."""
        if self._text_parts is None and not self.content:
            self._text_parts = []
        if self._text_parts is None:
            texts = [(i, p) for i, p in enumerate(self.message.parts) if p.text is not None]
            names = "\n".join(p.filename for p in self.message.parts if p.filename)
            if names:
                texts.insert(0, (-2, Part(path="names", content_type="text/plain", text=names)))
            subject = self.message.subject
            if subject:
                texts.insert(0, (-1, Part(path="subject", content_type="text/plain", text=subject)))
            self._text_parts = texts
            self._by_index = dict(texts)
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

    def yara_matches(self) -> list[YaraMatch]:
        if self._yara is None and not self.content:
            self._yara = []
        if self._yara is None:
            start = time.perf_counter()
            self._yara = self.pack.yara.scan(self.message)
            self.yara_seconds = time.perf_counter() - start
        return self._yara


@dataclass
class Engine:
    pack: Pack
    limits: ScanLimits = field(default_factory=ScanLimits)

    @classmethod
    def load(cls, rules_dir: Path, limits: ScanLimits | None = None) -> Engine:
        return cls(Pack.load(rules_dir), limits or ScanLimits())

    @classmethod
    def from_source(cls, source: PackSource, limits: ScanLimits | None = None) -> Engine:
        return cls(build_pack(source), limits or ScanLimits())

    @property
    def version(self) -> str:
        return self.pack.version

    def scan(self, raw: bytes, envelope: Envelope) -> Verdict:
        """Judge one message. Never raises for anything the message contains: what the engine
        could not look into becomes an `unscannable` reason that the pack's rules judge."""
        start = time.perf_counter()
        try:
            message = Message.parse(raw, self.limits)
        except MemoryError:
            message = Message(raw=raw, unscannable={"over_budget"})
        except Exception:
            log.exception("parser failed; judging the message as malformed")
            message = Message(raw=raw, unscannable={"malformed"})
        parsed = time.perf_counter()
        ctx = ScanContext(message, envelope, self.pack)
        try:
            verdict = self.evaluate(ctx)
        except MemoryError:
            verdict = self.judge_unscannable(raw, envelope, "over_budget")
        except Exception:
            log.exception("a detector failed; judging the message as malformed")
            verdict = self.judge_unscannable(raw, envelope, "malformed")
        done = time.perf_counter()
        verdict.timings = {
            "parse": parsed - start,
            "rules": done - parsed - ctx.yara_seconds,
            "yara": ctx.yara_seconds,
            "total": done - start,
        }
        return verdict

    def why_not(self, raw: bytes, envelope: Envelope, rule_id: str) -> str:
        """Why a rule did not hit a message: the first `when` condition that failed, or the
        `unless` exception that held. For `rules test` and reviewers."""
        rule = next(r for r in self.pack.rules if r.id == rule_id)
        ctx = ScanContext(Message.parse(raw, self.limits), envelope, self.pack)
        for condition in rule.when.conditions:
            if condition.evaluate(ctx) is None:
                return f"'{condition.spelling}' did not hold"
        if rule.unless is not None:
            for condition in rule.unless.conditions:
                if condition.evaluate(ctx) is not None:
                    return f"the exception '{condition.spelling}' held"
        return "it hit"

    def judge_unscannable(self, raw: bytes, envelope: Envelope, reason: str) -> Verdict:
        """Verdict for a message the engine could not look into at all (overrun, out of
        memory, crash): only envelope, headers, size and `unscannable` rules can hold. Runs
        in the doors' process, so it reads no content: no detector, no YARA."""
        message = Message(raw=raw, headers=top_headers(raw), unscannable={reason})
        return self.evaluate(ScanContext(message, envelope, self.pack, content=False))

    def evaluate(self, ctx: ScanContext) -> Verdict:
        verdict = Verdict(
            action=Action.ACCEPT,
            pack_version=self.pack.version,
            unscannable=sorted(ctx.message.unscannable),
        )
        deciding = None
        for rule in self.pack.rules:
            evidence = rule.when.evaluate(ctx)
            if evidence is None:
                continue
            if rule.unless is not None and rule.unless.evaluate(ctx) is not None:
                continue
            # Names and samples can hold data too (a file called 4111111111111111.pdf):
            # every piece of evidence leaves the engine masked.
            verdict.hits.extend(
                Hit(
                    rule.id,
                    e.detector,
                    mask_sensitive(e.where),
                    e.count,
                    mask_sensitive(e.sample),
                    e.detail,
                )
                for e in evidence
            )
            if rule.mode == "monitor":
                verdict.monitor.append(rule.id)
                continue
            verdict.rules.append(rule.id)
            if rule.tag is not None:
                verdict.tags.append(rule.tag)
            if deciding is None or rule.action > deciding.action:
                deciding = rule
        if deciding is not None:
            verdict.action = deciding.action
            verdict.reason = deciding.reason
            code, status = DEFAULT_REPLY.get(deciding.action, (None, None))
            verdict.smtp_code = deciding.smtp_code or code
            verdict.smtp_status = deciding.smtp_status or status
        return verdict


def envelope_from_headers(raw: bytes, door: str = "check") -> Envelope:
    """An envelope for a message file with none (`mailgate check`, rule examples): From as the
    sender, To/Cc/Bcc as recipients."""
    headers = top_headers(raw)

    def addresses(*names: str) -> list[str]:
        values = [v for k, v in headers if k.lower() in names]
        return [addr for _, addr in getaddresses(values) if "@" in addr]

    senders = addresses("from")
    return Envelope(
        mail_from=senders[0] if senders else "",
        rcpt_tos=tuple(addresses("to", "cc", "bcc")),
        door=door,
    )

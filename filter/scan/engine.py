"""The engine: raw bytes + envelope in, Verdict out. Parses once, scans each text once.

Detectors run lazily and cache per part, so a rule pack pays only for what its rules ask.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from email.utils import getaddresses
from pathlib import Path

from mailgate.filter.detect.masking import mask_sensitive
from mailgate.filter.detect.patterns import PatternOverrun
from mailgate.filter.message.mime import parse_message
from mailgate.filter.message.model import Message, ScanLimits
from mailgate.filter.message.rawheaders import decoded_headers, top_headers
from mailgate.filter.policy.context import ScanContext
from mailgate.filter.policy.envelope import Envelope
from mailgate.filter.policy.pack import Pack, PackSource, build_pack
from mailgate.filter.policy.replies import REFUSAL_DEFAULTS
from mailgate.filter.policy.verdict import Action, Hit, Verdict

log = logging.getLogger("mailgate.engine")


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
            message = parse_message(raw, self.limits)
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
        except PatternOverrun as exc:
            # a rule's regex backtracking on this text: out of time, not a broken message
            log.warning("%s; judging the message as timeout", exc)
            verdict = self.judge_unscannable(raw, envelope, "timeout")
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
        ctx = ScanContext(parse_message(raw, self.limits), envelope, self.pack)
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
        message = Message(raw=raw, headers=decoded_headers(raw), unscannable={reason})
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
            default = REFUSAL_DEFAULTS.get(deciding.action)
            verdict.smtp_code = deciding.smtp_code or (default.code if default else None)
            verdict.smtp_status = deciding.smtp_status or (default.status if default else None)
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

"""The audit log: one JSON object per line per message judged, from either door.

A record explains a verdict after the fact: who sent what to whom, which rules hit and where,
which pack judged it, and what became of the message. Hit samples are masked by the engine
before they get here; nothing here adds a value from the message beyond the envelope, the
Message-ID, and the masked evidence. The Subject is deliberately not logged. Addresses and
the Message-ID are identifiers a card number can be written into: they are recorded with the
sensitive run masked (`mask_field`), the rest kept, so the trail still names the mailbox.
"""

from __future__ import annotations

import logging
import sys
import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

from mailgate.filter.detect.masking import mask_address, mask_field, mask_sensitive
from mailgate.filter.ops.logs import json_line
from mailgate.filter.policy.envelope import Envelope
from mailgate.filter.policy.verdict import Verdict

log = logging.getLogger("mailgate.audit")


def audit_record(
    door: str,
    envelope: Envelope,
    message_id: str,
    size: int,
    verdict: Verdict,
    outcome: dict[str, Any],
    rule_actions: dict[str, str] | None = None,
) -> dict[str, Any]:
    """The audit record of one message. `outcome` is what the door did with it (its keys:
    `reply`, `quarantine_id`, `milter`, ...); `rule_actions` maps rule ids of the judging pack
    to their action, so monitor-mode hits say what they would have done (`rule_actions`)."""
    monitor = set(verdict.monitor)
    actions = rule_actions or {}
    record: dict[str, Any] = {
        "time": datetime.now(UTC).isoformat(timespec="milliseconds"),
        "door": door,
        "queue_id": envelope.queue_id,
        "message_id": mask_field(message_id),  # an id can be built from anything
        "client_address": envelope.client_address,
        "sender": mask_address(envelope.mail_from),
        "recipients": [mask_address(r) for r in envelope.rcpt_tos],
        "size": size,
        "action": str(verdict.action),
        "reason": verdict.reason,
        "rules": list(verdict.rules),
        "monitor": list(verdict.monitor),
        "hits": [
            {
                "rule": hit.rule,
                "mode": "monitor" if hit.rule in monitor else "enforce",
                "detector": hit.detector,
                "where": hit.where,
                "count": hit.count,
                "sample": hit.sample,
            }
            for hit in verdict.hits
        ],
        "timings": {stage: round(seconds, 6) for stage, seconds in verdict.timings.items()},
        "pack_version": verdict.pack_version,
        # A next hop's reply can quote what it was sent (an address, a line of the message).
        "outcome": {k: mask_sensitive(v) if isinstance(v, str) else v for k, v in outcome.items()},
    }
    hit_rules = [*verdict.rules, *verdict.monitor]
    if hit_rules and actions:
        record["rule_actions"] = {r: actions[r] for r in hit_rules if r in actions}
    if verdict.unscannable:
        record["unscannable"] = list(verdict.unscannable)
    if verdict.engine_error:
        record["engine_error"] = verdict.engine_error
    return record


class AuditLog:
    """Writes records as JSON lines to stdout (journald collects it) or appends them to a file.
    Safe to call from any thread; each record is one write of one whole line."""

    def __init__(self, path: Path | None = None, stream: TextIO | None = None) -> None:
        self.path = Path(path) if path is not None else None
        self._lock = threading.Lock()
        self._stream: TextIO = stream or sys.stdout
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._stream = self._open(self.path)

    @staticmethod
    def _open(path: Path) -> TextIO:
        return path.open("a", encoding="utf-8", buffering=1)  # line-buffered

    def write(self, record: dict[str, Any]) -> str:
        """Write one record; returns its JSON line (without the line break), as written."""
        line = json_line(record)
        with self._lock:
            try:
                self._stream.write(line + "\n")
                self._stream.flush()
            except (OSError, ValueError) as exc:
                # The message has been handled; losing its audit line is logged, not fatal.
                log.error("audit log write failed: %s", exc)
        return line

    def reopen(self) -> None:
        """After logrotate moved the file: continue in a fresh file at the same path."""
        if self.path is None:
            return
        try:
            fresh = self._open(self.path)
        except OSError as exc:
            log.error(
                "audit log %s cannot be reopened, still writing the old one: %s", self.path, exc
            )
            return
        with self._lock:
            old, self._stream = self._stream, fresh
        old.close()

    def close(self) -> None:
        if self.path is not None:
            with self._lock:
                self._stream.close()

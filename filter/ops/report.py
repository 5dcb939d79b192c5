"""The one call a door makes per message: write its audit record and count it in the metrics.

Both doors call `Reporter.report_verdict` exactly once per message they judged (or failed to),
with what they did with it, so the audit log and the metrics always agree.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import TYPE_CHECKING, Any

from mailgate.filter.message.rawheaders import first_header
from mailgate.filter.ops.audit import AuditLog, audit_record
from mailgate.filter.ops.config import Config
from mailgate.filter.ops.metrics import Metrics
from mailgate.filter.policy.envelope import Envelope
from mailgate.filter.policy.verdict import Verdict
from mailgate.filter.scan.engine import Engine
from mailgate.filter.store.quarantine import QuarantineStore

if TYPE_CHECKING:
    from mailgate.filter.ops.auditcopy import AuditCopy
    from mailgate.filter.scan.reload import ReloadResult

log = logging.getLogger("mailgate.report")


class Reporter:
    def __init__(
        self,
        audit: AuditLog | None,
        metrics: Metrics,
        engine: Callable[[], Engine | None] | None = None,
    ) -> None:
        """`audit` None: metrics only. `engine` returns the engine serving now (the pool's
        parent copy), used to name what monitor-mode rules would have done."""
        self.audit = audit
        self.metrics = metrics
        self.engine = engine
        # With `database` set (ops/fleet.py): the records' copy for the database, and who
        # hears of the pack this door serves.
        self.audit_copy: AuditCopy | None = None
        self.on_pack: Callable[[str], None] | None = None
        self._actions: tuple[str, dict[str, str]] = ("", {})
        self._lock = threading.Lock()

    @classmethod
    def from_config(
        cls,
        config: Config,
        store: QuarantineStore | None = None,
        engine: Callable[[], Engine | None] | None = None,
    ) -> Reporter:
        metrics = Metrics()
        if store is not None:
            metrics.bind_quarantine_count(store.count)
        return cls(AuditLog(config.audit.path), metrics, engine)

    def report_verdict(
        self,
        door: str,
        envelope: Envelope,
        message_id: str,
        size: int,
        verdict: Verdict,
        outcome: dict[str, Any],
    ) -> dict[str, Any]:
        """Audit and count one message; returns the record written. Never raises: the message
        has already been handled by the time it is reported. `message_id_of(raw)` gives the
        Message-ID to a door that has not read it itself."""
        try:
            record = audit_record(
                door,
                envelope,
                message_id,
                size,
                verdict,
                outcome,
                self._rule_actions(verdict.pack_version),
            )
            self.deliver(door, verdict, record)
        except Exception:
            log.exception("could not report the verdict for queue id %s", envelope.queue_id)
            return {}
        return record

    def deliver(self, door: str, verdict: Verdict, record: dict[str, Any]) -> None:
        """Write the record to the audit log (and queue its copy for the database) and count
        the verdict."""
        if self.audit is not None:
            line = self.audit.write(record)
            if self.audit_copy is not None:
                self.audit_copy.add(record.get("time", ""), line)
        self.metrics.observe(door, verdict)

    def next_hop_error(self, kind: str) -> None:
        self.metrics.next_hop_errors.labels(kind).inc()

    def set_pack(self, version: str) -> None:
        self.metrics.set_pack(version)
        if self.on_pack is not None:
            self.on_pack(version)

    def observe_reload(self, result: ReloadResult) -> None:
        self.metrics.observe_reload(result)
        if result.version and self.on_pack is not None:
            self.on_pack(result.version)

    def _rule_actions(self, version: str) -> dict[str, str]:
        """Rule id -> action of the pack that judged the message, if it is the one serving
        now (after a reload, a message judged by the old pack may report a moment later)."""
        with self._lock:
            cached_version, actions = self._actions
            if version and version == cached_version:
                return actions
            engine = self.engine() if self.engine is not None else None
            if engine is None or engine.version != version:
                return {}
            actions = {rule.id: str(rule.action) for rule in engine.pack.rules}
            self._actions = (version, actions)
            return actions


class ForwardingReporter(Reporter):
    """A relay front-end process's reporter: the audit record is made here (this process
    knows the pack that judged the message), then the record and every metrics event go to
    the parent process, which writes the one audit log and serves the one /metrics."""

    def __init__(self, conn: Connection, engine: Callable[[], Engine | None]) -> None:
        super().__init__(None, Metrics(), engine)
        self.conn = conn
        self._send_lock = threading.Lock()

    def _send(self, event: tuple[Any, ...]) -> None:
        try:
            with self._send_lock:
                self.conn.send(event)
        except (OSError, ValueError):
            log.exception("could not pass %s to the parent process", event[0])

    def deliver(self, door: str, verdict: Verdict, record: dict[str, Any]) -> None:
        self._send(("message", door, verdict, record))

    def next_hop_error(self, kind: str) -> None:
        self._send(("next_hop_error", kind))

    def set_pack(self, version: str) -> None:
        self._send(("pack", version))

    def observe_reload(self, result: ReloadResult) -> None:
        self._send(("reload", result))

    def started(self) -> None:
        """This front end serves (its pack loaded, its socket listening)."""
        self._send(("started",))

    def ready(self) -> None:
        self._send(("ready",))


def apply_forwarded(reporter: Reporter, event: tuple[Any, ...]) -> None:
    """The parent's side of ForwardingReporter: one event from a front-end process."""
    kind = event[0]
    if kind == "message":
        _, door, verdict, record = event
        reporter.deliver(door, verdict, record)
    elif kind == "next_hop_error":
        reporter.next_hop_error(event[1])
    elif kind == "pack":
        reporter.set_pack(event[1])
    elif kind == "reload":
        reporter.observe_reload(event[1])


def message_id_of(raw: bytes) -> str:
    """The Message-ID header's value (unfolded, bounded); '' when there is none."""
    return first_header(raw, "Message-ID")

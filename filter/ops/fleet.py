"""A door process's part in the fleet (with `database` set), all in background threads beside
the mail, none of it on a message's path:

- the audit copy: every audit record also in the database (ops/auditcopy.py);
- a heartbeat every 30 s and whenever the pack changes: node, door, mailgate and pack version
  and last seen, in the `nodes` table (`mailgate db status` shows it);
- retention: every few minutes the node asks whether the fleet's hourly run is due and, if it
  holds the retention lock, drops the audit days older than `audit.retention` and purges the
  quarantine of messages older than `quarantine.retention`;
- on /metrics, `mailgate_fleet_node_pack{node,door,pack_version} 1` for each door of the fleet
  seen in the last 5 minutes, read from the database at scrape time, so a node left on an old
  pack shows from any node.

The relay's parent process runs it for all its front ends (they report to it); the milter
runs it in its one process.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable, Iterator
from contextlib import AsyncExitStack
from datetime import timedelta

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from mailgate.filter.ops.auditcopy import AuditCopy
from mailgate.filter.ops.config import Config
from mailgate.filter.ops.report import Reporter
from mailgate.filter.ops.service import StartError
from mailgate.filter.store.database import Database, DatabaseError
from mailgate.filter.store.fleet import heartbeat, live_packs, run_retention
from mailgate.filter.store.quarantine import QuarantineStore

log = logging.getLogger("mailgate.fleet")

HEARTBEAT = 30.0  # seconds between heartbeats
LIVE_WITHIN = timedelta(minutes=5)  # a door not heard from for this long is not shown
RETENTION_CHECK = 300.0  # seconds between asking whether the hourly retention run is due
SCRAPE_TIMEOUT = 3.0  # seconds the fleet's packs may take to read at a scrape
POOL_SIZE = 3  # the audit copy, the heartbeat and retention (whose purge takes a second)
# Seconds for one background operation (a batch of 1,000 records takes well under one): while
# the copy's thread waits on a database that does not answer, new records wait in memory.
TIMEOUT = 5.0
STOP_WAIT = 10.0  # seconds a stopping node gives a background job to finish


class FleetNode:
    def __init__(self, config: Config, door: str, reporter: Reporter, store: QuarantineStore):
        assert config.database is not None
        self.door = door
        self.db = Database(config.database, config.node, timeout=TIMEOUT, pool_size=POOL_SIZE)
        self.reporter = reporter
        self.copy = AuditCopy(
            self.db, config.audit.spool / f"{door}.spool", reporter.metrics.registry
        )
        self._pack = reporter.metrics.pack_version
        audit_days, held = config.audit.retention, config.quarantine.retention
        self._jobs = [_Periodic("mailgate-heartbeat", HEARTBEAT, self._beat)]
        if audit_days is not None or held is not None:
            purge = (lambda actor: store.purge(held, actor)) if held is not None else None
            self._jobs.append(
                _Periodic(
                    "mailgate-retention",
                    RETENTION_CHECK,
                    lambda: _retain(self.db, audit_days, purge),
                )
            )

    def start(self) -> None:
        """Open the spool (OSError if it cannot be used), then start the background work and
        hook into the reporter."""
        self.copy.start()
        self.reporter.audit_copy = self.copy
        self.reporter.on_pack = self.pack_changed
        self.reporter.metrics.registry.register(_FleetPacks(self.db))
        for job in self._jobs:
            job.start()

    def pack_changed(self, version: str) -> None:
        """The pack this door serves (at start, after a reload): a heartbeat says so now."""
        if version and version != self._pack:
            self._pack = version
            self._jobs[0].wake()

    def close(self) -> None:
        self.reporter.audit_copy = None
        self.reporter.on_pack = None
        for job in self._jobs:
            job.stop()
        self.copy.close()
        self.db.close()

    def _beat(self) -> None:
        heartbeat(self.db, self.door, self._pack)


def start_fleet(
    config: Config, door: str, reporter: Reporter, store: QuarantineStore, stack: AsyncExitStack
) -> FleetNode | None:
    """The fleet's background work for `door` when `database` is set, stopped by `stack`
    (after whatever the door registers later: its last records are spooled); StartError when
    the audit spool cannot be used."""
    if config.database is None:
        return None
    node = FleetNode(config, door, reporter, store)
    try:
        node.start()
    except OSError as exc:
        raise StartError(str(exc)) from exc
    stack.push_async_callback(asyncio.to_thread, node.close)
    return node


def _retain(db: Database, audit: timedelta | None, purge: Callable[[str], int] | None) -> None:
    ran = run_retention(db, audit, purge)
    if ran is not None:
        days = ", ".join(d.isoformat() for d in ran.dropped) or "none"
        log.info("retention: audit days dropped: %s; quarantined messages purged: %d",
                 days, ran.purged)  # fmt: skip


class _Periodic:
    """`work` in a thread of its own every `interval` seconds and when woken; a failure of the
    database is logged (once until it passes) and the work tried again next time."""

    def __init__(self, name: str, interval: float, work: Callable[[], None]) -> None:
        self.interval = interval
        self.work = work
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._failing = False

    def start(self) -> None:
        self._thread.start()

    def wake(self) -> None:
        self._wake.set()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        # A retention run in progress is not waited for: its deadline is long, and the lock
        # goes with the connection, for another node's next turn.
        self._thread.join(STOP_WAIT)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.work()
                if self._failing:
                    log.info("%s: the database answers again", self._thread.name)
                self._failing = False
            except DatabaseError as exc:
                if not self._failing:
                    log.warning("%s: %s", self._thread.name, exc)
                self._failing = True
            except Exception:  # never let a background job end the thread silently
                log.exception("%s failed", self._thread.name)
            self._wake.wait(self.interval)
            self._wake.clear()


class _FleetPacks(Collector):
    """mailgate_fleet_node_pack, read from the `nodes` table at each scrape."""

    def __init__(self, db: Database) -> None:
        self.db = db

    def describe(self) -> list[GaugeMetricFamily]:
        return []  # nothing to query at registration

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily(
            "mailgate_fleet_node_pack",
            "The rule pack each door of the fleet serves (seen in the last 5 minutes)",
            labels=["node", "door", "pack_version"],
        )
        try:
            for seen in live_packs(self.db, LIVE_WITHIN, timeout=SCRAPE_TIMEOUT):
                family.add_metric([seen.node, seen.door, seen.pack_version], 1)
        except DatabaseError as exc:  # a scrape must not fail because the database is away
            log.warning("fleet packs unavailable: %s", exc)
        yield family

"""The fleet's copy of the audit records (with `database` set): every record the audit log gets
also goes to the database, off the mail path and without loss.

`add` is all a door's reporter does per message: a queue append, so no reply ever waits on
the database. A background thread appends what came in to the spool (`audit.spool`, one file
per door: `relay.spool`, `milter.spool`), flushed to disk, then sends the spool's unsent
records to the database in batches; once the database has all of them the spool is emptied.
While the database cannot be reached the spool grows and the thread tries again (after 1 s,
doubling up to 30 s); a node started with records in its spool sends them first. Each record
gets a key as it is queued, and the database keeps one row per key, so a batch sent twice
(its answer lost, the node stopped before emptying the spool) is stored once. The backlog
(records not yet in the database) is the metric `mailgate_audit_spool_records`, the time the
database last took some `mailgate_audit_sent_timestamp_seconds`.

Spool lines are JSON objects `{"k": key, "t": time, "r": record}`, the record exactly as the
audit line was written. A line cut short by a crash is dropped when the spool is opened
again (its record is in the audit log).
"""

from __future__ import annotations

import collections
import fcntl
import logging
import os
import re
import threading
import time
import uuid
from datetime import date, datetime
from pathlib import Path

from prometheus_client import CollectorRegistry, Counter, Gauge

from mailgate.filter.store.database import Database, DatabaseError
from mailgate.filter.store.fleet import utc_day, write_audit

log = logging.getLogger("mailgate.auditcopy")

BATCH = 1000  # records per insert
INTERVAL = 0.5  # seconds between rounds while records trickle in
RETRY_FIRST, RETRY_MAX = 1.0, 30.0  # seconds between tries while the database is away
_READ = 4 << 20  # bytes of spool read at a time (grown for a longer line)
_LINE_HEAD = re.compile(rb'\{"k":"[0-9a-f]{32}","t":"([^"\\]{1,64})","r":\{')


class SpoolInUse(OSError):
    """Another process has this spool open (two doors of one kind on one configuration)."""


class AuditCopy:
    """The spool and the thread that empties it into the database; `start` before `add`."""

    def __init__(
        self,
        db: Database,
        spool: Path,
        registry: CollectorRegistry | None = None,
        *,
        batch: int = BATCH,
        interval: float = INTERVAL,
    ) -> None:
        self.db = db
        self.spool = spool
        self.batch = batch
        self.interval = interval
        self._queue: collections.deque[str] = collections.deque()
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._fd = -1
        self._sent = 0  # spool offset: the database has every record before it
        self._unsent = 0  # records in the spool after _sent
        self._failing = False
        self.refused = Counter(
            "mailgate_audit_records_refused",
            "Audit records the database refused (kept in the audit log only)",
            registry=registry,
        )
        Gauge(
            "mailgate_audit_spool_records",
            "Audit records waiting in the local spool for the fleet's database",
            registry=registry,
        ).set_function(lambda: self.backlog)
        # With the backlog: records waiting while nothing has been sent for a while means the
        # database is not taking them (an alert in deploy/prometheus/alerts.yml).
        self.sent = Gauge(
            "mailgate_audit_sent_timestamp_seconds",
            "When the database last took audit records from this door (or it started)",
            registry=registry,
        )

    @property
    def backlog(self) -> int:
        """Records the database does not have yet (in the spool or about to be)."""
        return self._unsent + len(self._queue)

    def start(self) -> None:
        """Open and lock the spool, count what an earlier run left in it, and start the
        thread. OSError (SpoolInUse) when the spool cannot be used."""
        self.spool.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.spool, os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o640)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise SpoolInUse(f"audit spool {self.spool} is in use by another process") from None
        self._fd = fd
        self._unsent = self._repair()
        if self._unsent:
            log.info("audit spool %s: %d records to send", self.spool, self._unsent)
        self.sent.set_to_current_time()
        self._thread = threading.Thread(target=self._run, name="mailgate-audit-copy", daemon=True)
        self._thread.start()

    def add(self, moment: str, line: str) -> None:
        """Queue one audit record (its time and its JSON line as written) for the database."""
        self._queue.append(f'{{"k":"{uuid.uuid4().hex}","t":"{moment}","r":{line}}}')
        if len(self._queue) >= self.batch:
            self._wake.set()

    def close(self) -> None:
        """Spool what is queued, try the database once more, and stop. What it does not take
        stays in the spool for the next start."""
        if self._thread is None:
            return
        self._stopping.set()
        self._wake.set()
        # Bounded by the database's deadline per batch; the spool is written first.
        self._thread.join(self.db.timeout * 3)
        self._thread = None
        os.close(self._fd)  # also releases the lock
        self._fd = -1

    # --- the thread ---------------------------------------------------------------------------

    def _run(self) -> None:
        delay = 0.0
        retry_at = 0.0
        while True:
            stopping = self._stopping.is_set()
            try:
                self._spool_queued()
                # Stopping while the database is away: the spool keeps it, no wait for a deadline.
                due = time.monotonic() >= retry_at and not (stopping and self._failing)
                if self._unsent and due:
                    self._send()
                    delay = 0.0
            except DatabaseError as exc:
                delay = min(max(RETRY_FIRST, delay * 2), RETRY_MAX)
                retry_at = time.monotonic() + delay
                if not self._failing:
                    log.warning("%s; audit records wait in %s", exc, self.spool)
                self._failing = True
            except OSError as exc:  # the spool's disk: logged, the queue kept, tried again
                log.error("audit spool %s: %s", self.spool, exc)
                retry_at = time.monotonic() + RETRY_MAX
            except Exception:  # never let the thread end: the records would pile up unseen
                log.exception("audit copy to the database failed")
                retry_at = time.monotonic() + RETRY_MAX
            if stopping:
                return
            self._wake.wait(self.interval)
            self._wake.clear()

    def _spool_queued(self) -> None:
        """Append the queued records to the spool and make them durable."""
        if not self._queue:
            return
        taken = [self._queue.popleft() for _ in range(len(self._queue))]
        data = ("\n".join(taken) + "\n").encode("utf-8", "backslashreplace")
        try:
            _write_all(self._fd, data)
            os.fdatasync(self._fd)
        except OSError:
            self._queue.extendleft(reversed(taken))
            raise
        self._unsent += len(taken)

    def _send(self) -> None:
        """Send the spool's unsent records, a batch at a time, spooling new ones between
        batches; empty the spool once the database has everything."""
        while self._unsent:
            lines, size = self._read_batch()
            if not lines:  # the count was wrong (the file was changed under us): start over
                self._unsent = 0
                break
            texts: list[str] = []
            days: set[date] = set()
            damaged = 0
            for raw in lines:
                day = _day_of(raw)
                if day is None:
                    damaged += 1
                    continue
                texts.append(raw.decode("utf-8", "replace"))
                days.add(day)
            written = write_audit(self.db, texts, days) if texts else None
            refused = damaged + (len(written.refused) if written else 0)
            if refused:
                self.refused.inc(refused)
                log.error("audit spool %s: %d records refused by the database or damaged; "
                          "they remain in the audit log", self.spool, refused)  # fmt: skip
            self._sent += size
            self._unsent -= len(lines)
            self.sent.set_to_current_time()
            if self._failing:
                log.info("audit records reach the database again")
                self._failing = False
            self._spool_queued()
        if self._sent and self._sent == os.fstat(self._fd).st_size:
            os.ftruncate(self._fd, 0)
            self._sent = 0

    def _read_batch(self) -> tuple[list[bytes], int]:
        """Up to `batch` whole lines after the sent offset, and their length in bytes."""
        want = _READ
        while True:
            data = os.pread(self._fd, want, self._sent)
            end = data.rfind(b"\n")
            if end >= 0 or len(data) < want:
                break
            want *= 2  # one line longer than a read
        lines = data[: end + 1].split(b"\n")[:-1][: self.batch]
        return lines, sum(len(line) + 1 for line in lines)

    def _repair(self) -> int:
        """Drop a last line cut short (the process died mid-write); the records left."""
        size = os.fstat(self._fd).st_size
        count, offset, last = 0, 0, -1
        while offset < size:
            data = os.pread(self._fd, _READ, offset)
            count += data.count(b"\n")
            if (end := data.rfind(b"\n")) >= 0:
                last = offset + end
            offset += len(data)
        if last + 1 < size:
            log.warning("audit spool %s: dropped a record cut short at its end", self.spool)
            os.ftruncate(self._fd, last + 1)
        return count


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _day_of(line: bytes) -> date | None:
    """The UTC day of a spool line's record; None for a damaged line."""
    match = _LINE_HEAD.match(line)
    if match is None or not line.endswith(b"}"):
        return None
    try:
        return utc_day(datetime.fromisoformat(match.group(1).decode()))
    except ValueError:
        return None

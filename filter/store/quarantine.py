"""The quarantine: held messages, durably stored, listed, released and deleted with a record.

`QuarantineStore` is the seam both doors and the CLI use; `LocalQuarantine` is the embedded
backend (one .eml per message plus a SQLite index), safe for several processes at once. A
PostgreSQL plus object-store backend serving several relays implements the same protocol.

Layout under `quarantine.path`:
    messages/<id>.eml   the message exactly as received
    tmp/                files being written (same filesystem, so the rename is atomic)
    index.sqlite3       WAL mode, synchronous=FULL: a committed row survives power loss

States: held -> released, or held/released -> deleted (the .eml is removed, the record and
its events stay as the trail of who did what until purge). `purge` removes messages and their
records entirely once they are older than the retention.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import sqlite3
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Protocol

from mailgate.filter.detect.masking import mask_sensitive
from mailgate.filter.message.rawheaders import decoded, first_header
from mailgate.filter.policy.envelope import Envelope
from mailgate.filter.policy.verdict import Verdict
from mailgate.filter.store.durable import fsync_dir, new_id, write_durably

STATES = ("held", "released", "deleted")
_ID_RE = re.compile(r"^\d{8}T\d{9}Z-[a-z2-7]{16}$")
_SCHEMA = """
CREATE TABLE IF NOT EXISTS messages (
    id TEXT PRIMARY KEY,
    time TEXT NOT NULL,
    door TEXT NOT NULL,
    queue_id TEXT,
    message_id TEXT NOT NULL,
    sender TEXT NOT NULL,
    recipients TEXT NOT NULL,
    client_address TEXT,
    subject TEXT NOT NULL,
    size INTEGER NOT NULL,
    action TEXT NOT NULL,
    rules TEXT NOT NULL,
    monitor TEXT NOT NULL,
    hits TEXT NOT NULL,
    reason TEXT NOT NULL,
    pack_version TEXT NOT NULL,
    state TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS messages_time ON messages(time);
CREATE INDEX IF NOT EXISTS messages_state ON messages(state);
CREATE TABLE IF NOT EXISTS events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL REFERENCES messages(id) ON DELETE CASCADE,
    time TEXT NOT NULL,
    kind TEXT NOT NULL,
    actor TEXT NOT NULL,
    reply TEXT NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS events_id ON events(id);
CREATE TABLE IF NOT EXISTS purges (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    time TEXT NOT NULL,
    actor TEXT NOT NULL,
    older_than TEXT NOT NULL,
    ids TEXT NOT NULL
);
"""


class QuarantineError(Exception):
    """A quarantine operation cannot be done (unknown id, message deleted, store unusable)."""


class UnknownMessage(QuarantineError, KeyError):
    def __str__(self) -> str:
        return f"no quarantined message {self.args[0]!r}"


@dataclass(frozen=True)
class QuarantineEvent:
    time: datetime
    kind: str  # quarantined | released | release_failed | deleted
    actor: str
    reply: str = ""  # the next hop's reply for a release or a failed one


@dataclass(frozen=True)
class QuarantineRecord:
    id: str
    time: datetime
    door: str
    queue_id: str | None
    message_id: str
    sender: str
    recipients: tuple[str, ...]
    client_address: str | None
    subject: str
    size: int
    action: str
    rules: tuple[str, ...]
    monitor: tuple[str, ...]
    hits: tuple[dict[str, Any], ...]  # Hit fields; samples masked by the engine
    reason: str
    pack_version: str
    state: str
    events: tuple[QuarantineEvent, ...] = field(default=())

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe: times in ISO 8601 UTC."""
        d = asdict(self)
        d["time"] = self.time.isoformat()
        d["recipients"] = list(self.recipients)
        d["rules"] = list(self.rules)
        d["monitor"] = list(self.monitor)
        d["hits"] = list(self.hits)
        d["events"] = [{**asdict(e), "time": e.time.isoformat()} for e in self.events]
        return d


class QuarantineStore(Protocol):
    def put(
        self, raw: bytes, envelope: Envelope, verdict: Verdict, subject: str | None = None
    ) -> str:
        """Store durably (on stable storage before returning) and return the new id. The
        Subject is stored with sensitive values masked (it is listed and shown)."""
        ...

    def get(self, qid: str) -> QuarantineRecord: ...

    def raw(self, qid: str) -> bytes:
        """The message as received; QuarantineError once deleted."""
        ...

    def list(
        self,
        since: datetime | None = None,
        rule: str | None = None,
        state: str | None = None,
    ) -> list[QuarantineRecord]: ...

    def lock(self, qid: str) -> contextlib.AbstractContextManager[None]:
        """Exclusive hold on one message across processes, so that two releases of the same
        message cannot both send it: check state, send, mark_released, all under the lock."""
        ...

    def mark_released(self, qid: str, actor: str, reply: str) -> bool:
        """held -> released; False (and nothing recorded) if it was not held."""
        ...

    def record_release_failure(self, qid: str, actor: str, reply: str) -> None: ...

    def delete(self, qid: str, actor: str) -> bool:
        """Remove the message content; False if already deleted."""
        ...

    def purge(self, older_than: timedelta, actor: str) -> int:
        """Remove messages and their records older than `older_than`; returns how many."""
        ...

    def count(self) -> int:
        """Messages currently held."""
        ...


def is_valid_id(qid: str) -> bool:
    return bool(_ID_RE.match(qid))


def _iso(moment: datetime) -> str:
    """Fixed width, so that text order in the index is time order."""
    return moment.isoformat(timespec="microseconds")


def _now() -> str:
    return _iso(datetime.now(UTC))


class LocalQuarantine:
    """Files plus SQLite under one folder. Every call opens its own connection, so one
    instance may be used from threads and forked processes alike."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.messages_dir = self.path / "messages"
        self.tmp_dir = self.path / "tmp"
        self.locks_dir = self.path / "locks"
        self.index_path = self.path / "index.sqlite3"
        for folder in (self.path, self.messages_dir, self.tmp_dir, self.locks_dir):
            # Held mail is sensitive: owner and group only.
            folder.mkdir(mode=0o750, parents=True, exist_ok=True)
        with self._connect() as db:
            db.execute("PRAGMA journal_mode=WAL")
            db.executescript(_SCHEMA)

    @contextlib.contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        # isolation_level=None: transactions are explicit (BEGIN IMMEDIATE for writes, so
        # concurrent writers queue on busy_timeout instead of failing on lock upgrade).
        db = sqlite3.connect(self.index_path, timeout=30.0, isolation_level=None)
        try:
            db.execute("PRAGMA synchronous=FULL")
            db.execute("PRAGMA foreign_keys=ON")
            db.row_factory = sqlite3.Row
            yield db
        finally:
            db.close()

    @contextlib.contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        with self._connect() as db:
            db.execute("BEGIN IMMEDIATE")
            try:
                yield db
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")

    def _file(self, qid: str) -> Path:
        if not is_valid_id(qid):  # ids come from the command line: never a path
            raise UnknownMessage(qid)
        return self.messages_dir / f"{qid}.eml"

    # --- writing ---------------------------------------------------------------------------

    def put(
        self, raw: bytes, envelope: Envelope, verdict: Verdict, subject: str | None = None
    ) -> str:
        if subject is None:
            subject = decoded(first_header(raw, "Subject"))
        subject = mask_sensitive(subject)  # listed and shown to reviewers: no card numbers
        qid = new_id()
        final = self._file(qid)
        write_durably(final, self.tmp_dir, [raw])
        hits = [
            {
                "rule": h.rule,
                "detector": h.detector,
                "where": h.where,
                "count": h.count,
                "sample": h.sample,  # masked by the engine; the raw value never gets here
                "detail": h.detail,
            }
            for h in verdict.hits
        ]
        now = _now()
        try:
            with self._write() as db:
                db.execute(
                    "INSERT INTO messages VALUES "
                    "(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 'held')",
                    (
                        qid,
                        now,
                        envelope.door,
                        envelope.queue_id,
                        mask_sensitive(first_header(raw, "Message-ID")),
                        envelope.mail_from,
                        json.dumps(list(envelope.rcpt_tos)),
                        envelope.client_address,
                        subject,
                        len(raw),
                        str(verdict.action),
                        json.dumps(verdict.rules),
                        json.dumps(verdict.monitor),
                        json.dumps(hits, default=str),
                        verdict.reason,
                        verdict.pack_version,
                    ),
                )
                db.execute(
                    "INSERT INTO events (id, time, kind, actor) VALUES (?, ?, 'quarantined', ?)",
                    (qid, now, envelope.door),
                )
        except BaseException:
            # No record: the caller answers 4xx and the sender retries, so drop the file.
            final.unlink(missing_ok=True)
            raise
        return qid

    def mark_released(self, qid: str, actor: str, reply: str) -> bool:
        with self._write() as db:
            state = self._state(db, qid)
            if state != "held":
                return False
            db.execute("UPDATE messages SET state = 'released' WHERE id = ?", (qid,))
            self._event(db, qid, "released", actor, reply)
        return True

    def record_release_failure(self, qid: str, actor: str, reply: str) -> None:
        with self._write() as db:
            self._state(db, qid)
            self._event(db, qid, "release_failed", actor, reply)

    def delete(self, qid: str, actor: str) -> bool:
        path = self._file(qid)
        with self._write() as db:
            if self._state(db, qid) == "deleted":
                return False
            db.execute("UPDATE messages SET state = 'deleted' WHERE id = ?", (qid,))
            self._event(db, qid, "deleted", actor, "")
        # After the commit: a crash here leaves a file whose record says deleted; purge
        # removes it.
        path.unlink(missing_ok=True)
        fsync_dir(self.messages_dir)
        return True

    def purge(self, older_than: timedelta, actor: str) -> int:
        """The messages and their records go; the purge itself stays on record (who, when,
        which ids) in the `purges` table, so the trail of every removal remains."""
        cutoff = datetime.now(UTC) - older_than
        with self._write() as db:
            rows = db.execute("SELECT id FROM messages WHERE time < ?", (_iso(cutoff),)).fetchall()
            ids = [row["id"] for row in rows]
            db.executemany("DELETE FROM messages WHERE id = ?", [(i,) for i in ids])
            db.execute(
                "INSERT INTO purges (time, actor, older_than, ids) VALUES (?, ?, ?, ?)",
                (_now(), actor, str(older_than), json.dumps(ids)),
            )
            for qid in ids:
                self._file(qid).unlink(missing_ok=True)
            deleted = {
                row["id"] for row in db.execute("SELECT id FROM messages WHERE state = 'deleted'")
            }
            known = {row["id"] for row in db.execute("SELECT id FROM messages")}
            # Leftovers of crashes: a file whose record says deleted, a file written but never
            # indexed (put died before the commit, the client got no 250), an unrenamed tmp.
            for path in self.messages_dir.glob("*.eml"):
                if path.stem in deleted or (path.stem not in known and _older(path, cutoff)):
                    path.unlink(missing_ok=True)
            for path in self.tmp_dir.iterdir():
                if _older(path, cutoff):
                    path.unlink(missing_ok=True)
            for path in self.locks_dir.iterdir():
                if path.stem not in known:
                    path.unlink(missing_ok=True)
        fsync_dir(self.messages_dir)
        return len(ids)

    @contextlib.contextmanager
    def lock(self, qid: str) -> Iterator[None]:
        self._file(qid)  # validates the id before it becomes a file name
        fd = os.open(self.locks_dir / f"{qid}.lock", os.O_RDWR | os.O_CREAT, 0o640)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # closing drops the flock

    @staticmethod
    def _state(db: sqlite3.Connection, qid: str) -> str:
        row = db.execute("SELECT state FROM messages WHERE id = ?", (qid,)).fetchone()
        if row is None:
            raise UnknownMessage(qid)
        return row["state"]

    @staticmethod
    def _event(db: sqlite3.Connection, qid: str, kind: str, actor: str, reply: str) -> None:
        db.execute(
            "INSERT INTO events (id, time, kind, actor, reply) VALUES (?, ?, ?, ?, ?)",
            (qid, _now(), kind, actor, reply),
        )

    # --- reading ---------------------------------------------------------------------------

    def get(self, qid: str) -> QuarantineRecord:
        self._file(qid)
        records = self._select("WHERE id = ?", [qid])
        if not records:
            raise UnknownMessage(qid)
        return records[0]

    def raw(self, qid: str) -> bytes:
        record = self.get(qid)
        if record.state == "deleted":
            raise QuarantineError(f"quarantined message {qid} was deleted")
        try:
            return self._file(qid).read_bytes()
        except FileNotFoundError:
            raise QuarantineError(f"quarantined message {qid}: file missing") from None

    def purges(self) -> list[dict[str, Any]]:
        """Every purge so far: time, actor, age limit and the ids removed."""
        with self._connect() as db:
            rows = db.execute("SELECT time, actor, older_than, ids FROM purges ORDER BY seq")
            return [{**dict(row), "ids": json.loads(row["ids"])} for row in rows.fetchall()]

    def count(self) -> int:
        with self._connect() as db:
            return db.execute("SELECT count(*) FROM messages WHERE state = 'held'").fetchone()[0]

    def _select(self, where: str, params: list[Any]) -> list[QuarantineRecord]:
        with self._connect() as db:
            # One read transaction: rows and their events from the same snapshot.
            db.execute("BEGIN")
            rows = db.execute(f"SELECT * FROM messages {where} ORDER BY time, id", params)
            rows = rows.fetchall()
            events: dict[str, list[QuarantineEvent]] = {}
            event_rows = db.execute(
                f"SELECT * FROM events WHERE id IN (SELECT id FROM messages {where}) ORDER BY seq",
                params,
            )
            for e in event_rows:
                events.setdefault(e["id"], []).append(
                    QuarantineEvent(
                        datetime.fromisoformat(e["time"]), e["kind"], e["actor"], e["reply"]
                    )
                )
            db.execute("COMMIT")
        return [_record(row, tuple(events.get(row["id"], ()))) for row in rows]

    def list(
        self,
        since: datetime | None = None,
        rule: str | None = None,
        state: str | None = None,
    ) -> list[QuarantineRecord]:
        """Oldest first. `rule` matches enforce and monitor rule ids."""
        clauses: list[str] = []
        params: list[Any] = []
        if since is not None:
            if since.tzinfo is None:
                since = since.astimezone()  # naive means local time, as a person typed it
            clauses.append("time >= ?")
            params.append(_iso(since.astimezone(UTC)))
        if rule is not None:
            clauses.append(
                "(EXISTS (SELECT 1 FROM json_each(messages.rules) WHERE value = ?)"
                " OR EXISTS (SELECT 1 FROM json_each(messages.monitor) WHERE value = ?))"
            )
            params += [rule, rule]
        if state is not None:
            if state not in STATES:
                raise QuarantineError(f"unknown state {state!r} (one of {', '.join(STATES)})")
            clauses.append("state = ?")
            params.append(state)
        where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
        return self._select(where, params)


def _record(row: sqlite3.Row, events: tuple[QuarantineEvent, ...]) -> QuarantineRecord:
    return QuarantineRecord(
        id=row["id"],
        time=datetime.fromisoformat(row["time"]),
        door=row["door"],
        queue_id=row["queue_id"],
        message_id=row["message_id"],
        sender=row["sender"],
        recipients=tuple(json.loads(row["recipients"])),
        client_address=row["client_address"],
        subject=row["subject"],
        size=row["size"],
        action=row["action"],
        rules=tuple(json.loads(row["rules"])),
        monitor=tuple(json.loads(row["monitor"])),
        hits=tuple(json.loads(row["hits"])),
        reason=row["reason"],
        pack_version=row["pack_version"],
        state=row["state"],
        events=events,
    )


def _older(path: Path, cutoff: datetime) -> bool:
    try:
        return datetime.fromtimestamp(path.stat().st_mtime, UTC) < cutoff
    except FileNotFoundError:
        return False

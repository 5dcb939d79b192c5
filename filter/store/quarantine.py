"""The quarantine: held messages, durably stored, listed, released and deleted with a record.

`QuarantineStore` is the seam both doors and the CLI use; `LocalQuarantine` is the embedded
backend (one .eml per message plus a SQLite index), safe for several processes at once;
`PostgresQuarantine` (postgres.py) is a fleet's, one store in PostgreSQL for every node.

Layout under `quarantine.path`:
    messages/<id>.eml   the message exactly as received
    tmp/                files being written (same filesystem, so the rename is atomic)
    index.sqlite3       WAL mode, synchronous=FULL: a committed row survives power loss
    index.lock          held by a process while it sets the index up (journal mode, schema)

States and their changes are `lifecycle`'s, the same in every store: a release claims the
record (held -> releasing) before it sends, so two releases of one message send it once, and a
message being released cannot be deleted. Each change is checked and made in one write
transaction of the index (SQLite's write lock is the per-message lock) with its event. A
delete removes the .eml (the record and its events stay as the trail of who did what until
purge). `purge` removes messages and their records entirely once they are older than the
retention.

The review console reads the store through `search` (one page of a filtered, sorted list and
its total), `rule_counts` and `history` (releases, deletes, purges and the console's own
activity such as sign-ins, newest first), so that a store of 100,000 held messages answers a
page without reading them all; the index keeps the rules, addresses, domains and searched
text of each message in side tables for that (the text under an FTS5 trigram index), each
with the message's state and time, so a filtered page and its count come out of one index.
Reasons typed by reviewers are stored masked, like the Subject.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import socket
import sqlite3
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Protocol

from mailgate.filter.detect.masking import mask_field, mask_sensitive
from mailgate.filter.message.rawheaders import first_header
from mailgate.filter.policy.envelope import Envelope
from mailgate.filter.policy.verdict import Verdict
from mailgate.filter.store.durable import fsync_dir, new_id, write_durably
from mailgate.filter.store.lifecycle import (
    OUTCOMES,
    STATES,
    TO,
    Change,
    Claim,
    new_token,
    refusal,
    shown_state,
)

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
# Version 1 (PRAGMA user_version): the node, reviewers' reasons, the console's activity, and
# side tables and indexes for the console's filtered pages.
_SCHEMA_V1 = """
ALTER TABLE messages ADD COLUMN node TEXT NOT NULL DEFAULT '';
ALTER TABLE events ADD COLUMN reason TEXT NOT NULL DEFAULT '';
ALTER TABLE events ADD COLUMN node TEXT NOT NULL DEFAULT '';
ALTER TABLE purges ADD COLUMN node TEXT NOT NULL DEFAULT '';
-- state and time are copies of the message's: the list filtered by rule and the counts per
-- rule come out of this table's indexes without visiting every message.
CREATE TABLE message_rules (
    rule TEXT NOT NULL,
    id TEXT NOT NULL REFERENCES messages(id) ON DELETE CASCADE,
    state TEXT NOT NULL,
    time TEXT NOT NULL,
    PRIMARY KEY (rule, id)
) WITHOUT ROWID;
CREATE INDEX message_rules_id ON message_rules(id);
CREATE INDEX message_rules_rule ON message_rules(rule, state, time);
CREATE INDEX message_rules_state ON message_rules(state, rule, time);
CREATE TABLE message_addresses (
    address TEXT NOT NULL,  -- lower case
    domain TEXT NOT NULL,
    is_sender INTEGER NOT NULL,
    id TEXT NOT NULL REFERENCES messages(id) ON DELETE CASCADE
);
CREATE INDEX message_addresses_address ON message_addresses(address, is_sender);
CREATE INDEX message_addresses_domain ON message_addresses(domain);
CREATE INDEX message_addresses_id ON message_addresses(id);
CREATE INDEX messages_state_time ON messages(state, time);
CREATE INDEX events_time ON events(time);
CREATE TABLE activity (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    time TEXT NOT NULL,
    node TEXT NOT NULL,
    kind TEXT NOT NULL,
    actor TEXT NOT NULL,
    qid TEXT,
    reason TEXT NOT NULL DEFAULT '',
    detail TEXT NOT NULL DEFAULT ''
);
CREATE INDEX activity_time ON activity(time);
INSERT INTO message_rules (rule, id, state, time)
    SELECT value, messages.id, state, time FROM messages, json_each(messages.rules)
    UNION SELECT value, messages.id, state, time FROM messages, json_each(messages.monitor);
INSERT INTO message_addresses (address, domain, is_sender, id)
    SELECT lower(sender), lower(substr(sender, instr(sender, '@') + 1)), 1, id FROM messages
    UNION ALL SELECT lower(value), lower(substr(value, instr(value, '@') + 1)), 0, messages.id
    FROM messages, json_each(messages.recipients);
"""

# Version 2: the release in flight (lifecycle): its claim, node, time and lease, and whether
# its release mark was spent.
_SCHEMA_V2 = """
ALTER TABLE messages ADD COLUMN claim TEXT;
ALTER TABLE messages ADD COLUMN claim_node TEXT;
ALTER TABLE messages ADD COLUMN claimed_at TEXT;
ALTER TABLE messages ADD COLUMN lease_until TEXT;
ALTER TABLE messages ADD COLUMN mark_used INTEGER NOT NULL DEFAULT 0;
"""
# Version 3: the console's domain filter and text search through indexes, as message_rules
# serves the rule filter (state and time are copies of the message's, so a filtered page and
# its count come out of one table's index). The searched text (search_text) is kept in
# message_search and indexed by FTS5's trigram tokenizer: any 3 or more characters of it
# are found without reading every row.
_SCHEMA_V3 = """
CREATE TABLE message_domains (
    domain TEXT NOT NULL,  -- lower case
    id TEXT NOT NULL REFERENCES messages(id) ON DELETE CASCADE,
    state TEXT NOT NULL,
    time TEXT NOT NULL,
    PRIMARY KEY (domain, id)
) WITHOUT ROWID;
CREATE INDEX message_domains_state ON message_domains(domain, state, time);
CREATE INDEX message_domains_id ON message_domains(id);
INSERT OR IGNORE INTO message_domains (domain, id, state, time)
    SELECT a.domain, m.id, m.state, m.time FROM message_addresses a JOIN messages m USING (id);
CREATE TABLE message_search (
    seq INTEGER PRIMARY KEY,  -- the FTS row's; an alias of the rowid, so VACUUM keeps it
    id TEXT NOT NULL UNIQUE REFERENCES messages(id) ON DELETE CASCADE,
    state TEXT NOT NULL,
    time TEXT NOT NULL,
    text TEXT NOT NULL
);
CREATE INDEX message_search_state ON message_search(state, time);
CREATE INDEX message_search_time ON message_search(time);
CREATE VIRTUAL TABLE message_text USING fts5(
    text, content='message_search', content_rowid='seq', tokenize='trigram'
);
-- The index follows its rows (a purge removes them through the foreign key).
CREATE TRIGGER message_search_insert AFTER INSERT ON message_search BEGIN
    INSERT INTO message_text (rowid, text) VALUES (new.seq, new.text);
END;
CREATE TRIGGER message_search_delete AFTER DELETE ON message_search BEGIN
    INSERT INTO message_text (message_text, rowid, text) VALUES ('delete', old.seq, old.text);
END;
INSERT INTO message_search (id, state, time, text)
    SELECT id, state, time, id || char(10) || subject || char(10) || sender || char(10)
        || coalesce((SELECT group_concat(value, char(10)) FROM json_each(recipients)), '')
    FROM messages;
"""
_MIGRATIONS = ((1, _SCHEMA_V1), (2, _SCHEMA_V2), (3, _SCHEMA_V3))
# A text search counts its matches this far: past it the page says "more than" and leaves
# the counts per rule out, so that a word in every message costs no more than a rare one.
TEXT_COUNT_LIMIT = 10_000
SORT_LIMIT = 2_000  # matches of a text sorted for a page; more are read in time order


class QuarantineError(Exception):
    """A quarantine operation cannot be done (unknown id, message deleted, store unusable)."""


class UnknownMessage(QuarantineError, KeyError):
    def __str__(self) -> str:
        return f"no quarantined message {self.args[0]!r}"


class StateError(QuarantineError):
    """A change the message's state does not allow (see lifecycle): released already, being
    released, deleted. `state` is the state it was found in."""

    def __init__(self, message: str, state: str) -> None:
        super().__init__(message)
        self.state = state


@dataclass(frozen=True)
class QuarantineEvent:
    time: datetime
    kind: str  # quarantined, or the lifecycle change: releasing | released | deleted | ...
    actor: str
    reply: str = ""  # the next hop's reply for a release or a failed one
    reason: str = ""  # the reviewer's reason, masked
    node: str = ""  # the host that did it


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
    node: str = ""  # the host whose door held it

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


@dataclass(frozen=True)
class HeldQuery:
    """A filtered list of the quarantine; every field given narrows it, None means any."""

    state: str | None = None
    rule: str | None = None  # enforce or monitor rule id
    sender: str | None = None  # the envelope sender, any case
    recipient: str | None = None  # one of the envelope recipients, any case
    domain: str | None = None  # the sender's or any recipient's domain
    since: datetime | None = None  # at or after
    until: datetime | None = None  # before
    text: str | None = None  # part of the (masked) Subject, sender or a recipient, or the id
    newest_first: bool = True


@dataclass(frozen=True)
class HeldPage:
    records: tuple[QuarantineRecord, ...]  # one page, without their events
    total: int  # how many match the query in all; with a text, at most TEXT_COUNT_LIMIT + 1
    exact: bool = True  # False: a text search matched more than TEXT_COUNT_LIMIT


@dataclass(frozen=True)
class ActivityEntry:
    """One line of the history: a release, a delete, a purge, or something the console
    records with `record_activity` (a sign-in, an original viewed)."""

    time: datetime
    kind: str  # released | release_failed | deleted | purged | signed_in | ...
    actor: str
    node: str
    qid: str | None
    reason: str  # the reviewer's, masked
    detail: str  # the next hop's reply, the purge's extent, the client address

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "time": self.time.isoformat()}


@dataclass(frozen=True)
class HistoryQuery:
    kind: str | None = None
    actor: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    text: str | None = None  # part of the id, reason or detail


@dataclass(frozen=True)
class HistoryPage:
    entries: tuple[ActivityEntry, ...]  # newest first
    total: int


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

    def claim(
        self, qid: str, actor: str, lease: timedelta, force: bool = False, reason: str = ""
    ) -> Claim:
        """held -> releasing, atomically, for `lease` (`force`: also from release_unknown);
        StateError ("already being released", "already released", ...) otherwise."""
        ...

    def finish(self, claim: Claim, change: Change, reply: str, reason: str = "") -> bool:
        """Record the outcome of a claimed release (RELEASED, FAILED or UNKNOWN) with the next
        hop's reply; False if the claim was ended meanwhile (the event is recorded, the state
        is not changed)."""
        ...

    def consume_mark(self, qid: str, token: str) -> tuple[str, tuple[str, ...]] | None:
        """Spend the release mark of the release of `qid` in flight under claim `token`: the
        first call gets the held message's (sender, recipients), every later one None."""
        ...

    def release_secret(self) -> bytes:
        """The secret release marks are made with, the same for every door of this store."""
        ...

    def delete(self, qid: str, actor: str, reason: str = "") -> bool:
        """Remove the message content; False if already deleted; StateError while it is
        being released."""
        ...

    def purge(self, older_than: timedelta, actor: str) -> int:
        """Remove messages and their records older than `older_than`; returns how many."""
        ...

    def count(self) -> int:
        """Messages currently held."""
        ...

    def search(self, query: HeldQuery, offset: int = 0, limit: int = 50) -> HeldPage:
        """One page of the messages matching `query`, by time (then id), and how many match
        (with a text, counted up to TEXT_COUNT_LIMIT + 1: see `HeldPage.exact`)."""
        ...

    def rule_counts(self, query: HeldQuery) -> dict[str, int]:
        """Messages per rule among those matching `query` with its `rule` left out."""
        ...

    def record_activity(
        self, kind: str, actor: str, qid: str | None = None, reason: str = "", detail: str = ""
    ) -> None:
        """Put something done outside the message's own life on record (sign-ins, an
        original viewed); `reason` and `detail` are stored masked."""
        ...

    def history(self, query: HistoryQuery, offset: int = 0, limit: int = 100) -> HistoryPage:
        """Releases, failed releases, deletes, purges and recorded activity, newest first."""
        ...


def held_fields(
    raw: bytes, envelope: Envelope, verdict: Verdict, subject: str | None = None
) -> dict[str, Any]:
    """What every store records of a message it holds, masked where it is listed and shown:
    the Subject (`subject`, else the message's) and the Message-ID."""
    # Listed and shown to reviewers: no card numbers, however the header spelled them.
    if subject is None:
        subject = mask_field(first_header(raw, "Subject"))
    else:
        subject = mask_sensitive(subject)
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
    return {
        "door": envelope.door,
        "queue_id": envelope.queue_id,
        "message_id": mask_field(first_header(raw, "Message-ID")),
        "sender": envelope.mail_from,
        "recipients": list(envelope.rcpt_tos),
        "client_address": envelope.client_address,
        "subject": subject,
        "size": len(raw),
        "action": str(verdict.action),
        "rules": list(verdict.rules),
        "monitor": list(verdict.monitor),
        "hits": json.loads(json.dumps(hits, default=str)),  # JSON-safe as stored
        "reason": verdict.reason,
        "pack_version": verdict.pack_version,
    }


def search_text(qid: str, fields: dict[str, Any]) -> str:
    """What a text search looks in, the same in every store: the id, the (masked) Subject,
    the sender and the recipients, a line each."""
    return "\n".join([qid, fields["subject"], fields["sender"], *fields["recipients"]])


def is_valid_id(qid: str) -> bool:
    return bool(_ID_RE.match(qid))


def _iso(moment: datetime) -> str:
    """Fixed width, so that text order in the index is time order."""
    return moment.isoformat(timespec="microseconds")


def _now() -> str:
    return _iso(datetime.now(UTC))


class StateChanges:
    """The changes of `lifecycle` as every store offers them, made through the store's one
    `_change` (check and change in one atomic step, with the event)."""

    node: str

    def _change(
        self,
        qid: str,
        change: Change,
        actor: str,
        claim: Claim | None = None,
        reply: str = "",
        reason: str = "",
    ) -> bool:
        raise NotImplementedError

    def claim(
        self, qid: str, actor: str, lease: timedelta, force: bool = False, reason: str = ""
    ) -> Claim:
        claim = Claim(qid, new_token(), actor, self.node, lease)
        self._change(qid, Change.FORCE if force else Change.CLAIM, actor, claim, reason=reason)
        return claim

    def finish(self, claim: Claim, change: Change, reply: str, reason: str = "") -> bool:
        if change not in OUTCOMES:
            raise ValueError(f"not an outcome: {change}")
        return self._change(claim.qid, change, claim.actor, claim, reply, reason)

    def delete(self, qid: str, actor: str, reason: str = "") -> bool:
        try:
            self._change(qid, Change.DELETE, actor, reason=reason)
        except StateError as refused:
            if refused.state == "deleted":
                return False
            raise
        self._deleted(qid)
        return True

    def _deleted(self, qid: str) -> None:
        """After a delete committed: remove what its transaction could not."""


class LocalQuarantine(StateChanges):
    """Files plus SQLite under one folder. Every call opens its own connection, so one
    instance may be used from threads and forked processes alike."""

    def __init__(self, path: Path, node: str | None = None) -> None:
        self.path = Path(path)
        self.node = node or socket.gethostname()
        self.messages_dir = self.path / "messages"
        self.tmp_dir = self.path / "tmp"
        self.index_path = self.path / "index.sqlite3"
        for folder in (self.path, self.messages_dir, self.tmp_dir):
            # Held mail is sensitive: owner and group only.
            folder.mkdir(mode=0o750, parents=True, exist_ok=True)
        # One opener at a time sets the index up: switching to WAL takes a lock SQLite does
        # not wait for, so a relay and a milter starting together failed "database is locked".
        fd = os.open(self.path / "index.lock", os.O_RDWR | os.O_CREAT, 0o640)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            with self._connect() as db:
                if db.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
                    db.execute("PRAGMA journal_mode=WAL")
                db.executescript(_SCHEMA)
                for version, script in _MIGRATIONS:
                    if db.execute("PRAGMA user_version").fetchone()[0] < version:
                        db.execute("BEGIN IMMEDIATE")
                        for statement in _statements(script):
                            db.execute(statement)
                        db.execute(f"PRAGMA user_version = {version}")
                        db.execute("COMMIT")
        finally:
            os.close(fd)  # closing drops the flock

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
        fields = held_fields(raw, envelope, verdict, subject)
        qid = new_id()
        final = self._file(qid)
        write_durably(final, self.tmp_dir, [raw])
        now = _now()
        try:
            with self._write() as db:
                db.execute(
                    "INSERT INTO messages (id, time, door, queue_id, message_id, sender, "
                    "recipients, client_address, subject, size, action, rules, monitor, hits, "
                    "reason, pack_version, state, node) VALUES "
                    "(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 'held', ?)",
                    (
                        qid,
                        now,
                        *(fields[name] for name in ("door", "queue_id", "message_id", "sender")),
                        json.dumps(fields["recipients"]),
                        fields["client_address"],
                        fields["subject"],
                        fields["size"],
                        fields["action"],
                        json.dumps(fields["rules"]),
                        json.dumps(fields["monitor"]),
                        json.dumps(fields["hits"], default=str),
                        fields["reason"],
                        fields["pack_version"],
                        self.node,
                    ),
                )
                db.executemany(
                    "INSERT INTO message_rules (rule, id, state, time) VALUES (?, ?, 'held', ?)",
                    [(rule, qid, now) for rule in {*verdict.rules, *verdict.monitor}],
                )
                addresses = [(envelope.mail_from, 1)] + [(r, 0) for r in envelope.rcpt_tos]
                db.executemany(
                    "INSERT INTO message_addresses (address, domain, is_sender, id) "
                    "VALUES (?, ?, ?, ?)",
                    [(a.lower(), _domain(a), sender, qid) for a, sender in addresses],
                )
                db.executemany(
                    "INSERT INTO message_domains (domain, id, state, time) "
                    "VALUES (?, ?, 'held', ?)",
                    [(domain, qid, now) for domain in {_domain(a) for a, _ in addresses}],
                )
                db.execute(
                    "INSERT INTO message_search (id, state, time, text) VALUES (?, 'held', ?, ?)",
                    (qid, now, search_text(qid, fields)),
                )
                db.execute(
                    "INSERT INTO events (id, time, kind, actor, node) "
                    "VALUES (?, ?, 'quarantined', ?, ?)",
                    (qid, now, envelope.door, self.node),
                )
        except BaseException:
            # No record: the caller answers 4xx and the sender retries, so drop the file.
            final.unlink(missing_ok=True)
            raise
        return qid

    def _deleted(self, qid: str) -> None:
        # After the commit: a crash here leaves a file whose record says deleted; purge
        # removes it.
        self._file(qid).unlink(missing_ok=True)
        fsync_dir(self.messages_dir)

    def _change(
        self,
        qid: str,
        change: Change,
        actor: str,
        claim: Claim | None = None,
        reply: str = "",
        reason: str = "",
    ) -> bool:
        """The one way a message's state changes: checked against lifecycle and made, with
        its event, in one write transaction (the index's write lock makes it atomic)."""
        self._file(qid)  # validates the id
        now = datetime.now(UTC)
        with self._write() as db:
            row = db.execute(
                "SELECT state, lease_until, claim FROM messages WHERE id = ?", (qid,)
            ).fetchone()
            if row is None:
                raise UnknownMessage(qid)
            shown = shown_state(row["state"], _lease(row["lease_until"]), now)
            if change in OUTCOMES and (claim is None or row["claim"] != claim.token):
                self._event(db, qid, str(change), actor, reply, reason)  # history all the same
                return False
            refused = refusal(qid, change, shown)
            if refused:
                raise StateError(refused, shown)
            if claim is not None and change in (Change.CLAIM, Change.FORCE):
                db.execute(
                    "UPDATE messages SET claim = ?, claim_node = ?, claimed_at = ?,"
                    " lease_until = ?, mark_used = 0 WHERE id = ?",
                    (claim.token, self.node, _iso(now), _iso(now + claim.lease), qid),
                )
            if change is Change.UNKNOWN:
                db.execute("UPDATE messages SET lease_until = ? WHERE id = ?", (_iso(now), qid))
            else:
                self._set_state(db, qid, TO[change])
            self._event(db, qid, str(change), actor, reply, reason)
        return True

    def consume_mark(self, qid: str, token: str) -> tuple[str, tuple[str, ...]] | None:
        if not is_valid_id(qid):
            return None
        with self._write() as db:
            row = db.execute(
                "UPDATE messages SET mark_used = 1 WHERE id = ? AND claim = ?"
                " AND state = 'releasing' AND lease_until > ? AND mark_used = 0"
                " RETURNING sender, recipients",
                (qid, token, _now()),
            ).fetchone()
        return (row["sender"], tuple(json.loads(row["recipients"]))) if row else None

    def release_secret(self) -> bytes:
        # Imported here: release_mark reads this module's errors.
        from mailgate.filter.store.release_mark import load_or_create_secret

        return load_or_create_secret(self.path)

    def purge(self, older_than: timedelta, actor: str) -> int:
        """The messages and their records go; the purge itself stays on record (who, when,
        which ids) in the `purges` table, so the trail of every removal remains."""
        cutoff = datetime.now(UTC) - older_than
        with self._write() as db:
            in_flight, _ = _state_clause("releasing", "messages", "lease_until")
            rows = db.execute(
                f"SELECT id FROM messages WHERE time < ? AND NOT {in_flight}",
                (_iso(cutoff), _now()),
            ).fetchall()
            ids = [row["id"] for row in rows]
            db.executemany("DELETE FROM messages WHERE id = ?", [(i,) for i in ids])
            db.execute(
                "INSERT INTO purges (time, actor, older_than, ids, node) VALUES (?, ?, ?, ?, ?)",
                (_now(), actor, str(older_than), json.dumps(ids), self.node),
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
        fsync_dir(self.messages_dir)
        return len(ids)

    @staticmethod
    def _set_state(db: sqlite3.Connection, qid: str, state: str) -> None:
        db.execute("UPDATE messages SET state = ? WHERE id = ?", (state, qid))
        for side in ("message_rules", "message_domains", "message_search"):
            db.execute(f"UPDATE {side} SET state = ? WHERE id = ?", (state, qid))

    def _event(
        self, db: sqlite3.Connection, qid: str, kind: str, actor: str, reply: str, reason: str = ""
    ) -> None:
        db.execute(
            "INSERT INTO events (id, time, kind, actor, reply, reason, node) "
            "VALUES (?, ?, ?, ?, ?, ?, ?)",
            # A next hop's reply can quote an address or a line of the message.
            (qid, _now(), kind, actor, mask_sensitive(reply), mask_sensitive(reason), self.node),
        )

    def record_activity(
        self, kind: str, actor: str, qid: str | None = None, reason: str = "", detail: str = ""
    ) -> None:
        with self._write() as db:
            db.execute(
                "INSERT INTO activity (time, node, kind, actor, qid, reason, detail) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                (
                    _now(),
                    self.node,
                    kind,
                    actor,
                    qid,
                    mask_sensitive(reason),
                    mask_sensitive(detail),
                ),
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
                        datetime.fromisoformat(e["time"]),
                        e["kind"],
                        e["actor"],
                        e["reply"],
                        e["reason"],
                        e["node"],
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
            clause, values = _state_clause(state, "messages", "lease_until")
            clauses.append(clause)
            params += values
        where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
        return self._select(where, params)

    def search(self, query: HeldQuery, offset: int = 0, limit: int = 50) -> HeldPage:
        at = _driver(query)
        order = "DESC" if query.newest_first else "ASC"
        with self._connect() as db:
            db.execute("BEGIN")  # the page and its total from one snapshot
            source, where, params = _held_where(query)
            if query.text:
                total = db.execute(
                    f"SELECT count(*) FROM (SELECT 1 {source} {where} LIMIT ?)",
                    [*params, TEXT_COUNT_LIMIT + 1],
                ).fetchone()[0]
            else:
                total = db.execute(f"SELECT count(*) {source} {where}", params).fetchone()[0]
            # Many matches of a text: read in time order rather than sort them all.
            source, where, params = _held_where(query, page=True, walk=total > SORT_LIMIT)
            rows = db.execute(
                f"SELECT m.* {source} {where} ORDER BY {at}.time {order}, {at}.id {order} "
                "LIMIT ? OFFSET ?",
                [*params, max(limit, 0), max(offset, 0)],
            ).fetchall()
            db.execute("COMMIT")
        records = tuple(_record(row, ()) for row in rows)
        return HeldPage(records, total, exact=not query.text or total <= TEXT_COUNT_LIMIT)

    def rule_counts(self, query: HeldQuery) -> dict[str, int]:
        query = replace(query, rule=None)
        source, where, params = _held_where(query)
        at = _driver(query)
        if at == "m":
            # No side table narrows it (the start page): the rule index alone answers.
            source, where, params = _held_where(query, driver="r")
            sql = f"SELECT rule, count(*) AS n {source} {where} GROUP BY rule"
        else:
            # From the matching rows to their rules, in that order (CROSS JOIN keeps it).
            sql = (
                f"SELECT r.rule, count(*) AS n {source} CROSS JOIN message_rules r"
                f" ON r.id = {at}.id {where} GROUP BY r.rule"
            )
        with self._connect() as db:
            return {row[0]: row[1] for row in db.execute(f"{sql} ORDER BY 1", params)}

    def history(self, query: HistoryQuery, offset: int = 0, limit: int = 100) -> HistoryPage:
        clauses: list[str] = []
        params: list[Any] = []
        if query.kind:
            clauses.append("kind = ?")
            params.append(query.kind)
        if query.actor:
            clauses.append("actor = ?")
            params.append(query.actor)
        if query.since is not None:
            clauses.append("time >= ?")
            params.append(_iso_utc(query.since))
        if query.until is not None:
            clauses.append("time < ?")
            params.append(_iso_utc(query.until))
        if query.text:
            clauses.append(
                "(instr(lower(coalesce(qid, '')), ?) OR instr(lower(reason), ?)"
                " OR instr(lower(detail), ?))"
            )
            params += [query.text.lower()] * 3
        where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
        union = (
            "SELECT time, kind, actor, node, id AS qid, reason, reply AS detail FROM events "
            "WHERE kind != 'quarantined' "
            "UNION ALL SELECT time, 'purged', actor, node, NULL, '', "
            "'older than ' || older_than || ': ' || json_array_length(ids) || ' message(s)' "
            "FROM purges "
            "UNION ALL SELECT time, kind, actor, node, qid, reason, detail FROM activity"
        )
        with self._connect() as db:
            db.execute("BEGIN")
            rows = db.execute(
                f"SELECT * FROM ({union}) {where} ORDER BY time DESC LIMIT ? OFFSET ?",
                [*params, max(limit, 0), max(offset, 0)],
            ).fetchall()
            total = db.execute(f"SELECT count(*) FROM ({union}) {where}", params).fetchone()[0]
            db.execute("COMMIT")
        entries = tuple(
            ActivityEntry(
                time=datetime.fromisoformat(row["time"]),
                kind=row["kind"],
                actor=row["actor"],
                node=row["node"],
                qid=row["qid"],
                reason=row["reason"],
                detail=row["detail"],
            )
            for row in rows
        )
        return HistoryPage(entries, total)


def as_utc(moment: datetime) -> datetime:
    """In UTC; a naive time means local time, as a person typed it."""
    return (moment.astimezone() if moment.tzinfo is None else moment).astimezone(UTC)


def _iso_utc(moment: datetime) -> str:
    return _iso(as_utc(moment))


def _domain(address: str) -> str:
    return address.rpartition("@")[2].lower()


def _driver(query: HeldQuery) -> str:
    """The alias of the table a query's rows come from, the side table of its narrowest
    indexed filter (each holds state and time too, so a page and its count come out of that
    table's index): message_search s for a text (through the trigram index), message_rules
    r for a rule, message_domains d for a domain; else messages m."""
    if query.text and len(query.text.strip()) >= 3:
        return "s"
    if query.rule:
        return "r"
    if query.domain:
        return "d"
    return "s" if query.text else "m"


def _held_where(
    query: HeldQuery, page: bool = False, walk: bool = False, driver: str | None = None
) -> tuple[str, str, list[Any]]:
    """FROM, WHERE and parameters for a query, its rows from `driver` (default `_driver`),
    joined to `messages` (m) for a `page` (which reads their columns) or when the state needs
    a release's lease. A text of 3 characters or more is looked up in the trigram index and
    its matches read first; with `walk` (a common word), the rows are read in time order
    instead and each checked against the matches, so the first ones make a page without
    sorting every match. A shorter text is looked for in every row's text."""
    at = driver or _driver(query)
    text = query.text.strip() if query.text else ""
    clauses: list[str] = []
    params: list[Any] = []
    if query.rule:
        clauses.append("r.rule = ?" if at == "r" else _having(at, "message_rules", "rule = ?"))
        params.append(query.rule)
    if query.state is not None:
        clause, values = _state_clause(query.state, at, "m.lease_until")
        clauses.append(clause)
        params += values
    if query.since is not None:
        clauses.append(f"{at}.time >= ?")
        params.append(_iso_utc(query.since))
    if query.until is not None:
        clauses.append(f"{at}.time < ?")
        params.append(_iso_utc(query.until))
    for value, sender in ((query.sender, 1), (query.recipient, 0)):
        if value:
            clauses.append(_having(at, "message_addresses", "address = ? AND is_sender = ?"))
            params += [value.strip().lower(), sender]
    if query.domain:
        clauses.append("d.domain = ?" if at == "d" else _having(at, "message_domains", "domain=?"))
        params.append(query.domain.strip().lower().lstrip("@").rstrip("."))
    indexed = len(text) >= 3  # a trigram's length
    if text and not indexed:
        like = "text LIKE ? ESCAPE '\\'"
        clauses.append(f"s.{like}" if at == "s" else _having(at, "message_search", like))
        params.append("%" + re.sub(r"([\\%_])", r"\\\1", text) + "%")
    elif text:
        clauses.append(
            "s.seq IN (SELECT rowid FROM message_text WHERE message_text MATCH ?)"
            if walk
            else "message_text MATCH ?"
        )
        params.append(_phrase(text))
    if at == "m":
        source = "FROM messages m"
    elif at == "s" and indexed and not walk:
        source = "FROM message_text CROSS JOIN message_search s ON s.seq = message_text.rowid"
    elif at == "s":
        # In time order (with the state first when given), never in the matches' order.
        index = "message_search_state" if query.state is not None else "message_search_time"
        source = f"FROM message_search s INDEXED BY {index}"
    else:
        source = f"FROM {_SIDE_TABLES[at]} {at}"
    if at != "m" and (page or query.state in ("releasing", "release_unknown")):
        source += f" JOIN messages m ON m.id = {at}.id"
    return source, (f"WHERE {' AND '.join(clauses)}" if clauses else ""), params


def _having(at: str, table: str, condition: str) -> str:
    """The rows of `at` whose message has a row in side table `table` meeting `condition`."""
    return f"{at}.id IN (SELECT id FROM {table} WHERE {condition})"


_SIDE_TABLES = {"r": "message_rules", "d": "message_domains", "s": "message_search"}


def _phrase(text: str) -> str:
    """`text` as one FTS5 phrase: with the trigram tokenizer, a part of the indexed text."""
    return '"' + text.replace('"', '""') + '"'


def _statements(script: str) -> Iterator[str]:
    """The statements of a migration script (a trigger's body holds semicolons)."""
    statement = ""
    for line in script.splitlines(keepends=True):
        statement += line
        if sqlite3.complete_statement(statement):
            yield statement
            statement = ""
    if statement.strip():
        raise ValueError(f"incomplete SQL statement: {statement[:80]!r}")


def checked_state(state: str) -> str:
    """A state a list may be filtered by (as shown: release_unknown included)."""
    if state not in STATES:
        raise QuarantineError(f"unknown state {state!r} (one of {', '.join(STATES)})")
    return state


def _state_clause(state: str, table: str, lease: str) -> tuple[str, list[Any]]:
    """SQL for "shown in `state`": the state column of `table`, the lease column `lease`."""
    checked_state(state)
    if state in ("releasing", "release_unknown"):
        compare = ">" if state == "releasing" else "<="
        return f"({table}.state = 'releasing' AND {lease} {compare} ?)", [_now()]
    return f"{table}.state = ?", [state]


def _lease(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value) if value else None


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
        state=shown_state(row["state"], _lease(row["lease_until"]), datetime.now(UTC)),
        events=events,
        node=row["node"],
    )


def _older(path: Path, cutoff: datetime) -> bool:
    try:
        return datetime.fromtimestamp(path.stat().st_mtime, UTC) < cutoff
    except FileNotFoundError:
        return False

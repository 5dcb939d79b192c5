"""What a fleet shares beside the quarantine (schema 002), in plain SQL on a `Database`: every
node's audit records, partitioned by day; the node registry's heartbeats; and retention, run
once an hour by whichever node holds its advisory lock.

Audit rows arrive as spool lines (`ops/auditcopy.py`), each one JSON object
`{"k": key, "t": time, "r": record}` holding the record exactly as its audit line was
written. A batch goes to the server as one JSON array and is taken apart there, so a thousand
records cost the node one string join. `(time, key)` is the primary key: a batch sent again
adds nothing.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any

import psycopg

from mailgate.filter.store.database import ADMIN_TIMEOUT, Database, mailgate_version

log = logging.getLogger("mailgate.fleet")

Conn = psycopg.Connection[Any]

# pg_advisory_*lock keys (distinct from database.MIGRATION_LOCK): "mgparts" and "mgretain".
PARTITION_LOCK = 0x6D67706172747300
RETENTION_LOCK = 0x6D6772657461696E
RETENTION_JOB = "retention"
_PARTITION_PREFIX = "audit_records_p"

_INSERT = """
INSERT INTO audit_records (time, key, node, door, action, rules, monitor, pack_version, record)
SELECT (e->>'t')::timestamptz, (e->>'k')::uuid, %(node)s, coalesce(e->'r'->>'door', ''),
       coalesce(e->'r'->>'action', ''),
       ARRAY(SELECT jsonb_array_elements_text(coalesce(e->'r'->'rules', '[]'))),
       ARRAY(SELECT jsonb_array_elements_text(coalesce(e->'r'->'monitor', '[]'))),
       coalesce(e->'r'->>'pack_version', ''), e->'r'
FROM jsonb_array_elements(%(batch)s::jsonb) AS e
ON CONFLICT DO NOTHING
"""
# A refused record, not an unreachable database: bad JSON, a time out of range, a record
# whose day was dropped by retention meanwhile.
_REFUSED = (psycopg.DataError, psycopg.IntegrityError)
_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")


def partition_name(day: date) -> str:
    return f"{_PARTITION_PREFIX}{day:%Y%m%d}"


def _partition_day(name: str) -> date | None:
    if not name.startswith(_PARTITION_PREFIX):
        return None
    try:
        return datetime.strptime(name.removeprefix(_PARTITION_PREFIX), "%Y%m%d").date()
    except ValueError:
        return None


@dataclass(frozen=True)
class Written:
    added: int  # rows new to the database
    refused: tuple[int, ...] = ()  # indexes of lines the database refused


def write_audit(db: Database, lines: list[str], days: set[date]) -> Written:
    """Insert spool lines whose records fall on `days` (UTC), making those days' partitions
    first. One transaction for the batch; when the database refuses something in it, each
    line is tried alone and the refused ones are named, so one bad line never holds the rest
    back. DatabaseError when the database cannot be reached (nothing is then written)."""

    def write(conn: Conn) -> Written:
        _make_partitions(conn, days)
        try:
            with conn.transaction():
                return Written(conn.execute(_INSERT, _params(db, lines)).rowcount)
        except _REFUSED as exc:
            log.warning("audit batch refused, trying its %d records one by one: %s",
                        len(lines), db.describe(exc))  # fmt: skip
        added, refused = 0, []
        for index, line in enumerate(lines):
            for text in (line, _cleaned(line)):
                if text is None:
                    refused.append(index)
                    break
                try:
                    with conn.transaction():
                        added += conn.execute(_INSERT, _params(db, [text])).rowcount
                    break
                except _REFUSED:
                    continue
            else:
                refused.append(index)
        return Written(added, tuple(refused))

    # The work is idempotent (keys), so a connection found broken is replaced and it runs again.
    return db.run(write, retry=True, atomic=False)


def _cleaned(line: str) -> str | None:
    """The line with what jsonb cannot hold (NUL, a lone surrogate: both escaped in a JSON
    line as \\u0000, \\udc80) replaced by U+FFFD; None when it is not JSON at all."""
    try:
        value = json.loads(line)
    except ValueError:
        return None
    return json.dumps(_replace_unstorable(value), ensure_ascii=False, separators=(",", ":"))


def _replace_unstorable(value: Any) -> Any:
    if isinstance(value, str):
        return _UNSTORABLE.sub("\ufffd", value)
    if isinstance(value, list):
        return [_replace_unstorable(v) for v in value]
    if isinstance(value, dict):
        return {_replace_unstorable(k): _replace_unstorable(v) for k, v in value.items()}
    return value


def _params(db: Database, lines: list[str]) -> dict[str, str]:
    return {"batch": f"[{','.join(lines)}]", "node": db.node}


def _make_partitions(conn: Conn, days: set[date]) -> None:
    """The partitions of `days` that do not exist yet, made under a lock (CREATE TABLE IF NOT
    EXISTS is not safe against a second node making the same table at the same moment)."""
    ordered = sorted(days)
    missing = conn.execute(
        "SELECT d FROM unnest(%s::date[]) AS d WHERE to_regclass(%s || to_char(d, 'YYYYMMDD'))"
        " IS NULL",
        (ordered, _PARTITION_PREFIX),
    ).fetchall()
    if not missing:
        return
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (PARTITION_LOCK,))
        for (day,) in missing:
            # Names and bounds are made from dates here, never from input.
            conn.execute(
                f"CREATE TABLE IF NOT EXISTS {partition_name(day)} PARTITION OF audit_records"
                f" FOR VALUES FROM ('{day.isoformat()} 00:00:00+00')"
                f" TO ('{(day + timedelta(days=1)).isoformat()} 00:00:00+00')".encode()
            )


def audit_days(db: Database) -> list[date]:
    """The days that have a partition, oldest first."""
    return db.run(_partition_days, retry=True, atomic=False)


def _partition_days(conn: Conn) -> list[date]:
    rows = conn.execute(
        "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid"
        " WHERE i.inhparent = 'audit_records'::regclass"
    ).fetchall()
    return sorted(d for (name,) in rows if (d := _partition_day(name)) is not None)


# --- reading the fleet's records --------------------------------------------------------------


@dataclass(frozen=True)
class RuleGroup:
    mode: str  # enforce | monitor
    rule: str
    rule_action: str  # what the record says the rule does ("" when it does not say)
    action: str  # the verdict's action
    messages: int


@dataclass(frozen=True)
class AuditCounts:
    messages: int
    first: datetime | None
    last: datetime | None
    groups: tuple[RuleGroup, ...]


def audit_counts(db: Database, since: datetime | None = None) -> AuditCounts:
    """Records at or after `since` (all of them with None), counted per rule and mode: the
    fleet's `rules stats`, summed in the database."""
    where = "" if since is None else "WHERE time >= %(since)s"
    params = {"since": since}

    def read(conn: Conn) -> AuditCounts:
        conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")  # one snapshot
        total = conn.execute(
            f"SELECT count(*), min(time), max(time) FROM audit_records {where}", params
        ).fetchone()
        rows = conn.execute(
            f"WITH a AS (SELECT action, rules, monitor, record->'rule_actions' AS ra"
            f" FROM audit_records {where})"
            " SELECT 'enforce', r, coalesce(ra->>r, ''), action, count(*)"
            " FROM a, unnest(rules) AS r GROUP BY 2, 3, 4"
            " UNION ALL SELECT 'monitor', r, coalesce(ra->>r, ''), action, count(*)"
            " FROM a, unnest(monitor) AS r GROUP BY 2, 3, 4",
            params,
        ).fetchall()
        assert total is not None
        return AuditCounts(total[0], total[1], total[2], tuple(RuleGroup(*r) for r in rows))

    return db.run(read, retry=True, timeout=max(db.timeout, ADMIN_TIMEOUT))


@dataclass(frozen=True)
class DailyHits:
    hits: tuple[tuple[str, date, int], ...]  # (rule, UTC day, messages it hit in either mode)
    versions: tuple[tuple[str, str], ...]  # (node, the pack version of its latest record)


def daily_hits(db: Database, first_day: date) -> DailyHits:
    """Every node's records from `first_day` (UTC) on, counted per rule and day in the
    database: the review console's charts for the fleet."""
    params = {"since": datetime.combine(first_day, datetime.min.time(), UTC)}

    def read(conn: Conn) -> DailyHits:
        conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")  # one snapshot
        hits = conn.execute(
            "SELECT r, (a.time AT TIME ZONE 'UTC')::date, count(*) FROM audit_records a"
            " CROSS JOIN LATERAL (SELECT DISTINCT unnest(a.rules || a.monitor) AS r) u"
            " WHERE a.time >= %(since)s GROUP BY 1, 2",
            params,
        ).fetchall()
        versions = conn.execute(
            "SELECT DISTINCT ON (node) node, pack_version FROM audit_records"
            " WHERE time >= %(since)s AND pack_version <> '' ORDER BY node, time DESC",
            params,
        ).fetchall()
        return DailyHits(
            tuple((rule, day, messages) for rule, day, messages in hits),
            tuple((node, version) for node, version in versions),
        )

    return db.run(read, retry=True, timeout=max(db.timeout, ADMIN_TIMEOUT))


# --- the node registry ------------------------------------------------------------------------


def heartbeat(db: Database, door: str, pack_version: str) -> None:
    """This node's door is alive and serves `pack_version` (the row `Database.prepare` made
    at start; made again if someone removed it)."""

    def beat(conn: Conn) -> None:
        conn.execute(
            "INSERT INTO nodes (node, door, version, pack_version, started, last_seen)"
            " VALUES (%s, %s, %s, %s, now(), now()) ON CONFLICT (node, door) DO UPDATE"
            " SET version = excluded.version, pack_version = excluded.pack_version,"
            " last_seen = excluded.last_seen",
            (db.node, door, mailgate_version(), pack_version),
        )

    db.run(beat, retry=True, atomic=False)


@dataclass(frozen=True)
class NodePack:
    node: str
    door: str
    pack_version: str


def live_packs(
    db: Database, seen_within: timedelta, timeout: float | None = None
) -> list[NodePack]:
    """The pack of every door that sent a heartbeat within `seen_within` and serves one."""

    def read(conn: Conn) -> list[NodePack]:
        rows = conn.execute(
            "SELECT node, door, pack_version FROM nodes WHERE pack_version <> ''"
            " AND last_seen > now() - %s ORDER BY node, door",
            (seen_within,),
        ).fetchall()
        return [NodePack(*row) for row in rows]

    return db.run(read, retry=True, atomic=False, timeout=timeout)


# --- retention --------------------------------------------------------------------------------


@dataclass(frozen=True)
class RetentionRun:
    dropped: tuple[date, ...]  # audit days dropped
    purged: int  # quarantined messages purged


def run_retention(
    db: Database,
    audit: timedelta | None,
    purge: Any | None,
    every: timedelta = timedelta(hours=1),
    timeout: float = 600.0,
) -> RetentionRun | None:
    """Enforce retention for the fleet if this node holds the retention lock and the last run
    (by any node) is `every` old; None when it is not this node's turn. `audit`: audit days
    entirely older than this are dropped; `purge(actor)`: the quarantine's purge, called while
    the lock is held (it records itself, who and which ids)."""

    def run(conn: Conn) -> RetentionRun | None:
        # A session lock on this connection, for the whole run: a node that dies mid-way
        # loses its connection and with it the lock.
        got = conn.execute("SELECT pg_try_advisory_lock(%s)", (RETENTION_LOCK,)).fetchone()
        if not got or not got[0]:
            return None
        try:
            with conn.transaction():
                claimed = conn.execute(
                    "INSERT INTO fleet_jobs (name, last_run, node) VALUES (%s, now(), %s)"
                    " ON CONFLICT (name) DO UPDATE SET last_run = excluded.last_run,"
                    " node = excluded.node WHERE fleet_jobs.last_run <= now() - %s"
                    " RETURNING name",
                    (RETENTION_JOB, db.node, every),
                ).fetchone()
            if claimed is None:
                return None
            dropped = _drop_days(conn, audit) if audit is not None else ()
            purged = purge("retention") if purge is not None else 0
            return RetentionRun(dropped, purged)
        finally:
            conn.execute("SELECT pg_advisory_unlock(%s)", (RETENTION_LOCK,))

    return db.run(run, atomic=False, timeout=timeout)


def _drop_days(conn: Conn, older_than: timedelta) -> tuple[date, ...]:
    """Drop each audit day whose every moment is older than `older_than` (by the database's
    clock): a day goes whole, once its last record has passed the retention."""
    row = conn.execute("SELECT (now() - %s) AT TIME ZONE 'UTC'", (older_than,)).fetchone()
    assert row is not None
    cutoff: datetime = row[0]
    dropped = []
    for day in _partition_days(conn):
        if datetime.combine(day + timedelta(days=1), datetime.min.time()) > cutoff:
            break
        with conn.transaction():
            conn.execute(f"DROP TABLE IF EXISTS {partition_name(day)}".encode())
        dropped.append(day)
        log.info("audit retention: dropped the records of %s", day.isoformat())
    return tuple(dropped)


def utc_day(moment: datetime) -> date:
    return moment.astimezone(UTC).date()

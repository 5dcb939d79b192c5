"""The quarantine of a fleet: records, bodies and history in PostgreSQL, one store for every
node (`database` in mailgate.yaml; `quarantine.path` is then not used).

A held message is one statement: its record, its body and its `quarantined` event are
inserted together and committed before `put` returns, so a door answers 250 (or DISCARD)
only for a message the database has. Every state change is one statement too: it changes the
record only from the states `lifecycle` allows and writes its event (who, node, time, the
next hop's reply) in the same statement, so two nodes releasing one message at the same
moment deliver it once. Times are the database's clock.
"""

from __future__ import annotations

import re
import secrets
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
from psycopg.rows import dict_row
from psycopg.types.json import Json

from mailgate.filter.detect.masking import mask_sensitive
from mailgate.filter.policy.envelope import Envelope
from mailgate.filter.policy.verdict import Verdict
from mailgate.filter.store.database import ADMIN_TIMEOUT, Database
from mailgate.filter.store.durable import new_id
from mailgate.filter.store.lifecycle import (
    FROM,
    OUTCOMES,
    Change,
    Claim,
    refusal,
)
from mailgate.filter.store.quarantine import (
    SORT_LIMIT,
    TEXT_COUNT_LIMIT,
    ActivityEntry,
    HeldPage,
    HeldQuery,
    HistoryPage,
    HistoryQuery,
    QuarantineError,
    QuarantineEvent,
    QuarantineRecord,
    StateChanges,
    StateError,
    UnknownMessage,
    as_utc,
    checked_state,
    held_fields,
    is_valid_id,
)

Conn = psycopg.Connection[Any]

HELD_COUNT_DEADLINE = 2.0  # seconds; Prometheus' scrape timeout is 10 s by default

_SHOWN = (
    "CASE WHEN state = 'releasing' AND lease_until <= now() THEN 'release_unknown' ELSE state END"
)
# SQL for "the record is shown in this state" (fixed text, never user input).
_IN_STATE = {
    "held": "state = 'held'",
    "releasing": "(state = 'releasing' AND lease_until > now())",
    "release_unknown": "(state = 'releasing' AND lease_until <= now())",
    "released": "state = 'released'",
    "deleted": "state = 'deleted'",
}
_CLAIM = (
    "state = 'releasing', claim = %(token)s, claim_node = %(node)s, claimed_at = now(),"
    " lease_until = now() + %(lease)s, mark_used = false"
)
_SET = {
    Change.CLAIM: _CLAIM,
    Change.FORCE: _CLAIM,
    Change.RELEASED: "state = 'released'",
    Change.FAILED: "state = 'held'",
    Change.UNKNOWN: "lease_until = now()",
    Change.DELETE: "state = 'deleted'",
}
_COLUMNS = (
    "id, time, node, door, queue_id, message_id, sender, recipients, client_address, subject,"
    " size, action, rules, monitor, hits, reason, pack_version"
)
_SECRET_NAME = "release_mark"


class PostgresQuarantine(StateChanges):
    """`QuarantineStore` on a `Database`; safe from threads and forked processes. Its delete
    removes the body in the statement that changes the record."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self.node = db.node

    def __repr__(self) -> str:
        return f"PostgresQuarantine({self.db!r})"

    # --- writing ---------------------------------------------------------------------------

    def put(
        self, raw: bytes, envelope: Envelope, verdict: Verdict, subject: str | None = None
    ) -> str:
        fields = held_fields(raw, envelope, verdict, subject)
        qid = new_id()
        params = {
            **fields,
            "id": qid,
            "node": self.node,
            "recipients": list(fields["recipients"]),
            "rules": list(fields["rules"]),
            "monitor": list(fields["monitor"]),
            "hits": Json(fields["hits"]),
            "raw": raw,
        }

        def insert(conn: Conn) -> None:
            # ON CONFLICT: tried again after a lost answer, the first attempt may have
            # committed; the second then adds nothing.
            conn.execute(
                "WITH r AS (INSERT INTO quarantine"
                f" ({_COLUMNS}, state) VALUES (%(id)s, now(), %(node)s, %(door)s,"
                " %(queue_id)s, %(message_id)s, %(sender)s, %(recipients)s::text[],"
                " %(client_address)s, %(subject)s, %(size)s, %(action)s, %(rules)s::text[],"
                " %(monitor)s::text[], %(hits)s, %(reason)s, %(pack_version)s, 'held')"
                " ON CONFLICT (id) DO NOTHING RETURNING id, time),"
                " b AS (INSERT INTO quarantine_bodies (id, raw) SELECT id, %(raw)b FROM r)"
                " INSERT INTO quarantine_events (id, time, kind, actor, node)"
                " SELECT id, time, 'quarantined', %(door)s, %(node)s FROM r",
                params,
            )

        # In an explicit transaction although it is one statement: a statement sent to a
        # frozen server would still commit when the server wakes, after the sender was told
        # 451; this way nothing commits unless COMMIT went out, after the INSERT answered.
        self.db.run(insert, retry=True)
        return qid

    def _change(
        self,
        qid: str,
        change: Change,
        actor: str,
        claim: Claim | None = None,
        reply: str = "",
        reason: str = "",
    ) -> bool:
        _check_id(qid)
        condition = " OR ".join(_IN_STATE[s] for s in sorted(FROM[change]))
        if change in OUTCOMES:
            condition = f"({condition}) AND claim = %(token)s"
        body = (
            " b AS (DELETE FROM quarantine_bodies WHERE id IN (SELECT id FROM c)),"
            if change is Change.DELETE
            else ""
        )
        params = {
            "id": qid,
            "kind": str(change),
            "actor": actor,
            "node": self.node,
            "reply": mask_sensitive(reply),  # a next hop's reply can quote the message
            "reason": mask_sensitive(reason),  # typed by reviewers
            "token": claim.token if claim else None,
            "lease": claim.lease if claim else None,
        }

        def change_it(conn: Conn) -> tuple[bool, str | None]:
            changed = conn.execute(
                f"WITH c AS (UPDATE quarantine SET {_SET[change]}"
                f" WHERE id = %(id)s AND ({condition}) RETURNING id),{body}"
                " e AS (INSERT INTO quarantine_events (id, time, kind, actor, node, reply, reason)"
                " SELECT id, now(), %(kind)s, %(actor)s, %(node)s, %(reply)s, %(reason)s FROM c)"
                " SELECT count(*) FROM c",
                params,
            ).fetchone()
            if changed and changed[0]:
                return True, None
            row = conn.execute(
                f"SELECT {_SHOWN} FROM quarantine WHERE id = %(id)s", params
            ).fetchone()
            if row is None:
                return False, None
            if change in OUTCOMES:
                # The claim is gone, the outcome is history all the same.
                conn.execute(
                    "INSERT INTO quarantine_events (id, time, kind, actor, node, reply, reason)"
                    " VALUES (%(id)s, now(), %(kind)s, %(actor)s, %(node)s, %(reply)s,"
                    " %(reason)s)",
                    params,
                )
            return False, row[0]

        done, shown = self.db.run(change_it)
        if done:
            return True
        if shown is None:
            raise UnknownMessage(qid)
        if change in OUTCOMES:
            return False
        raise StateError(refusal(qid, change, shown) or shown, shown)

    def consume_mark(self, qid: str, token: str) -> tuple[str, tuple[str, ...]] | None:
        """Spend the release mark of the release in flight for `qid` with claim `token`: the
        first call gets (sender, recipients) of the held message, every later one None."""
        if not is_valid_id(qid):
            return None

        def spend(conn: Conn) -> tuple[str, tuple[str, ...]] | None:
            row = conn.execute(
                "UPDATE quarantine SET mark_used = true WHERE id = %s AND claim = %s"
                f" AND {_IN_STATE['releasing']} AND NOT mark_used RETURNING sender, recipients",
                (qid, token),
            ).fetchone()
            return (row[0], tuple(row[1])) if row else None

        return self.db.run(spend, atomic=False)

    def release_secret(self) -> bytes:
        """The fleet's release-mark secret, made by whichever node asks first."""

        def read(conn: Conn) -> bytes:
            conn.execute(
                "INSERT INTO secrets (name, value) VALUES (%s, %s) ON CONFLICT DO NOTHING",
                (_SECRET_NAME, secrets.token_bytes(32)),
            )
            row = conn.execute("SELECT value FROM secrets WHERE name = %s", (_SECRET_NAME,))
            return bytes(row.fetchone()[0])  # type: ignore[index]

        return self.db.run(read, retry=True)

    def purge(self, older_than: timedelta, actor: str) -> int:
        """Records older than `older_than` go with their bodies and events, except a release
        in flight; the purge stays on record (who, when, which ids)."""

        def purge_them(conn: Conn) -> int:
            row = conn.execute(
                "WITH gone AS (DELETE FROM quarantine WHERE time < now() - %(age)s"
                f" AND NOT {_IN_STATE['releasing']} RETURNING id)"
                " INSERT INTO quarantine_purges (time, actor, node, older_than, ids)"
                " SELECT now(), %(actor)s, %(node)s, %(text)s,"
                " coalesce(array_agg(id ORDER BY id), '{}') FROM gone"
                " RETURNING cardinality(ids)",
                {"age": older_than, "actor": actor, "node": self.node, "text": str(older_than)},
            ).fetchone()
            return row[0] if row else 0

        return self.db.run(purge_them, timeout=max(self.db.timeout, ADMIN_TIMEOUT))

    def import_record(self, record: QuarantineRecord, raw: bytes | None) -> bool:
        """Copy a record of another store, with its history and body (None once deleted);
        False if the id is here already, so importing twice copies nothing twice. A release
        that was in flight there is release_unknown here."""
        params = {
            **{name: getattr(record, name) for name in _COLUMNS.replace(" ", "").split(",")},
            "recipients": list(record.recipients),
            "rules": list(record.rules),
            "monitor": list(record.monitor),
            "hits": Json(list(record.hits)),
            "node": record.node or self.node,
            "state": record.state if record.state != "release_unknown" else "releasing",
            "raw": raw,
        }

        def copy(conn: Conn) -> bool:
            inserted = conn.execute(
                f"INSERT INTO quarantine ({_COLUMNS}, state, lease_until) VALUES (%(id)s,"
                " %(time)s, %(node)s, %(door)s, %(queue_id)s, %(message_id)s, %(sender)s,"
                " %(recipients)s::text[], %(client_address)s, %(subject)s, %(size)s,"
                " %(action)s, %(rules)s::text[], %(monitor)s::text[], %(hits)s, %(reason)s,"
                " %(pack_version)s, %(state)s, CASE WHEN %(state)s = 'releasing' THEN now() END)"
                " ON CONFLICT (id) DO NOTHING RETURNING id",
                params,
            ).fetchone()
            if inserted is None:
                return False
            if raw is not None:
                conn.execute(
                    "INSERT INTO quarantine_bodies (id, raw) VALUES (%(id)s, %(raw)b)", params
                )
            with conn.cursor() as cursor:
                cursor.executemany(
                    "INSERT INTO quarantine_events (id, time, kind, actor, node, reply, reason)"
                    " VALUES (%s, %s, %s, %s, %s, %s, %s)",
                    [
                        (record.id, e.time, e.kind, e.actor, e.node or params["node"], e.reply,
                         e.reason)
                        for e in record.events
                    ],
                )  # fmt: skip
            return True

        return self.db.run(copy, timeout=max(self.db.timeout, ADMIN_TIMEOUT))

    def import_purge(self, purge: dict[str, Any]) -> bool:
        """Copy one entry of another store's purge record; False if it is here already."""
        moment = datetime.fromisoformat(purge["time"])

        def copy(conn: Conn) -> bool:
            row = conn.execute(
                "INSERT INTO quarantine_purges (time, actor, node, older_than, ids)"
                " SELECT %(time)s, %(actor)s, %(node)s, %(older_than)s, %(ids)s::text[]"
                " WHERE NOT EXISTS (SELECT 1 FROM quarantine_purges WHERE time = %(time)s"
                " AND actor = %(actor)s AND ids = %(ids)s::text[]) RETURNING seq",
                {**purge, "time": moment, "node": purge.get("node") or self.node},
            ).fetchone()
            return row is not None

        return self.db.run(copy)

    # --- reading ---------------------------------------------------------------------------

    def get(self, qid: str) -> QuarantineRecord:
        _check_id(qid)
        records = self._select("WHERE id = %(id)s", {"id": qid})
        if not records:
            raise UnknownMessage(qid)
        return records[0]

    def raw(self, qid: str) -> bytes:
        _check_id(qid)

        def read(conn: Conn) -> tuple[str, bytes | None] | None:
            return conn.execute(
                f"SELECT {_SHOWN}, b.raw FROM quarantine q LEFT JOIN quarantine_bodies b"
                " USING (id) WHERE q.id = %s",
                (qid,),
            ).fetchone()

        row = self.db.run(read, retry=True, atomic=False)
        if row is None:
            raise UnknownMessage(qid)
        if row[0] == "deleted":
            raise QuarantineError(f"quarantined message {qid} was deleted")
        if row[1] is None:
            raise QuarantineError(f"quarantined message {qid}: body missing")
        return bytes(row[1])

    def count(self) -> int:
        def read(conn: Conn) -> int:
            row = conn.execute("SELECT count(*) FROM quarantine WHERE state = 'held'").fetchone()
            return row[0] if row else 0

        # Read at scrape time: a scrape must answer (its gauge NaN) before the scraper gives
        # up, not wait out the store's deadline while the database is away.
        return self.db.run(read, retry=True, atomic=False, timeout=HELD_COUNT_DEADLINE)

    def purges(self) -> list[dict[str, Any]]:
        def read(conn: Conn) -> list[dict[str, Any]]:
            with conn.cursor(row_factory=dict_row) as cursor:
                rows = cursor.execute(
                    "SELECT time, actor, node, older_than, ids FROM quarantine_purges ORDER BY seq"
                ).fetchall()
            return [{**r, "time": r["time"].astimezone(UTC).isoformat()} for r in rows]

        return self.db.run(read, retry=True)

    def list(
        self,
        since: datetime | None = None,
        rule: str | None = None,
        state: str | None = None,
    ) -> list[QuarantineRecord]:
        """Oldest first. `rule` matches enforce and monitor rule ids."""
        where, params = _where(HeldQuery(state=state, rule=rule, since=since))
        return self._select(where, params)

    # --- the review console's pages --------------------------------------------------------

    def search(self, query: HeldQuery, offset: int = 0, limit: int = 50) -> HeldPage:
        where, params = _where(query)
        order = "DESC" if query.newest_first else "ASC"
        params = {**params, "limit": max(limit, 0), "offset": max(offset, 0)}

        def read(conn: Conn) -> HeldPage:
            conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")  # page and total
            with conn.cursor(row_factory=dict_row) as cursor:
                if query.text:  # counted this far, as in every store
                    total = cursor.execute(
                        f"SELECT count(*) AS n FROM (SELECT 1 FROM quarantine {where}"
                        " LIMIT %(cap)s) AS c",
                        {**params, "cap": TEXT_COUNT_LIMIT + 1},
                    ).fetchone()["n"]
                else:
                    side = _side_where(query) if query.rule or query.domain else None
                    table, counted, values = side or ("quarantine", where, params)
                    total = cursor.execute(
                        f"SELECT count(*) AS n FROM {table} {counted}", values
                    ).fetchone()["n"]
                rows = f"SELECT {_COLUMNS}, {_SHOWN} AS state FROM quarantine {where}"
                if query.text and total <= SORT_LIMIT:
                    # Few matches: all of them through the trigram index, then sorted. Left to
                    # itself, the planner would walk the time index for the page's 50 rows
                    # (right for a common word) and read every row for a rare one.
                    rows = f"WITH found AS MATERIALIZED ({rows}) SELECT * FROM found"
                records = cursor.execute(
                    f"{rows} ORDER BY time {order}, id {order} LIMIT %(limit)s OFFSET %(offset)s",
                    params,
                ).fetchall()
                exact = not query.text or total <= TEXT_COUNT_LIMIT
                return HeldPage(tuple(_record(row, ()) for row in records), total, exact)

        return self.db.run(read, retry=True, timeout=max(self.db.timeout, ADMIN_TIMEOUT))

    def rule_counts(self, query: HeldQuery) -> dict[str, int]:
        query = replace(query, rule=None)
        side = _side_where(query)
        if side is not None:
            # From the side tables' indexes alone (the start page, a domain's messages).
            table, where, params = side
            source = f"{table} JOIN quarantine_rule_hits r USING (id)" if query.domain else table
            sql = f"SELECT rule, count(*) FROM {source} {where} GROUP BY rule"
        else:
            where, params = _where(query)
            # A rule is in one of the two lists of a message, once.
            sql = (
                "SELECT rule, count(*) FROM quarantine, unnest(rules || monitor) AS rule"
                f" {where} GROUP BY rule"
            )

        def read(conn: Conn) -> dict[str, int]:
            return {rule: n for rule, n in conn.execute(f"{sql} ORDER BY rule", params)}

        return self.db.run(read, retry=True, atomic=False, timeout=ADMIN_TIMEOUT)

    def record_activity(
        self, kind: str, actor: str, qid: str | None = None, reason: str = "", detail: str = ""
    ) -> None:
        def write(conn: Conn) -> None:
            conn.execute(
                "INSERT INTO quarantine_activity (time, node, kind, actor, qid, reason, detail)"
                " VALUES (now(), %s, %s, %s, %s, %s, %s)",
                (self.node, kind, actor, qid, mask_sensitive(reason), mask_sensitive(detail)),
            )

        self.db.run(write, atomic=False)

    def history(self, query: HistoryQuery, offset: int = 0, limit: int = 100) -> HistoryPage:
        clauses: list[str] = []
        params: dict[str, Any] = {"limit": max(limit, 0), "offset": max(offset, 0)}
        for name in ("kind", "actor"):
            if getattr(query, name):
                clauses.append(f"{name} = %({name})s")
                params[name] = getattr(query, name)
        if query.since is not None:
            clauses.append("time >= %(since)s")
            params["since"] = as_utc(query.since)
        if query.until is not None:
            clauses.append("time < %(until)s")
            params["until"] = as_utc(query.until)
        if query.text:
            clauses.append(
                "(strpos(lower(coalesce(qid, '')), %(text)s) > 0"
                " OR strpos(lower(reason), %(text)s) > 0 OR strpos(lower(detail), %(text)s) > 0)"
            )
            params["text"] = query.text.lower()
        where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
        union = (
            "SELECT time, kind, actor, node, id AS qid, reason, reply AS detail"
            " FROM quarantine_events WHERE kind != 'quarantined'"
            " UNION ALL SELECT time, 'purged', actor, node, NULL, '',"
            " 'older than ' || older_than || ': ' || cardinality(ids) || ' message(s)'"
            " FROM quarantine_purges"
            " UNION ALL SELECT time, kind, actor, node, qid, reason, detail"
            " FROM quarantine_activity"
        )

        def read(conn: Conn) -> HistoryPage:
            conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
            with conn.cursor(row_factory=dict_row) as cursor:
                rows = cursor.execute(
                    f"SELECT * FROM ({union}) AS h {where} ORDER BY time DESC"
                    " LIMIT %(limit)s OFFSET %(offset)s",
                    params,
                ).fetchall()
                total = cursor.execute(f"SELECT count(*) AS n FROM ({union}) AS h {where}", params)
                entries = tuple(
                    ActivityEntry(**{**row, "time": row["time"].astimezone(UTC)}) for row in rows
                )
                return HistoryPage(entries, total.fetchone()["n"])

        return self.db.run(read, retry=True, timeout=max(self.db.timeout, ADMIN_TIMEOUT))

    def _select(self, where: str, params: dict[str, Any]) -> list[QuarantineRecord]:
        def read(conn: Conn) -> list[QuarantineRecord]:
            # One snapshot: the records and their events agree.
            conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
            with conn.cursor(row_factory=dict_row) as cursor:
                rows = cursor.execute(
                    f"SELECT {_COLUMNS}, {_SHOWN} AS state FROM quarantine {where}"
                    " ORDER BY time, id",
                    params,
                ).fetchall()
                events: dict[str, list[QuarantineEvent]] = {}
                if rows:
                    cursor.execute(
                        "SELECT id, time, kind, actor, reply, reason, node"
                        " FROM quarantine_events WHERE id = ANY(%s) ORDER BY seq",
                        ([r["id"] for r in rows],),
                    )
                    for e in cursor:
                        events.setdefault(e.pop("id"), []).append(
                            QuarantineEvent(**{**e, "time": e["time"].astimezone(UTC)})
                        )
            return [_record(row, tuple(events.get(row["id"], ()))) for row in rows]

        return self.db.run(read, retry=True, timeout=max(self.db.timeout, ADMIN_TIMEOUT))


def _record(row: dict[str, Any], events: tuple[QuarantineEvent, ...]) -> QuarantineRecord:
    return QuarantineRecord(
        **{
            **row,
            "time": row["time"].astimezone(UTC),
            "recipients": tuple(row["recipients"]),
            "rules": tuple(row["rules"]),
            "monitor": tuple(row["monitor"]),
            "hits": tuple(row["hits"]),
        },
        events=events,
    )


def _where(query: HeldQuery) -> tuple[str, dict[str, Any]]:
    """WHERE and parameters over `quarantine` for a query, as the local store reads it."""
    clauses: list[str] = []
    params: dict[str, Any] = {}
    if query.state is not None:
        clauses.append(_IN_STATE[checked_state(query.state)])
    if query.rule:
        clauses.append("(rules || monitor) @> ARRAY[%(rule)s]::text[]")
        params["rule"] = query.rule
    if query.sender:
        clauses.append("lower(sender) = %(sender)s")
        params["sender"] = query.sender.strip().lower()
    # The indexed columns of schema 4 (004_console_search.sql).
    if query.recipient:
        clauses.append("recipients_lower @> ARRAY[%(rcpt)s]::text[]")
        params["rcpt"] = query.recipient.strip().lower()
    if query.domain:
        clauses.append("domains @> ARRAY[%(domain)s]::text[]")
        params["domain"] = query.domain.strip().lower().lstrip("@").rstrip(".")
    if query.since is not None:
        clauses.append("time >= %(since)s")
        params["since"] = as_utc(query.since)
    if query.until is not None:
        clauses.append("time < %(until)s")
        params["until"] = as_utc(query.until)
    if query.text:
        # A text under 3 characters has no trigram: the index would be read whole, then every
        # row; `search || ''` is not the indexed column, so the rows are read in time order.
        searched = "(search || '')" if len(query.text.strip()) < 3 else "search"
        clauses.append(f"{searched} ILIKE %(like)s")
        params["like"] = "%" + re.sub(r"([\\%_])", r"\\\1", query.text.strip()) + "%"
    return (f"WHERE {' AND '.join(clauses)}" if clauses else ""), params


def _side_where(query: HeldQuery) -> tuple[str, str, dict[str, Any]] | None:
    """The side table (schema 4) that answers a count for `query` alone, with WHERE and
    parameters: quarantine_rule_hits for a rule, quarantine_domain_hits for a domain (alias
    d), each holding state and time; for neither, quarantine_rule_hits (counts per rule).
    None when the query needs the records (an address, a text, both a rule and a domain, or
    a release's lease)."""
    if (
        query.sender
        or query.recipient
        or query.text
        or (query.rule and query.domain)
        or query.state in ("releasing", "release_unknown")
    ):
        return None
    table, at = ("quarantine_domain_hits d", "d.") if query.domain else ("quarantine_rule_hits", "")
    clauses: list[str] = []
    params: dict[str, Any] = {}
    if query.domain:
        clauses.append("d.domain = %(domain)s")
        params["domain"] = query.domain.strip().lower().lstrip("@").rstrip(".")
    if query.rule:
        clauses.append("rule = %(rule)s")
        params["rule"] = query.rule
    if query.state is not None:
        clauses.append(f"{at}state = %(state)s")
        params["state"] = checked_state(query.state)
    if query.since is not None:
        clauses.append(f"{at}time >= %(since)s")
        params["since"] = as_utc(query.since)
    if query.until is not None:
        clauses.append(f"{at}time < %(until)s")
        params["until"] = as_utc(query.until)
    return table, (f"WHERE {' AND '.join(clauses)}" if clauses else ""), params


def _check_id(qid: str) -> None:
    if not is_valid_id(qid):  # ids come from the command line
        raise UnknownMessage(qid)

"""The audit records' copy in the fleet's database, in this process against a private
PostgreSQL: records through the real reporter reach the database once each, across the
database stopping and starting; a spool left by a dead process (a line cut short, a damaged
line) is sent on the next start; what jsonb cannot hold is stored replaced; `rules stats`
counts from the database as from the file; retention drops whole old days and old held
messages, once an hour for the fleet, whichever node holds the lock."""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
import pytest
from prometheus_client.parser import text_string_to_metric_families

from mailgate.filter.ops.audit import AuditLog
from mailgate.filter.ops.auditcopy import AuditCopy, SpoolInUse
from mailgate.filter.ops.metrics import Metrics
from mailgate.filter.ops.report import Reporter
from mailgate.filter.ops.rulestats import collect, from_database
from mailgate.filter.policy.envelope import Envelope
from mailgate.filter.policy.verdict import Action, Verdict
from mailgate.filter.store.database import Database
from mailgate.filter.store.dburl import parse_database_url
from mailgate.filter.store.fleet import (
    audit_counts,
    audit_days,
    partition_name,
    run_retention,
    write_audit,
)
from mailgate.filter.store.postgres import PostgresQuarantine
from tests.support.postgres import (  # noqa: F401
    PostgresInstance,
    database_url_fixture,
    pg_server_fixture,
    private_pg_fixture,
    requires_postgres,
)
from tests.support.samples import message
from tests.support.scrape import Samples, value
from tests.support.waiting import wait_until

pytestmark = [requires_postgres, pytest.mark.timeout(120)]


def database(url: str, node: str = "gw1", timeout: float = 3.0) -> Database:
    db = Database(parse_database_url(url), node, timeout=timeout)
    db.prepare("relay")
    return db


def verdict(n: int) -> Verdict:
    """Every third message held by an enforce rule; every second hit by a monitor rule that
    would have rejected it."""
    return Verdict(
        Action.QUARANTINE if n % 3 == 0 else Action.ACCEPT,
        rules=["card-number"] if n % 3 == 0 else [],
        monitor=["draft-rule"] if n % 2 == 0 else [],
        pack_version="pack-a",
    )


def report(reporter: Reporter, n: int) -> dict[str, object]:
    envelope = Envelope("alice@example.com", ("bob@example.org",), queue_id=f"Q{n}")
    return reporter.report_verdict(
        "relay", envelope, f"<m{n}@example.com>", 100 + n, verdict(n), {"reply": "250 ok"}
    )


def rows(url: str) -> list[tuple[str, str, int]]:
    """(key, queue id, size) of every audit row."""
    with psycopg.connect(url) as conn:
        found = conn.execute(
            "SELECT key::text, record->>'queue_id', (record->>'size')::int FROM audit_records"
            " ORDER BY (record->>'size')::int"
        ).fetchall()
    return [(k, q, s) for k, q, s in found]


def sample(metrics: Metrics, name: str) -> float:
    samples: Samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(metrics.render().decode())
        for s in family.samples
    }
    return value(samples, name)


@pytest.fixture(name="copies")
def copies_fixture() -> Iterator[list[AuditCopy]]:
    made: list[AuditCopy] = []
    yield made
    for copy in made:
        copy.close()


def test_records_reach_the_database_once_across_a_stop_and_start(
    private_pg: PostgresInstance, tmp_path: Path, copies: list[AuditCopy]
) -> None:
    url = private_pg.create_database()
    db = database(url)
    metrics = Metrics()
    reporter = Reporter(AuditLog(tmp_path / "audit.jsonl"), metrics)
    copy = AuditCopy(db, tmp_path / "spool" / "relay.spool", metrics.registry, interval=0.1)
    copy.start()
    copies.append(copy)
    reporter.audit_copy = copy
    for n in range(20):
        report(reporter, n)
    wait_until(lambda: len(rows(url)) == 20, 30, "the first 20 rows")
    private_pg.stop("immediate")  # as a crash: no goodbye to the clients
    for n in range(20, 50):
        report(reporter, n)
    wait_until(lambda: copy.spool.stat().st_size > 0 and copy.backlog == 30, 30, "30 spooled")
    assert sample(metrics, "mailgate_audit_spool_records") == 30
    stalled = sample(metrics, "mailgate_audit_sent_timestamp_seconds")
    private_pg.start()
    wait_until(lambda: copy.backlog == 0, 60, "the spool to empty")
    assert sample(metrics, "mailgate_audit_sent_timestamp_seconds") > stalled
    found = rows(url)
    assert [size for _, _, size in found] == [100 + n for n in range(50)]
    assert len({key for key, _, _ in found}) == 50
    assert copy.spool.stat().st_size == 0
    assert sample(metrics, "mailgate_audit_spool_records") == 0
    # The row holds the audit line as written, byte for byte the same record.
    lines = (tmp_path / "audit.jsonl").read_text().splitlines()
    with psycopg.connect(url) as conn:
        stored = conn.execute(
            "SELECT record FROM audit_records WHERE record->>'queue_id' = 'Q33'"
        ).fetchone()
    assert stored is not None and stored[0] == json.loads(lines[33])


def test_a_spool_left_behind_is_sent_and_its_damage_dropped(
    database_url: str, tmp_path: Path, copies: list[AuditCopy]
) -> None:
    db = database(database_url)
    spool = tmp_path / "relay.spool"
    now = datetime.now(UTC).isoformat(timespec="milliseconds")
    good = [
        f'{{"k":"{uuid.uuid4().hex}","t":"{now}","r":'
        f'{{"time":"{now}","door":"relay","action":"accept","rules":[],"monitor":[],'
        f'"queue_id":"S{n}","size":{n}}}}}'
        for n in range(3)
    ]
    nul = good[2].replace('"queue_id":"S2"', '"queue_id":"S2\\u0000x"')
    damaged = '{"k":"not-a-key","t":"x","r":{}}'
    cut = good[0][:40]  # the process died writing this one
    spool.write_text("\n".join([good[0], damaged, good[1], nul, good[0]]) + "\n" + cut)
    metrics = Metrics()
    copy = AuditCopy(db, spool, metrics.registry, interval=0.1)
    copy.start()
    copies.append(copy)
    wait_until(lambda: copy.backlog == 0, 30, "the spool to be sent")
    # good[0] twice: one row. The damaged line is counted, the cut one dropped at start.
    assert sorted(q for _, q, _ in rows(database_url)) == ["S0", "S1", "S2\ufffdx"]
    assert sample(metrics, "mailgate_audit_records_refused_total") == 1
    assert spool.read_bytes() == b""
    with pytest.raises(SpoolInUse):
        AuditCopy(db, spool).start()


def test_rules_stats_from_the_database_match_the_file(
    database_url: str, tmp_path: Path, copies: list[AuditCopy]
) -> None:
    db = database(database_url)
    metrics = Metrics()
    audit = tmp_path / "audit.jsonl"
    reporter = Reporter(AuditLog(audit), metrics)
    copy = AuditCopy(db, tmp_path / "relay.spool", interval=0.1)
    copy.start()
    copies.append(copy)
    reporter.audit_copy = copy
    for n in range(30):
        report(reporter, n)
    wait_until(lambda: copy.backlog == 0 and len(rows(database_url)) == 30, 30, "30 rows")
    actions = {"draft-rule": "quarantine"}
    with audit.open() as lines:
        from_file = collect(lines, None, actions).to_dict()
    from_db = from_database(audit_counts(db), actions).to_dict()
    assert from_db == from_file
    assert from_db["messages"] == 30
    assert {(r["rule"], r["messages"], r["would_change"]) for r in from_db["rules"]} == {
        ("card-number", 10, 0),
        ("draft-rule", 15, 10),  # holding changes the 10 accepted, not the 5 held
    }
    since = datetime.fromisoformat(json.loads(audit.read_text().splitlines()[20])["time"])
    with audit.open() as lines:
        later = collect(lines, since).messages
    assert audit_counts(db, since).messages == later and 10 <= later < 30


def _old_line(moment: datetime, n: int) -> str:
    stamp = moment.isoformat(timespec="milliseconds")
    return (
        f'{{"k":"{uuid.uuid4().hex}","t":"{stamp}","r":{{"time":"{stamp}","door":"relay",'
        f'"action":"accept","rules":[],"monitor":[],"size":{n}}}}}'
    )


def test_retention_drops_old_days_and_purges_old_held_messages(database_url: str) -> None:
    db = database(database_url)
    now = datetime.now(UTC)
    moments = [now - timedelta(days=d) for d in (200, 181, 179, 1, 0)]
    for n, moment in enumerate(moments):
        write_audit(db, [_old_line(moment, n)], {moment.date()})
    assert audit_days(db) == sorted({m.date() for m in moments})
    store = PostgresQuarantine(db)
    envelope = Envelope("alice@example.com", ("bob@example.org",))
    held = Verdict(Action.QUARANTINE, rules=["card-number"], reason="card")
    old_id = store.put(message("old"), envelope, held)
    new_id = store.put(message("new"), envelope, held)
    with psycopg.connect(database_url) as conn:
        conn.execute("UPDATE quarantine SET time = now() - interval '31 days' WHERE id = %s",
                     (old_id,))  # fmt: skip

    ran = run_retention(
        db, timedelta(days=180), lambda actor: store.purge(timedelta(days=30), actor)
    )
    assert ran is not None
    # Days wholly older than 180 days go; the day 179 days back and later stay.
    assert set(ran.dropped) == {moments[0].date(), moments[1].date()}
    assert audit_days(db) == sorted({m.date() for m in moments[2:]})
    with psycopg.connect(database_url) as conn:
        sizes = conn.execute("SELECT (record->>'size')::int FROM audit_records").fetchall()
        gone = conn.execute(f"SELECT to_regclass('{partition_name(moments[0].date())}')").fetchone()
    assert sorted(s for (s,) in sizes) == [2, 3, 4] and gone == (None,)
    assert ran.purged == 1
    assert [r.id for r in store.list()] == [new_id]
    assert store.purges()[-1]["actor"] == "retention" and store.purges()[-1]["ids"] == [old_id]
    # Within the hour the fleet's run is done: no node runs it again.
    assert run_retention(database(database_url, "gw2"), timedelta(days=1), None) is None


def test_retention_runs_on_one_node_of_many(database_url: str) -> None:
    nodes = [database(database_url, f"gw{n}") for n in range(4)]
    results: list[object] = []
    start = threading.Barrier(len(nodes))

    def run(db: Database) -> None:
        start.wait()
        results.append(run_retention(db, timedelta(days=30), None))

    threads = [threading.Thread(target=run, args=(db,)) for db in nodes]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert len(results) == 4 and sum(r is not None for r in results) == 1
    with psycopg.connect(database_url) as conn:
        job = conn.execute("SELECT node FROM fleet_jobs WHERE name = 'retention'").fetchone()
    assert job is not None and job[0] in {f"gw{n}" for n in range(4)}

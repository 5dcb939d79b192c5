"""The PostgreSQL layer against a private server: the schema made once under the advisory
lock, a newer schema refused, one-line errors without the password, the deadline against a
frozen server, and reconnection after a restart without restarting mailgate."""

from __future__ import annotations

import multiprocessing
import time
from multiprocessing.connection import Connection
from multiprocessing.synchronize import Barrier

import psycopg
import pytest

from mailgate.filter.store.database import (
    Database,
    DatabaseError,
    SchemaTooNew,
    mailgate_version,
    migrations,
)
from mailgate.filter.store.dburl import parse_database_url
from tests.support.postgres import (  # noqa: F401
    PASSWORD,
    PostgresInstance,
    database_url_fixture,
    pg_server_fixture,
    private_pg_fixture,
    requires_postgres,
)

pytestmark = [requires_postgres, pytest.mark.timeout(120)]


def db_for(url: str, node: str = "gw1", timeout: float = 5.0, pool_size: int = 0) -> Database:
    return Database(parse_database_url(url), node, timeout=timeout, pool_size=pool_size)


def _prepare_at(url: str, start: Barrier, node: str, conn: Connection) -> None:
    start.wait(30)
    try:
        conn.send(("ok", db_for(url, node).prepare("relay")))
    except Exception as exc:  # reported to the test, which fails on it
        conn.send(("error", repr(exc)))


def test_nodes_starting_at_once_make_one_schema(pg_server: PostgresInstance) -> None:
    ctx = multiprocessing.get_context("fork")
    for _round in range(5):
        url = pg_server.create_database()
        start = ctx.Barrier(4)  # all at once: released when the last is ready
        pipes, procs = [], []
        for i in range(4):
            receiver, sender = ctx.Pipe(duplex=False)
            proc = ctx.Process(target=_prepare_at, args=(url, start, f"gw{i}", sender))
            proc.start()
            pipes.append(receiver)
            procs.append(proc)
        results = [pipe.recv() if pipe.poll(60) else ("timeout", None) for pipe in pipes]
        for proc in procs:
            proc.join(30)
        assert results == [("ok", len(migrations()))] * 4
        with psycopg.connect(url) as conn:
            applied = conn.execute("SELECT version FROM schema_migrations").fetchall()
            nodes = conn.execute("SELECT node FROM nodes ORDER BY node").fetchall()
        assert applied == [(m.version,) for m in migrations()]
        assert nodes == [("gw0",), ("gw1",), ("gw2",), ("gw3",)]


def test_a_newer_schema_is_refused_naming_the_version(database_url: str) -> None:
    db_for(database_url).prepare("relay")
    with psycopg.connect(database_url) as conn:
        conn.execute(
            "INSERT INTO schema_migrations (version, name, node, mailgate_version)"
            " VALUES (99, 'future', 'gw9', '9.9.0')"
        )
    with pytest.raises(SchemaTooNew) as refused:
        db_for(database_url).prepare("relay", wait=True)  # not waited for: it will not pass
    message = str(refused.value)
    assert "version 99" in message and "mailgate 9.9.0" in message
    assert f"mailgate {mailgate_version()}" in message and "\n" not in message
    assert PASSWORD not in message


def test_unreachable_database_is_one_line_naming_host_and_cause(
    pg_server: PostgresInstance,
) -> None:
    closed = pg_server.url("nothing").replace(str(pg_server.port), "1")
    with pytest.raises(DatabaseError) as failed:
        db_for(closed).prepare("relay")
    message = str(failed.value)
    assert message.startswith("database 127.0.0.1:1/nothing: ")
    assert "refused" in message.lower() and "\n" not in message and PASSWORD not in message
    wrong = pg_server.url("nothing").replace(PASSWORD, "not-the-password")
    with pytest.raises(DatabaseError, match="password authentication failed") as refused:
        db_for(wrong).prepare()
    assert "not-the-password" not in str(refused.value)


def test_deadline_cuts_a_frozen_server_and_service_resumes(
    private_pg: PostgresInstance,
) -> None:
    url = private_pg.create_database()
    db = db_for(url, timeout=2.0, pool_size=2)
    db.prepare("relay")
    assert db.run(lambda conn: conn.execute("SELECT 1").fetchone()) == (1,)
    paused = private_pg.pause()
    try:
        started = time.monotonic()
        with pytest.raises(DatabaseError, match="no answer within 2 s"):
            db.run(lambda conn: conn.execute("SELECT 1").fetchone())
        assert time.monotonic() - started < 6  # the deadline, not the server, ended it
    finally:
        private_pg.resume(paused)
    assert db.run(lambda conn: conn.execute("SELECT 2").fetchone(), retry=True) == (2,)
    db.close()


def test_restart_is_survived_without_restarting_mailgate(private_pg: PostgresInstance) -> None:
    url = private_pg.create_database()
    db = db_for(url, timeout=3.0, pool_size=2)
    db.prepare("relay")
    assert db.run(lambda conn: conn.execute("SELECT 1").fetchone()) == (1,)
    private_pg.stop()
    with pytest.raises(DatabaseError):
        db.run(lambda conn: conn.execute("SELECT 1").fetchone(), retry=True)
    private_pg.start()
    # The pooled connection died with the old server: replaced, the work done, no error.
    assert db.run(lambda conn: conn.execute("SELECT 3").fetchone(), retry=True) == (3,)
    db.close()


def test_status_lists_schema_and_nodes(database_url: str) -> None:
    db_for(database_url, node="gw1").prepare("relay")
    db_for(database_url, node="gw2").prepare("milter")
    db_for(database_url, node="ops").prepare()  # a command: not a node
    status = db_for(database_url).status()
    assert (status.schema_version, status.known_version) == (len(migrations()),) * 2
    assert [(n.node, n.door) for n in status.nodes] == [("gw1", "relay"), ("gw2", "milter")]
    assert PASSWORD not in status.where and "***" in status.where


def test_commands_connect_per_operation_within_the_deadline(private_pg: PostgresInstance) -> None:
    url = private_pg.create_database()
    db = db_for(url, timeout=2.0)  # pool_size 0: a command's
    db.prepare()
    assert db.run(lambda conn: conn.execute("SELECT 1").fetchone()) == (1,)
    paused = private_pg.pause()
    try:
        with pytest.raises(DatabaseError):
            db.run(lambda conn: conn.execute("SELECT 1").fetchone())
    finally:
        private_pg.resume(paused)
    assert db.run(lambda conn: conn.execute("SELECT 2").fetchone()) == (2,)

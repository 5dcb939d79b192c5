"""PostgreSQL for a fleet of gateways: the schema, pooled connections with a deadline, and the
node registry. Plain SQL through psycopg 3 and psycopg_pool; no ORM.

Schema: versioned SQL files shipped in the package (`schema/NNN_name.sql`, applied in order,
each recorded in `schema_migrations`). `Database.prepare` runs at every start under a
PostgreSQL advisory lock, so two nodes starting at once against an empty database make one
schema; a database whose schema is newer than this mailgate knows refuses to be used and says
which version wrote it. A later feature adds `NNN_feature.sql`; nothing else changes.

Connections: one pool per process (made at first use, so forked front ends get their own),
sized to the door. Every operation runs in one transaction within a deadline: waiting for a
connection, the statements and the commit together. Past it, a watchdog shuts the
connection's socket down, so a frozen server (a paused VM, a commit waiting on a lost
synchronous standby) fails the call at once instead of holding a mail session. A broken
connection (a failover, a restart) is dropped and replaced by the pool; idempotent
operations are tried once more on a fresh connection within the same deadline.

Errors reach callers as `DatabaseError`, one line naming the database (host, port, name) and
the cause, never the password.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import importlib.resources
import itertools
import logging
import os
import re
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeVar

import psycopg
from psycopg import errors as pg_errors
from psycopg_pool import ConnectionPool, PoolTimeout

from mailgate.filter.store.dburl import DatabaseURL
from mailgate.filter.store.quarantine import QuarantineError

log = logging.getLogger("mailgate.database")

T = TypeVar("T")

# pg_advisory_xact_lock key for schema changes: "mailgate" in ASCII.
MIGRATION_LOCK = 0x6D61696C67617465
MAIL_TIMEOUT = 10.0  # seconds: a door's store operation (the sender waits for the reply)
ADMIN_TIMEOUT = 60.0  # seconds: a command's (listing a large quarantine)
_SCHEMA_FILE = re.compile(r"^(\d{3})_([a-z0-9_]+)\.sql$")
# A connection-level failure: the operation may be tried again on another connection.
_UNAVAILABLE = (psycopg.OperationalError, pg_errors.ReadOnlySqlTransaction)


class DatabaseError(QuarantineError):
    """The database cannot be used now: unreachable, too slow, failing over, refusing."""


class SchemaTooNew(DatabaseError):
    """The database was upgraded by a newer mailgate; this one must not write to it."""


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str


def migrations() -> list[Migration]:
    """The schema files shipped with this mailgate, in order (versions 1, 2, ... N)."""
    found = []
    for entry in (importlib.resources.files("mailgate.filter.store") / "schema").iterdir():
        match = _SCHEMA_FILE.match(entry.name)
        if match:
            found.append(Migration(int(match.group(1)), match.group(2), entry.read_text()))
    found.sort(key=lambda m: m.version)
    if [m.version for m in found] != list(range(1, len(found) + 1)):
        raise RuntimeError(f"schema files out of sequence: {[m.version for m in found]}")
    return found


def mailgate_version() -> str:
    try:
        return importlib.metadata.version("mailgate")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def migrate(conn: psycopg.Connection[Any], node: str) -> int:
    """Bring the schema up to this mailgate's version; returns it. One transaction under the
    advisory lock: a node starting meanwhile waits, then finds the work done."""
    known = migrations()
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK,))
        conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations ("
            " version integer PRIMARY KEY, name text NOT NULL,"
            " applied_at timestamptz NOT NULL DEFAULT now(), node text NOT NULL,"
            " mailgate_version text NOT NULL)"
        )
        row = conn.execute(
            "SELECT version, mailgate_version FROM schema_migrations ORDER BY version DESC LIMIT 1"
        ).fetchone()
        current = row[0] if row else 0
        if current > len(known):
            raise SchemaTooNew(
                f"the database's schema is version {current} (written by mailgate {row[1]}); "
                f"this mailgate {mailgate_version()} knows versions up to {len(known)}: "
                f"run mailgate {row[1]} or newer"
            )
        for migration in known[current:]:
            conn.execute(migration.sql.encode())
            conn.execute(
                "INSERT INTO schema_migrations (version, name, node, mailgate_version)"
                " VALUES (%s, %s, %s, %s)",
                (migration.version, migration.name, node, mailgate_version()),
            )
            log.info("database schema: applied %03d_%s", migration.version, migration.name)
    return len(known)


@dataclass(frozen=True)
class NodeInfo:
    node: str
    door: str
    version: str
    pack_version: str
    started: datetime
    last_seen: datetime


@dataclass(frozen=True)
class DatabaseStatus:
    where: str  # the URL, password masked
    schema_version: int
    known_version: int  # the newest this mailgate ships
    nodes: tuple[NodeInfo, ...]


class Database:
    """One PostgreSQL database, as this process uses it (see the module doc)."""

    def __init__(
        self,
        url: DatabaseURL,
        node: str,
        *,
        timeout: float = MAIL_TIMEOUT,
        pool_size: int = 0,
    ) -> None:
        """`pool_size`: connections kept open for this process (a door's); 0: a connection
        per operation, closed after it (a command's, which makes a few)."""
        self.url = url
        self.node = node
        self.timeout = timeout
        self.pool_size = pool_size
        self._pool: ConnectionPool[psycopg.Connection[Any]] | None = None
        self._pool_pid = 0
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"Database({self.url.masked!r}, node={self.node!r})"

    def describe(self, exc: BaseException | str) -> str:
        """One line: the database and the cause, the password masked."""
        text = str(exc).strip() or type(exc).__name__
        first = text.splitlines()[0].strip()
        return self.url.scrub(f"database {self.url.where}: {first}")

    def _connect_args(self, timeout: float | None = None) -> dict[str, Any]:
        # libpq counts connect_timeout in whole seconds and reads values under 2 as 2.
        return {
            "connect_timeout": max(2, round(self.timeout if timeout is None else timeout)),
            "application_name": f"mailgate {self.node}",
            "autocommit": True,  # transactions are explicit (conn.transaction())
        }

    # --- at start ----------------------------------------------------------------------

    def prepare(self, door: str | None = None, wait: bool = False) -> int:
        """Connect, bring the schema up to date, and register `door` of this node (None: a
        command, not a node). DatabaseError in one line when the database cannot be used;
        with `wait`, log that line and try again until it can (a schema newer than this
        mailgate is not retried). Returns the schema version."""
        delay = 1.0
        while True:
            try:
                with psycopg.connect(self.url.url, **self._connect_args()) as conn:
                    version = migrate(conn, self.node)
                    if door is not None:
                        conn.execute(
                            "INSERT INTO nodes (node, door, version, started, last_seen)"
                            " VALUES (%s, %s, %s, now(), now())"
                            " ON CONFLICT (node, door) DO UPDATE SET version = excluded.version,"
                            " started = excluded.started, last_seen = excluded.last_seen",
                            (self.node, door, mailgate_version()),
                        )
                return version
            except SchemaTooNew as exc:
                raise SchemaTooNew(self.describe(exc)) from None
            except psycopg.Error as exc:
                error = DatabaseError(self.describe(exc))
                if not wait:
                    raise error from None
                log.warning("%s; trying again in %.0f s (--wait-for-database)", error, delay)
                time.sleep(delay)
                delay = min(delay * 2, 30.0)

    def status(self) -> DatabaseStatus:
        def read(conn: psycopg.Connection[Any]) -> DatabaseStatus:
            row = conn.execute("SELECT max(version) FROM schema_migrations").fetchone()
            rows = conn.execute(
                "SELECT node, door, version, pack_version, started, last_seen FROM nodes"
                " ORDER BY node, door"
            ).fetchall()
            return DatabaseStatus(
                self.url.masked,
                row[0] if row and row[0] else 0,
                len(migrations()),
                tuple(NodeInfo(*r) for r in rows),
            )

        return self.run(read, retry=True)

    # --- operations --------------------------------------------------------------------

    def _get_pool(self) -> ConnectionPool[psycopg.Connection[Any]]:
        with self._lock:
            if self._pool is None or self._pool_pid != os.getpid():
                # A pool made before a fork is the parent's: its threads did not come along,
                # and its sockets must not be shared. This process makes its own.
                # Its own warnings span lines and repeat per attempt; run() reports in one.
                logging.getLogger("psycopg.pool").setLevel(logging.ERROR)
                self._pool = ConnectionPool(
                    self.url.url,
                    min_size=1,
                    max_size=self.pool_size,
                    kwargs=self._connect_args(),
                    open=False,
                    timeout=self.timeout,
                    # Give up a failing reconnection soon: the next request then tries again
                    # at once, so mail is stored again as soon as the database is back.
                    reconnect_timeout=self.timeout,
                    name=f"mailgate-{os.getpid()}",
                )
                self._pool.open(wait=False)
                self._pool_pid = os.getpid()
            return self._pool

    def run(
        self,
        work: Callable[[psycopg.Connection[Any]], T],
        *,
        retry: bool = False,
        timeout: float | None = None,
        atomic: bool = True,
    ) -> T:
        """`work(conn)` in one transaction, committed before this returns, all within the
        deadline (`timeout`, default the database's). `retry`: the work is idempotent, so a
        connection that turns out broken is replaced and the work tried once more.
        `atomic=False` for work of one statement, which is a transaction of its own (one
        round trip instead of three)."""
        limit = self.timeout if timeout is None else timeout
        deadline = time.monotonic() + limit
        watchdog = _watchdog()
        for attempt in range(2 if retry else 1):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            conn = self._take(remaining, limit)
            ticket = watchdog.arm(conn, deadline)
            try:
                if atomic:
                    with conn.transaction():
                        result = work(conn)
                else:
                    result = work(conn)
                if not watchdog.disarm(ticket):
                    # Committed, though the deadline came: the caller has its answer.
                    log.warning("%s", self.describe(f"answered after the {limit:g} s deadline"))
                return result
            except _UNAVAILABLE as exc:
                timed_out = not watchdog.disarm(ticket)
                conn.close()  # not to be trusted again: the pool replaces it
                if timed_out:
                    raise DatabaseError(self.describe(f"no answer within {limit:g} s")) from None
                if attempt == 0 and retry:
                    log.info("%s; trying another connection", self.describe(exc))
                    continue
                raise DatabaseError(self.describe(exc)) from None
            except psycopg.Error as exc:
                raise DatabaseError(self.describe(exc)) from None
            finally:
                watchdog.disarm(ticket)
                self._give_back(conn)
        raise DatabaseError(self.describe(f"no answer within {limit:g} s"))

    def _take(self, remaining: float, limit: float) -> psycopg.Connection[Any]:
        if not self.pool_size:
            try:
                return psycopg.connect(self.url.url, **self._connect_args(remaining))
            except psycopg.Error as exc:
                raise DatabaseError(self.describe(exc)) from None
        try:
            return self._get_pool().getconn(timeout=remaining)
        except PoolTimeout:
            raise DatabaseError(
                self.describe(f"no connection within {limit:g} s (unreachable or full)")
            ) from None

    def _give_back(self, conn: psycopg.Connection[Any]) -> None:
        if self.pool_size:
            self._get_pool().putconn(conn)
        else:
            conn.close()

    def close(self) -> None:
        with self._lock:
            if self._pool is not None and self._pool_pid == os.getpid():
                self._pool.close()
            self._pool = None


class _Watchdog:
    """Shuts down the socket of a connection whose operation is past its deadline: the
    blocked call then fails at once, whatever the server does. One thread per process."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._armed: dict[int, tuple[float, psycopg.Connection[Any]]] = {}
        self._tickets = itertools.count()
        self._earliest = float("inf")
        self.pid = os.getpid()
        threading.Thread(target=self._run, name="mailgate-db-deadline", daemon=True).start()

    def arm(self, conn: psycopg.Connection[Any], deadline: float) -> int:
        with self._cond:
            ticket = next(self._tickets)
            self._armed[ticket] = (deadline, conn)
            if deadline < self._earliest:
                self._earliest = deadline
                self._cond.notify()
            return ticket

    def disarm(self, ticket: int) -> bool:
        """False if the deadline had come (the connection was cut)."""
        with self._cond:
            return self._armed.pop(ticket, None) is not None

    def _run(self) -> None:
        with self._cond:
            while True:
                now = time.monotonic()
                for ticket, (deadline, conn) in list(self._armed.items()):
                    if deadline <= now:
                        del self._armed[ticket]
                        _cut(conn)
                self._earliest = min((d for d, _ in self._armed.values()), default=float("inf"))
                wait = None if self._earliest == float("inf") else self._earliest - now
                self._cond.wait(wait)


def _cut(conn: psycopg.Connection[Any]) -> None:
    """Shut the connection's socket down under the thread blocked on it (a duplicate of the
    descriptor: shutdown acts on the socket itself, and libpq closes its own descriptor)."""
    with contextlib.suppress(OSError, psycopg.Error):
        fd = os.dup(conn.pgconn.socket)
        with socket.socket(fileno=fd) as sock:
            sock.shutdown(socket.SHUT_RDWR)


_watchdogs: dict[int, _Watchdog] = {}
_watchdog_lock = threading.Lock()


def _watchdog() -> _Watchdog:
    with _watchdog_lock:
        pid = os.getpid()
        if pid not in _watchdogs:
            _watchdogs.clear()  # a parent's, after a fork: its thread is not in this process
            _watchdogs[pid] = _Watchdog()
        return _watchdogs[pid]

"""The quarantine store the configuration names, for every door and command alike: the local
one under `quarantine.path`, or with `database` set the fleet's store in PostgreSQL (then
`quarantine.path` is not used).

With a database, making the store is the start-up check: it connects and brings the schema up
to date under the advisory lock; a database that cannot be used is a `DatabaseError` naming
host and cause in one line, so the process does not start. A door first calls
`check_database`, which also registers this node's door and, with `--wait-for-database`,
keeps trying until the database answers.
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from mailgate.filter.ops.config import Config
from mailgate.filter.store.quarantine import LocalQuarantine, QuarantineStore

if TYPE_CHECKING:
    from mailgate.filter.store.database import Database

# Connections per process, at most: the relay's store calls run in asyncio's default thread
# pool (min(32, CPUs + 4) threads), the milter's in libmilter's, one per connection; the pool
# opens them as they are needed, so a command uses one.
POOL_SIZE = 8


def store_for(config: Config, command: bool = False) -> QuarantineStore:
    """The store `quarantine:` and `database:` name. A door keeps database connections open;
    a `command` (a few operations, then it exits) opens one per operation."""
    if config.database is None:
        return LocalQuarantine(config.quarantine.path, node=config.node)
    # Imported here: psycopg is only needed with a database.
    from mailgate.filter.store.postgres import PostgresQuarantine

    database = _database(config, 0 if command else POOL_SIZE)
    database.prepare()
    return PostgresQuarantine(database)


def check_database(config: Config, door: str | None, wait: bool = False) -> str | None:
    """Before `door` (relay, milter, console) starts: None when there is no database or it can
    be used (the schema brought up to date, this node's door registered; None registers
    nothing), else the one line saying why not. `wait`: log each failure and try again until
    it can be used."""
    if config.database is None:
        return None
    from mailgate.filter.store.database import DatabaseError

    try:
        _database(config, 0).prepare(door, wait=wait)
    except DatabaseError as exc:
        return str(exc)
    return None


def _database(config: Config, pool_size: int) -> Database:
    from mailgate.filter.store.database import Database

    assert config.database is not None
    return Database(config.database, config.node, pool_size=pool_size)


def add_wait_argument(parser: argparse.ArgumentParser) -> None:
    """The one --wait-for-database flag every door takes."""
    parser.add_argument(
        "--wait-for-database",
        action="store_true",
        help="with `database` set: keep trying until the database can be used, instead of "
        "refusing to start",
    )

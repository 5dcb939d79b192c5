"""`mailgate db status`: the fleet's database as this node sees it: where (password masked),
the schema version against the newest this mailgate knows, and the nodes that registered.

Exit codes: 0 done; 1 the database cannot be used; 2 usage, bad configuration, no `database`.
"""

from __future__ import annotations

import argparse
import json
import sys

from mailgate.filter.cli import FAILED, OK, USAGE
from mailgate.filter.ops.config import ConfigError, add_config_argument, load_config


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "db",
        help="the fleet's database: schema version and nodes",
        description="The PostgreSQL database named by `database` in the configuration.",
    )
    commands = parser.add_subparsers(dest="db_command", required=True, metavar="ACTION")
    status = commands.add_parser("status", help="schema version and the fleet's nodes")
    status.add_argument("--json", action="store_true", help="one JSON object")
    add_config_argument(status)
    status.set_defaults(func=_status)


def _status(args: argparse.Namespace) -> int:
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return USAGE
    if config.database is None:
        print("db status: no `database` in the configuration (the quarantine is local)",
              file=sys.stderr)  # fmt: skip
        return USAGE
    # Imported here: psycopg is only needed with a database.
    from mailgate.filter.store.database import Database, DatabaseError

    database = Database(config.database, config.node)
    try:
        database.prepare()  # a command brings the schema up to date like any process
        status = database.status()
    except DatabaseError as exc:
        print(exc, file=sys.stderr)
        return FAILED
    finally:
        database.close()
    nodes = [
        {
            "node": n.node,
            "door": n.door,
            "version": n.version,
            "pack_version": n.pack_version,
            "started": n.started.isoformat(),
            "last_seen": n.last_seen.isoformat(),
        }
        for n in status.nodes
    ]
    if args.json:
        print(json.dumps({"database": status.where, "schema_version": status.schema_version,
                          "known_version": status.known_version, "nodes": nodes}))  # fmt: skip
        return OK
    print(f"database: {status.where}")
    print(f"schema:   version {status.schema_version} (this mailgate knows up to "
          f"{status.known_version})")  # fmt: skip
    print(f"nodes:    {len(nodes)}")
    for n in nodes:
        print(
            f"  {n['node']:<20} {n['door']:<8} mailgate {n['version']:<10} "
            f"pack {n['pack_version'] or '-':<14} started {n['started'][:19]}  "
            f"last seen {n['last_seen'][:19]}"
        )
    return OK

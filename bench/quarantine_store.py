"""The relay quarantining every message: the local store against the fleet's database store.

    .venv/bin/python -m bench.quarantine_store [--scale 1.0] [--rounds 1]

Contenders, in one run, each a `mailgate relay` (one process, engine.workers 2) whose pack holds
every message (a rule on the bench's sender), so each 250 comes after a durable write:

  local      quarantine.path: the .eml fsynced and renamed, the SQLite index (WAL,
             synchronous=FULL) committed
  database   `database:` on a private PostgreSQL on 127.0.0.1 (this bench starts it: initdb as
             `postgres`, fsync and synchronous_commit on, as PostgreSQL ships), record and body
             committed in one transaction

Case: 10 KB smtp-source filler, 20 sessions, one message per connection. Rate: messages over
smtp-source's wall time. CPU ms/msg: the relay and its scan workers; for the database also the
PostgreSQL server's processes. Each contender's store is checked to hold exactly what was sent.
Target (issue 9): database >= 0.8 x local.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

from bench.common import (
    SENDER,
    HostCpu,
    SmtpSinkProgram,
    print_table,
    remove_tree,
    smtp_source,
    tree_cpu,
)
from mailgate.filter.ops.config import load_config
from mailgate.filter.ops.stores import store_for
from tests.support.cli import mailgate_argv
from tests.support.net import free_port, port_open
from tests.support.postfix import missing_binaries, shared_temp_dir
from tests.support.postgres import PostgresInstance, binaries
from tests.support.processes import ChildProcess
from tests.support.waiting import wait_until

SESSIONS = 20
SIZE = 10 * 1024
WARMUP = 60
CONTENDERS = ("local", "database")
HOLD_ALL = f"""\
rules:
  - id: hold-everything
    when: [{{sender: {{address: [{SENDER}]}}}}]
    action: quarantine
    reason: bench
"""


@dataclass
class Result:
    rate: float
    relay_cpu: str
    server_cpu_ms: float | None  # PostgreSQL's processes, per message
    host_busy: float


def relay(work: Path, name: str, port: int, sink_port: int, database: str | None) -> ChildProcess:
    folder = work / name
    folder.mkdir(mode=0o755)
    (folder / "rules").mkdir()
    (folder / "rules" / "rules.yaml").write_text(HOLD_ALL)
    config = folder / "mailgate.yaml"
    config.write_text(
        (f"database: {database}\nnode: bench-{name}\n" if database else "")
        + f"""\
rules: {folder / "rules"}
quarantine:
  path: {folder / "quarantine"}
relay:
  listen: 127.0.0.1:{port}
  hostname: relay.bench.test
  next_hop: {{host: 127.0.0.1, port: {sink_port}, tls: none}}
engine:
  workers: 2
audit:
  path: {folder / "audit.log"}
"""
    )
    argv = mailgate_argv("relay", "--config", str(config))
    return ChildProcess(name, argv, folder / "relay.log")


def measure(port: int, count: int, child: ChildProcess, server: int | None) -> Result:
    before = tree_cpu(child.pid)
    server_before = tree_cpu(server) if server else None
    host = HostCpu()
    elapsed = smtp_source(port, count=count, sessions=SESSIONS, size=SIZE)
    child.check_alive()
    cpu = (tree_cpu(child.pid) - before).per_message_ms(count)
    server_ms = None
    if server is not None and server_before is not None:
        spent = tree_cpu(server) - server_before
        server_ms = (spent.main + spent.descendants) / count * 1000
    return Result(count / elapsed, cpu, server_ms, host.busy_percent())


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--scale", type=float, default=1.0, help="multiply the message count")
    parser.add_argument("--rounds", type=int, default=1, help="repeat, keep the best of each")
    args = parser.parse_args()
    if missing := missing_binaries():
        parser.error(f"needs smtp-source and smtp-sink (postfix package): missing {missing}")
    if binaries() is None:
        parser.error("needs PostgreSQL's initdb and pg_ctl (postgresql package)")
    count = max(SESSIONS, round(2000 * args.scale))
    work = shared_temp_dir("mailgate-bench-store-")
    server = PostgresInstance()  # PostgreSQL's own defaults: fsync, synchronous_commit on
    sink = SmtpSinkProgram()
    children: dict[str, ChildProcess] = {}
    try:
        server.setup()
        database = server.create_database()
        sink.start()
        ports = {name: free_port() for name in CONTENDERS}
        children = {
            "local": relay(work, "local", ports["local"], sink.port, None),
            "database": relay(work, "database", ports["database"], sink.port, database),
        }
        for name, child in children.items():
            child.start()
            wait_until(lambda c=child, p=ports[name]: c.check_alive() or port_open(p), 120, name)
        for name in CONTENDERS:
            smtp_source(ports[name], count=WARMUP, sessions=SESSIONS, size=SIZE)
        best: dict[str, Result] = {}
        print(f"10 KB, {count} messages, {SESSIONS} sessions, {args.rounds} round(s), best kept")
        for _ in range(args.rounds):
            for name in CONTENDERS:
                postmaster = server.postmaster_pid() if name == "database" else None
                result = measure(ports[name], count, children[name], postmaster)
                print(f"  {name:9} {result.rate:7.0f} msgs/s", flush=True)
                if name not in best or result.rate > best[name].rate:
                    best[name] = result
        held = {name: store_for(load_config(work / name / "mailgate.yaml"), command=True).count()
                for name in CONTENDERS}  # fmt: skip
        expected = WARMUP + count * args.rounds
        if any(n != expected for n in held.values()):
            raise RuntimeError(f"held {held}, expected {expected} in each store")
        print_table(
            "The relay quarantining every 10 KB message",
            [
                "store",
                "msgs/s",
                "relay CPU ms/msg (main + workers)",
                "PostgreSQL CPU ms/msg",
                "host CPU busy %",
            ],
            [
                [
                    name,
                    best[name].rate,
                    best[name].relay_cpu,
                    best[name].server_cpu_ms,
                    best[name].host_busy,
                ]
                for name in CONTENDERS
            ],
        )
        ratio = best["database"].rate / best["local"].rate
        print(f"database / local: {ratio:.2f} (target >= 0.80); every message held: {held}")
        return 0
    except Exception:
        for child in children.values():
            print(f"--- {child.name} log (tail) ---\n{child.log_tail()}")
        raise
    finally:
        for child in children.values():
            child.stop()
        sink.stop()
        server.destroy()
        remove_tree(work)


if __name__ == "__main__":
    raise SystemExit(main())

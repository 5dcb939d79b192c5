"""Clean mail through `mailgate relay` with the audit records' copy in the fleet's database on
and off (issue 9).

    .venv/bin/python -m bench.audit_copy [--scale 1.0] [--rounds 1]

Contenders, in one run, each a `mailgate relay` (one process, the default pack, engine.workers
2) delivering to one smtp-sink, with its audit log in a file:

  copy-off   no `database`: the audit log only
  copy-on    `database:` on a private PostgreSQL on 127.0.0.1 (this bench starts it: initdb
             as `postgres`, PostgreSQL's default durability): every record also goes to the
             database through the spool, batched by a background thread

Cases: 10 KB and 100 KB filler (clean: every message is delivered, nothing held), 20
sessions, one message per connection (as bench/relay.py runs them); a latency probe sends one
message after another meanwhile, so p50/p99 show whether the copy reaches a reply. The
rounds interleave the contenders; the best rate of each is kept. Afterwards the database must
hold exactly one row per line of copy-on's audit log. Target (issue 9): copy-on >= 0.95 x copy-off.
"""

from __future__ import annotations

from pathlib import Path

import psycopg

from bench.common import (
    HostCpu,
    SmtpSinkProgram,
    percentile,
    print_table,
    remove_tree,
    smtp_bench_arguments,
    standard_cases,
    stopped_after,
    tree_cpu,
    warm_up,
)
from bench.relay import SESSIONS, mailgate_relay, measure
from tests.support.net import free_port, port_open
from tests.support.postfix import missing_binaries, shared_temp_dir
from tests.support.postgres import PostgresInstance, binaries
from tests.support.processes import ChildProcess
from tests.support.waiting import wait_until

CONTENDERS = ("copy-off", "copy-on")


def main() -> int:
    parser = smtp_bench_arguments(__doc__)
    args = parser.parse_args()
    if missing := missing_binaries():
        parser.error(f"needs smtp-source and smtp-sink (postfix package): missing {missing}")
    if binaries() is None:
        parser.error("needs PostgreSQL's initdb and pg_ctl (postgresql package)")
    cases = [c for c in standard_cases(args.scale, SESSIONS) if c.mime_size is None]
    work = shared_temp_dir("mailgate-bench-audit-copy-")
    server = PostgresInstance()  # PostgreSQL's own defaults: fsync, synchronous_commit on
    sink = SmtpSinkProgram()
    children: dict[str, ChildProcess] = {}
    with stopped_after(children, sink.stop, server.destroy, lambda: remove_tree(work)):
        server.setup()
        database = server.create_database()
        sink.start()
        ports = {name: free_port() for name in CONTENDERS}
        children["copy-off"] = mailgate_relay(work, ports["copy-off"], sink.port, "copy-off")
        children["copy-on"] = mailgate_relay(
            work, ports["copy-on"], sink.port, "copy-on", database=database
        )
        for name, child in children.items():
            child.start()
            wait_until(lambda c=child, p=ports[name]: c.check_alive() or port_open(p), 120, name)
        print(f"{SESSIONS} sessions, one message per connection, {args.rounds} round(s), best kept")
        rows = []
        for case in cases:
            best = {}
            postgres_ms: dict[str, float] = {}
            for _ in range(args.rounds):
                for name in CONTENDERS:
                    warm_up(sink, ports[name], case, None, SESSIONS)
                    before = tree_cpu(server.postmaster_pid() or 0)
                    host = HostCpu()
                    result = measure(sink, ports[name], case, None, children[name])
                    spent = tree_cpu(server.postmaster_pid() or 0) - before
                    print(f"  {case.label:14} {name:9} {result.rate:7.0f} msgs/s "
                          f"(host {host.busy_percent():.0f}% busy)", flush=True)  # fmt: skip
                    if name not in best or result.rate > best[name].rate:
                        best[name] = result
                        postgres_ms[name] = (spent.main + spent.descendants) / case.count * 1000
            for name in CONTENDERS:
                ms = [s * 1000 for s in best[name].latencies]
                rows.append([case.label, name, best[name].rate, percentile(ms, 0.5),
                             percentile(ms, 0.99), best[name].cpu, postgres_ms[name]])  # fmt: skip
            ratio = best["copy-on"].rate / best["copy-off"].rate
            rows.append([case.label, "on / off", ratio, None, None, None, None])
        print_table(
            "Clean mail, the audit copy in the database on and off",
            [
                "case",
                "contender",
                "msgs/s",
                "p50 ms",
                "p99 ms",
                "relay CPU ms/msg",
                "PostgreSQL CPU ms/msg",
            ],
            rows,
        )
        written = check_every_record(work, database)
        print(f"target (issue 9): copy-on >= 0.95 x copy-off; {written} audit records, "
              "each one row in the database")  # fmt: skip
        return 0


def check_every_record(work: Path, database: str) -> int:
    """Wait until the database has as many rows as copy-on's audit log has lines; that many."""
    with (work / "copy-on" / "audit.log").open(encoding="utf-8") as log:
        expected = sum(1 for _ in log)

    def stored() -> int:
        with psycopg.connect(database) as conn:
            found = conn.execute("SELECT count(*), count(DISTINCT key) FROM audit_records")
            total, distinct = found.fetchone() or (0, 0)
        if total != distinct:
            raise RuntimeError(f"{total} rows, {distinct} keys: a record was stored twice")
        return int(total)

    wait_until(lambda: stored() == expected, 60, f"{expected} rows in the database")
    return expected


if __name__ == "__main__":
    raise SystemExit(main())

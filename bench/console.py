"""The review console's held-mail page over a large quarantine (issue 13: 100,000 held
messages, under 300 ms at the server), on the local store and on the fleet's PostgreSQL store.

Four stores side by side in one run: for each kind, the baseline with 1,000 messages and the
contender with 100,000 (`--messages`). Each is filled with real `put()`s of a few dozen
messages (real envelopes, rules and masked hits) and then grown by copying those rows inside
the store (every table and index `put()` writes) under fresh ids and times spread over 30
days; the copies have no body, which no list page reads. One in ten is released. The
database store runs on a private PostgreSQL on 127.0.0.1 that this bench starts (initdb as
`postgres`, PostgreSQL's defaults), skipped with `--local-only` or when PostgreSQL's binaries
are missing. The console runs under uvicorn on 127.0.0.1; a signed-in client times each page
over a kept-alive connection (`--requests` per page, median and 95th percentile).

    .venv/bin/python -m bench.console [--messages 100000] [--requests 20] [--local-only]
"""

from __future__ import annotations

import argparse
import re
import sqlite3
import statistics
import tempfile
import time
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import yaml

from bench.common import percentile, print_table
from mailgate.filter import Envelope, QuarantineStore
from mailgate.filter.console.app import create_app
from mailgate.filter.console.users import UsersFile
from mailgate.filter.ops.config import Config, load_config
from mailgate.filter.ops.stores import store_for
from mailgate.filter.policy.verdict import Action, Hit, Verdict
from mailgate.filter.store.quarantine import LocalQuarantine
from mailgate.relay.release import release_message
from tests.support.console import RunningConsole
from tests.support.postgres import PostgresInstance, binaries

RULES = ("card-number", "iban", "us-ssn", "unscannable", "encrypted-archive", "macro-document")
DOMAINS = ("partner.example", "bank.example", "customer.example", "supplier.example")
TEMPLATES = 48
PASSWORD = "bench-password"
COPY_TIMEOUT = 900.0  # seconds for the database to copy the rows and build its indexes


def put_templates(store: QuarantineStore) -> str:
    """The real messages every copy is made from; the id of the last one (with its body)."""
    qid = ""
    for n in range(TEMPLATES):
        rule = RULES[n % len(RULES)]
        verdict = Verdict(
            Action.QUARANTINE,
            rules=[rule],
            monitor=[RULES[(n + 1) % len(RULES)]] if n % 4 == 0 else [],
            hits=[Hit(rule, "dlp:credit_card", "1", 1, "**** **** **** 1111")],
            reason="Held for review",
            pack_version="bench",
        )
        envelope = Envelope(
            f"user{n}@example.com", (f"r{n}@{DOMAINS[n % len(DOMAINS)]}",), door="relay"
        )
        raw = f"Subject: Order {n}\r\n\r\nCard **** **** **** 1111\r\n".encode()
        qid = store.put(raw, envelope, verdict)
    return qid


def fill_local(store: LocalQuarantine, count: int) -> None:
    """Copy the templates inside the index up to `count` messages, with the rows `put()`
    writes in every side table."""
    db = sqlite3.connect(store.index_path, isolation_level=None)
    db.execute("BEGIN")
    db.execute(
        "CREATE TEMP TABLE template AS "
        "SELECT row_number() OVER (ORDER BY id) - 1 AS k, * FROM messages"
    )
    copies = count - TEMPLATES
    last = db.execute("SELECT max(rowid) FROM messages").fetchone()[0]
    # Valid ids (base32 letters only in the random part): the copy's number, digits mapped.
    token = "printf('%016d', i)"
    for digit, letter in (("0", "a"), ("1", "b"), ("8", "i"), ("9", "j")):
        token = f"replace({token}, '{digit}', '{letter}')"
    db.execute(
        f"""
        WITH RECURSIVE n(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM n WHERE i < {copies} - 1)
        INSERT INTO messages (id, time, door, queue_id, message_id, sender, recipients,
            client_address, subject, size, action, rules, monitor, hits, reason, pack_version,
            state, node)
        SELECT strftime('%Y%m%dT%H%M%S', t) || printf('%03dZ-', i % 1000) || {token},
            strftime('%Y-%m-%dT%H:%M:%S', t) || printf('.%06d+00:00', i % 1000000),
            door, queue_id, message_id, 'user' || (i % 5000) || '@example.com', recipients,
            client_address, subject || ' copy ' || i, size, action, rules, monitor, hits, reason,
            pack_version, CASE WHEN i % 10 = 0 THEN 'released' ELSE 'held' END, node
        FROM (SELECT i, datetime('now', '-30 days', '+' || (i * 2592000 / {copies}) || ' seconds')
                AS t FROM n) JOIN template ON template.k = i % {TEMPLATES}
        """
    )
    copied = f"messages.rowid > {last}"
    db.execute(
        "INSERT INTO message_rules (rule, id, state, time) "
        "SELECT value, messages.id, state, time FROM messages, json_each(messages.rules) "
        f"WHERE {copied} UNION "
        "SELECT value, messages.id, state, time FROM messages, json_each(messages.monitor) "
        f"WHERE {copied}"
    )
    domain = "lower(substr({0}, instr({0}, '@') + 1))"
    db.execute(
        "INSERT INTO message_addresses (address, domain, is_sender, id) "
        f"SELECT lower(sender), {domain.format('sender')}, 1, id FROM messages WHERE {copied} "
        f"UNION ALL SELECT lower(value), {domain.format('value')}, 0, messages.id "
        f"FROM messages, json_each(messages.recipients) WHERE {copied}"
    )
    db.execute(
        "INSERT OR IGNORE INTO message_domains (domain, id, state, time) "
        "SELECT a.domain, m.id, m.state, m.time FROM message_addresses a "
        f"JOIN messages m ON m.id = a.id WHERE m.rowid > {last}"
    )
    db.execute(
        "INSERT INTO message_search (id, state, time, text) SELECT id, state, time, "
        "id || char(10) || subject || char(10) || sender || char(10) || "
        "(SELECT group_concat(value, char(10)) FROM json_each(recipients)) "
        f"FROM messages WHERE {copied}"
    )
    db.execute("COMMIT")
    db.execute("ANALYZE")
    db.close()


def fill_database(store: Any, count: int) -> None:
    """The same copies in the fleet's store (a PostgresQuarantine): records only."""
    copies = count - TEMPLATES
    token = "translate(lpad(i::text, 16, '0'), '0189', 'abij')"

    def copy(conn: Any) -> None:
        conn.execute(
            f"""
            WITH template AS (SELECT row_number() OVER (ORDER BY id) - 1 AS k, * FROM quarantine)
            INSERT INTO quarantine (id, time, node, door, queue_id, message_id, sender,
                recipients, client_address, subject, size, action, rules, monitor, hits, reason,
                pack_version, state)
            SELECT to_char(t, 'YYYYMMDD"T"HH24MISS') || lpad((i % 1000)::text, 3, '0') || 'Z-'
                    || {token},
                t, node, door, queue_id, message_id, 'user' || (i % 5000) || '@example.com',
                recipients, client_address, subject || ' copy ' || i, size, action, rules,
                monitor, hits, reason, pack_version,
                CASE WHEN i % 10 = 0 THEN 'released' ELSE 'held' END
            FROM (SELECT i, now() - interval '30 days' + i * (interval '30 days' / {copies}) AS t
                  FROM generate_series(0, {copies} - 1) AS i) AS n
            JOIN template ON template.k = i % {TEMPLATES}
            """.encode()
        )

    store.db.run(copy, timeout=COPY_TIMEOUT)
    # As autovacuum leaves a table at rest: statistics, and the visibility map that lets a
    # count read an index alone.
    for table in ("quarantine", "quarantine_rule_hits"):
        store.db.run(
            lambda conn, t=table: conn.execute(f"VACUUM (ANALYZE) {t}".encode()),
            atomic=False,
            timeout=COPY_TIMEOUT,
        )


def signed_in(url: str) -> httpx.Client:
    client = httpx.Client(base_url=url, timeout=60)
    page = client.get("/login").text
    token = re.search(r'name="csrf" value="([^"]+)"', page).group(1)  # type: ignore[union-attr]
    answer = client.post("/login", data={"username": "bench", "password": PASSWORD, "csrf": token})
    assert answer.status_code == 303, answer.text[:300]
    return client


def timed(client: httpx.Client, path: str, requests: int) -> tuple[float, float]:
    client.get(path).raise_for_status()  # warm
    times = []
    for _ in range(requests):
        start = time.perf_counter()
        client.get(path).raise_for_status()
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times), percentile(times, 0.95)


def pages(real: str) -> dict[str, str]:
    return {
        "held mail (start page)": "/",
        "page 100": "/?page=100",
        "oldest first": "/?sort=oldest",
        "rule filter": "/?rule=iban",
        "sender filter": "/?sender=user42@example.com",
        "recipient filter": "/?recipient=r5@bank.example",
        "domain filter": "/?domain=bank.example",
        "text search": "/?q=order+7+copy+99",
        "text search, every message": "/?q=order",
        "text search, 2 characters": "/?q=r5",
        "date range": "/?since=2000-01-01&until=2100-01-01",
        "every state": "/?state=any",
        "a message": f"/message/{real}",
        "stylesheet (floor)": "/static/console.css",
    }


def measure(folder: Path, count: int, database: str | None, requests: int) -> dict[str, Any]:
    folder.mkdir()
    settings: dict[str, Any] = {"quarantine": {"path": "q"}, "console": {"users": "users.yaml"}}
    if database:
        settings.update(database=database, node="bench")
    (folder / "mailgate.yaml").write_text(yaml.safe_dump(settings))
    config: Config = load_config(folder / "mailgate.yaml")
    UsersFile(config.console.users).set_user("bench", "reviewer", PASSWORD)
    store = store_for(config)  # the one factory, as `mailgate console` opens it
    start = time.perf_counter()
    real = put_templates(store)
    if isinstance(store, LocalQuarantine):
        fill_local(store, count)
    else:
        fill_database(store, count)
    kind = "database" if database else "local"
    print(f"{kind}: {count:,} messages stored in {time.perf_counter() - start:.1f} s")
    app = create_app(config, store, partial(release_message, config, store))
    server = RunningConsole(app).start()
    try:
        client = signed_in(server.url)
        results = {name: timed(client, path, requests) for name, path in pages(real).items()}
        client.close()
    finally:
        server.stop()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=100_000)
    parser.add_argument("--baseline", type=int, default=1_000)
    parser.add_argument("--requests", type=int, default=20)
    parser.add_argument("--local-only", action="store_true", help="no PostgreSQL store")
    args = parser.parse_args()
    server = None
    if not args.local_only and binaries() is None:
        print("PostgreSQL's initdb and pg_ctl are missing: the local store only")
    elif not args.local_only:
        server = PostgresInstance().setup()  # PostgreSQL's own defaults
    try:
        with tempfile.TemporaryDirectory(prefix="mailgate-console-bench-") as tmp:
            kinds = ["local"] + (["database"] if server else [])
            for kind in kinds:
                results = {}
                for label, count in (("baseline", args.baseline), ("contender", args.messages)):
                    database = server.create_database() if server and kind == "database" else None
                    folder = Path(tmp) / f"{kind}-{label}"
                    results[label] = measure(folder, count, database, args.requests)
                report(kind, results, args)
    finally:
        if server is not None:
            server.destroy()


def report(kind: str, results: dict[str, Any], args: argparse.Namespace) -> None:
    rows = []
    for name, (median, p95) in results["contender"].items():
        base_median, base_p95 = results["baseline"][name]
        rows.append(
            [
                name,
                f"{base_median:.1f} / {base_p95:.1f}",
                f"{median:.1f} / {p95:.1f}",
                f"{median / base_median:.2f}x",
            ]
        )
    print_table(
        f"console pages, {kind} store, median / p95 ms over {args.requests} requests",
        ["page", f"{args.baseline:,} messages", f"{args.messages:,} messages", "ratio"],
        rows,
    )


if __name__ == "__main__":
    main()

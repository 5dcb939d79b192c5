"""A fleet's shared records, as real processes on real sockets (issue 9): `mailgate relay` nodes
with their own configurations on one private PostgreSQL and one sink. Audit rows: N messages
through two nodes give N rows, also when the database dies mid-run and comes back; a node
stopped or killed with records in its spool sends them when it starts again; `rules stats`
counts the fleet; retention runs in a node's background; /metrics shows the pack of every
node of the fleet, so a node on another pack shows."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
import yaml

from mailgate.filter.policy.envelope import Envelope
from mailgate.filter.policy.verdict import Action, Verdict
from mailgate.filter.store.database import Database
from mailgate.filter.store.dburl import parse_database_url
from mailgate.filter.store.fleet import audit_days, write_audit
from mailgate.filter.store.postgres import PostgresQuarantine
from tests.support.cli import mailgate_process, run_mailgate
from tests.support.net import free_port
from tests.support.packs import subject_rule, write_pack
from tests.support.postgres import (  # noqa: F401
    PostgresInstance,
    pg_server_fixture,
    private_pg_fixture,
    requires_postgres,
)
from tests.support.processes import ChildProcess
from tests.support.samples import message
from tests.support.scrape import scrape, value
from tests.support.smtp_client import banner, send_to
from tests.support.smtp_sink import SmtpSink
from tests.support.waiting import wait_until

pytestmark = [requires_postgres, pytest.mark.timeout(300)]

CARD_PACK = """\
rules:
  - id: card-number
    when: [{dlp: credit_card}]
    action: quarantine
    reason: Message contains a payment card number
"""
DRAFT_RULE = subject_rule("draft-word", "draft", "reject", "mode: monitor")


@dataclass
class Node:
    """One gateway: its folder and configuration and, once started, its relay process."""

    name: str
    folder: Path
    database: str
    sink_port: int
    pack: str = CARD_PACK
    settings: dict[str, Any] = field(default_factory=dict)
    port: int = field(default_factory=free_port)
    metrics_port: int = field(default_factory=free_port)
    process: ChildProcess | None = None

    def __post_init__(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        self.rules = write_pack(self.folder / "rules", self.pack)
        target = {"host": "127.0.0.1", "port": self.sink_port, "tls": "none"}
        config = {
            "database": self.database,
            "node": self.name,
            "rules": str(self.rules),
            "relay": {
                "listen": f"127.0.0.1:{self.port}",
                "hostname": f"{self.name}.example.test",
                "next_hop": target,
            },
            "engine": {"workers": 1},
            "audit": {"path": "audit.jsonl"},
            "metrics": {"listen": f"127.0.0.1:{self.metrics_port}"},
        }
        for section, values in self.settings.items():
            config[section] = {**config.get(section, {}), **values}
        self.config = self.folder / "mailgate.yaml"
        self.config.write_text(yaml.safe_dump(config))
        self.spool = self.folder / "var" / "audit-spool" / "relay.spool"

    def start(self) -> Node:
        self.process = mailgate_process(
            "relay",
            "--config",
            str(self.config),
            log=self.folder / "relay.log",
            ready=lambda: banner(self.port).startswith(b"220"),
        ).start()
        return self

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop()

    def kill(self) -> None:
        assert self.process is not None and self.process.process is not None
        self.process.process.send_signal(signal.SIGKILL)
        self.process.process.wait(30)
        self.process = None

    def send(self, raw: bytes) -> bytes:
        code, text = send_to(self.port, raw)
        assert code == 250, (code, text)
        return text

    def mailgate(self, *args: str) -> subprocess.CompletedProcess[str]:
        return run_mailgate(*args, "--config", str(self.config))

    def audit_lines(self) -> list[str]:
        return (self.folder / "audit.jsonl").read_text().splitlines()

    def spooled(self) -> int:
        return self.spool.read_bytes().count(b"\n") if self.spool.exists() else 0


@pytest.fixture(name="nodes")
def nodes_fixture() -> Iterator[list[Node]]:
    made: list[Node] = []
    yield made
    for node in made:
        node.stop()


@pytest.fixture(name="make_node")
def make_node_fixture(nodes: list[Node], tmp_path: Path, sink: SmtpSink) -> Any:
    def make(name: str, database: str, **kwargs: Any) -> Node:
        node = Node(name, tmp_path / name, database, sink.port, **kwargs)
        nodes.append(node)
        return node

    return make


def audit_rows(url: str) -> list[tuple[str, str, str]]:
    """(key, node, Message-ID) of every audit row."""
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            "SELECT key::text, node, record->>'message_id' FROM audit_records"
        ).fetchall()
    return [(k, n, m) for k, n, m in rows]


def clean(n: int) -> bytes:
    return message(f"weekly report {n}", f"Report number {n}.\r\n")


def test_audit_rows_from_two_nodes_survive_the_database_dying(
    private_pg: PostgresInstance, make_node: Any, sink: SmtpSink, tmp_path: Path
) -> None:
    url = private_pg.create_database()
    gw1 = make_node("gw1", url).start()
    gw2 = make_node("gw2", url).start()
    sent: list[bytes] = []

    def send(n: int, raw: bytes) -> None:
        (gw1, gw2)[n % 2].send(raw)
        sent.append(raw)

    for n in range(4):  # held messages need the database
        send(n, message(f"invoice {n}", "Please charge 4111 1111 1111 1111 today.\r\n"))
    for n in range(4, 20):
        send(n, clean(n))
    private_pg.stop("immediate")  # as a crash
    for n in range(20, 40):  # clean mail keeps flowing, its records wait in the spools
        send(n, clean(n))
    wait_until(lambda: gw1.spooled() + gw2.spooled() >= 20, 30, "the records to be spooled")
    private_pg.start()
    for n in range(40, 50):
        send(n, clean(n))

    wait_until(lambda: len(audit_rows(url)) >= 50, 90, "50 audit rows")
    wait_until(lambda: gw1.spooled() + gw2.spooled() == 0, 30, "the spools to empty")
    rows = audit_rows(url)
    assert len(rows) == 50 and len({key for key, _, _ in rows}) == 50
    ids = {line.split(b"Message-ID: ", 1)[1].split(b"\r\n", 1)[0].decode() for line in sent}
    assert {m for _, _, m in rows} == ids and len(ids) == 50
    for node in (gw1, gw2):
        assert sum(n == node.name for _, n, _ in rows) == len(node.audit_lines()) == 25
        assert value(scrape(node.metrics_port), "mailgate_audit_spool_records") == 0
    assert len(sink.received) == 46

    # `rules stats` from either node counts the fleet, as both audit files together do.
    fleet = gw2.mailgate("rules", "stats", "--json")
    assert fleet.returncode == 0, fleet.stderr
    both = tmp_path / "both.jsonl"
    both.write_text("\n".join(gw1.audit_lines() + gw2.audit_lines()) + "\n")
    files = run_mailgate("rules", "stats", "--json", "--audit", str(both))
    assert json.loads(fleet.stdout) == json.loads(files.stdout)
    assert json.loads(fleet.stdout)["messages"] == 50
    assert [(r["rule"], r["messages"]) for r in json.loads(fleet.stdout)["rules"]] == [
        ("card-number", 4)
    ]


@pytest.mark.parametrize("end", ["stopped", "killed"])
def test_a_node_restarted_with_a_full_spool_sends_it(
    private_pg: PostgresInstance, make_node: Any, end: str
) -> None:
    url = private_pg.create_database()
    gw1 = make_node("gw1", url).start()
    private_pg.stop()
    for n in range(10):
        gw1.send(clean(n))
    if end == "killed":
        # SIGKILL: only records already spooled (synced within half a second) survive it.
        wait_until(lambda: gw1.spooled() == 10, 30, "10 records in the spool")
        gw1.kill()
    else:
        gw1.stop()  # SIGTERM: whatever was still queued is spooled on the way out
    assert gw1.spooled() == 10
    private_pg.start()
    assert audit_rows(url) == []
    gw1.start()
    wait_until(lambda: len(audit_rows(url)) == 10, 60, "the spool to reach the database")
    wait_until(lambda: gw1.spooled() == 0, 30, "the spool to empty")
    assert len({k for k, _, _ in audit_rows(url)}) == 10


def test_retention_runs_in_a_node_of_the_fleet(pg_server: PostgresInstance, make_node: Any) -> None:
    url = pg_server.create_database()
    db = Database(parse_database_url(url), "setup")
    db.prepare()
    old, kept = datetime.now(UTC) - timedelta(days=200), datetime.now(UTC) - timedelta(days=2)
    for moment in (old, kept):
        stamp = moment.isoformat(timespec="milliseconds")
        line = (
            f'{{"k":"{uuid.uuid4().hex}","t":"{stamp}","r":{{"time":"{stamp}","door":"relay",'
            '"action":"accept","rules":[],"monitor":[]}}'
        )
        write_audit(db, [line], {moment.date()})
    store = PostgresQuarantine(db)
    envelope = Envelope("alice@example.com", ("bob@example.org",))
    held = Verdict(Action.QUARANTINE, rules=["card-number"], reason="card")
    old_id, new_id = (store.put(message(s), envelope, held) for s in ("old", "new"))
    with psycopg.connect(url) as conn:
        conn.execute("UPDATE quarantine SET time = now() - interval '40 days' WHERE id = %s",
                     (old_id,))  # fmt: skip

    make_node(
        "gw1", url, settings={"audit": {"retention": "180d"}, "quarantine": {"retention": "30d"}}
    ).start()

    def retained() -> list[date]:
        return audit_days(db)

    wait_until(lambda: old.date() not in retained(), 60, "the old audit day to be dropped")
    assert kept.date() in retained()
    assert [r.id for r in store.list()] == [new_id]
    with psycopg.connect(url) as conn:
        job = conn.execute("SELECT node FROM fleet_jobs WHERE name = 'retention'").fetchone()
    assert job == ("gw1",)
    db.close()


def fleet_packs(port: int) -> dict[str, str]:
    """node -> pack version, from mailgate_fleet_node_pack on one node's /metrics."""
    return {
        dict(labels)["node"]: dict(labels)["pack_version"]
        for (name, labels), v in scrape(port).items()
        if name == "mailgate_fleet_node_pack" and v == 1
    }


def own_pack(node: Node) -> str:
    samples = scrape(node.metrics_port)
    return next(dict(labels)["version"] for name, labels in samples if name == "mailgate_pack_info")


def test_the_fleet_pack_metric_shows_a_node_on_another_pack(
    pg_server: PostgresInstance, make_node: Any
) -> None:
    url = pg_server.create_database()
    gw1 = make_node("gw1", url).start()
    gw2 = make_node("gw2", url, pack=CARD_PACK + DRAFT_RULE).start()
    first, second = own_pack(gw1), own_pack(gw2)
    assert first != second
    expected = {"gw1": first, "gw2": second}
    wait_until(lambda: fleet_packs(gw1.metrics_port) == expected, 30, "both packs on gw1")
    assert fleet_packs(gw2.metrics_port) == expected
    status = gw1.mailgate("db", "status", "--json")
    assert status.returncode == 0, status.stderr
    nodes = {n["node"]: n for n in json.loads(status.stdout)["nodes"]}
    assert {name: n["pack_version"] for name, n in nodes.items()} == expected
    assert all(n["door"] == "relay" and n["last_seen"] >= n["started"] for n in nodes.values())

    # gw2 gets gw1's pack: its reload is a heartbeat, and the fleet shows one pack.
    write_pack(gw2.rules, CARD_PACK)
    assert gw2.process is not None and gw2.process.process is not None
    gw2.process.process.send_signal(signal.SIGHUP)
    wait_until(lambda: own_pack(gw2) == first, 30, "gw2 to serve gw1's pack")
    wait_until(
        lambda: fleet_packs(gw1.metrics_port) == {"gw1": first, "gw2": first},
        10,  # well inside the 30 s between heartbeats: the reload itself reported it
        "gw2's new pack in the fleet metric",
    )


def test_front_ends_report_through_their_parent(
    pg_server: PostgresInstance, make_node: Any
) -> None:
    """relay.processes 2: the parent process copies the front ends' records and beats for
    them, with the pack they report."""
    url = pg_server.create_database()
    gw1 = make_node(
        "gw1", url, settings={"relay": {"processes": 2}, "engine": {"workers": 1}}
    ).start()
    for n in range(12):
        gw1.send(clean(n))
    wait_until(lambda: len(audit_rows(url)) == 12, 60, "12 audit rows")
    assert {node for _, node, _ in audit_rows(url)} == {"gw1"}
    assert len(gw1.audit_lines()) == 12
    pack = own_pack(gw1)
    wait_until(lambda: fleet_packs(gw1.metrics_port) == {"gw1": pack}, 30, "gw1's pack")

    # The node's row keeps the parent's start: a front end started again (as after a crash)
    # registers nothing.
    def started() -> datetime:
        with psycopg.connect(url) as conn:
            row = conn.execute("SELECT started FROM nodes WHERE node = 'gw1' AND door = 'relay'")
            return row.fetchone()[0]

    def front_ends() -> set[int]:
        assert gw1.process is not None and gw1.process.process is not None
        parent = str(gw1.process.process.pid)
        found = set()
        for entry in Path("/proc").iterdir():
            try:
                stat = (entry / "stat").read_text()
                argv = (entry / "cmdline").read_bytes()
            except (OSError, ValueError):
                continue
            if stat[stat.rindex(")") + 2 :].split()[1] == parent and b"--front-end" in argv:
                found.add(int(entry.name))
        return found

    def serving() -> int:  # front ends that have logged their start
        return (gw1.folder / "relay.log").read_text().count("mailgate.relay INFO listening on")

    # Each front end writes its line itself, a moment after the parent has heard it started.
    wait_until(lambda: serving() == 2, 30, "both front ends' start in the log")
    before, first = started(), front_ends()
    assert len(first) == 2
    os.kill(min(first), signal.SIGKILL)
    wait_until(lambda: serving() == 3, 60, "another front end in the killed one's place")
    assert len(front_ends()) == 2 and front_ends() != first
    assert started() == before

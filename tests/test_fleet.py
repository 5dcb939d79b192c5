"""A fleet of relays on one PostgreSQL (issue 9), as real processes on real sockets: two
`mailgate relay` nodes with their own configurations, one private database, one sink as the
next hop, and `mailgate quarantine` / `mailgate db status` run from either node."""

from __future__ import annotations

import json
import math
import multiprocessing
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from multiprocessing.synchronize import Barrier
from pathlib import Path
from typing import Any

import psycopg
import pytest
import yaml

from mailgate.filter.ops.config import load_config
from mailgate.filter.ops.stores import store_for
from mailgate.filter.store.database import Database
from mailgate.filter.store.dburl import parse_database_url
from mailgate.filter.store.postgres import PostgresQuarantine
from mailgate.relay.release import release_message
from tests.support.background_loop import BackgroundLoop
from tests.support.cards import unmasked_cards
from tests.support.cli import mailgate_argv, mailgate_process, run_in_process, run_mailgate
from tests.support.net import free_port
from tests.support.packs import write_pack
from tests.support.postgres import (  # noqa: F401
    PASSWORD,
    PostgresInstance,
    pg_server_fixture,
    private_pg_fixture,
    requires_postgres,
)
from tests.support.processes import ChildProcess
from tests.support.samples import message
from tests.support.scrape import scrape
from tests.support.smtp_client import banner, send_to
from tests.support.smtp_sink import SmtpSink
from tests.support.waiting import wait_until

pytestmark = [requires_postgres, pytest.mark.timeout(240)]

CARD = "4111 1111 1111 1111"
CARD_PACK = """\
rules:
  - id: card-number
    when: [{dlp: credit_card}]
    action: quarantine
    reason: Message contains a payment card number
"""


def card_message(subject: str = "invoice") -> bytes:
    return message(subject, f"Please charge {CARD} today.\r\n")


@dataclass
class Node:
    """One gateway: its configuration file and, once started, its relay process."""

    name: str
    folder: Path
    database: str
    sink_port: int
    release: dict[str, Any] = field(default_factory=dict)
    port: int = field(default_factory=free_port)
    metrics_port: int = field(default_factory=free_port)
    process: ChildProcess | None = None

    def __post_init__(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        target = {"host": "127.0.0.1", "port": self.sink_port, "tls": "none"}
        settings = {
            "database": self.database,
            "node": self.name,
            "rules": str(write_pack(self.folder / "rules", CARD_PACK)),
            "quarantine": {"path": "quarantine", "release_to": {**target, **self.release}},
            "relay": {
                "listen": f"127.0.0.1:{self.port}",
                "hostname": f"{self.name}.example.test",
                "next_hop": target,
            },
            "engine": {"workers": 1},
            "audit": {"path": "audit.jsonl"},
            "metrics": {"listen": f"127.0.0.1:{self.metrics_port}"},
        }
        self.config = self.folder / "mailgate.yaml"
        self.config.write_text(yaml.safe_dump(settings))

    def relay(self, *flags: str) -> ChildProcess:
        return mailgate_process(
            "relay",
            "--config",
            str(self.config),
            *flags,
            log=self.folder / "relay.log",
            ready=lambda: banner(self.port).startswith(b"220"),
        )

    def start(self) -> Node:
        self.process = self.relay().start()
        return self

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop()

    def mailgate(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return run_mailgate(*args, "--config", str(self.config), timeout=timeout)

    def held(self) -> list[dict[str, Any]]:
        """`mailgate quarantine list --json` on this node."""
        listed = self.mailgate("quarantine", "list", "--json")
        assert listed.returncode == 0, listed.stderr
        return [json.loads(line) for line in listed.stdout.splitlines()]

    def store(self) -> PostgresQuarantine:
        """The store as this node opens it, for looking in without a command each time."""
        database = Database(parse_database_url(self.database), self.name)
        database.prepare()
        return PostgresQuarantine(database)

    def hold(self, subject: str = "invoice") -> str:
        code, text = send_to(self.port, card_message(subject))
        assert code == 250 and b"quarantine as" in text, (code, text)
        return text.decode().rsplit(" ", 1)[-1]


@pytest.fixture(name="loop", scope="module")
def loop_fixture() -> Iterator[BackgroundLoop]:
    background = BackgroundLoop()
    yield background
    background.close()


@pytest.fixture(name="sink")
def sink_fixture(loop: BackgroundLoop) -> Iterator[SmtpSink]:
    next_hop = SmtpSink(loop).start()
    yield next_hop
    next_hop.stop()


@pytest.fixture(name="nodes")
def nodes_fixture(tmp_path: Path, sink: SmtpSink) -> Iterator[list[Node]]:
    made: list[Node] = []
    yield made
    for node in made:
        node.stop()


def make_node(nodes: list[Node], tmp_path: Path, name: str, database: str, sink: SmtpSink,
              **kwargs: Any) -> Node:  # fmt: skip
    node = Node(name, tmp_path / name, database, sink.port, **kwargs)
    nodes.append(node)
    return node


def test_two_relays_hold_into_one_quarantine_listed_from_either(
    pg_server: PostgresInstance,
    nodes: list[Node],
    tmp_path: Path,
    sink: SmtpSink,
    capsys: pytest.CaptureFixture[str],
) -> None:
    database = pg_server.create_database()
    gw1 = make_node(nodes, tmp_path, "gw1", database, sink).start()
    gw2 = make_node(nodes, tmp_path, "gw2", database, sink).start()
    first, second = gw1.hold("first"), gw2.hold("second")
    for node in (gw1, gw2):
        out = run_in_process(capsys, "quarantine", "list", "--json", "--config", str(node.config))
        listed = {r["id"]: r for r in map(json.loads, out.stdout.splitlines())}
        assert set(listed) == {first, second}
        assert (listed[first]["node"], listed[second]["node"]) == ("gw1", "gw2")
        assert {r["state"] for r in listed.values()} == {"held"}
        assert listed[first]["rules"] == ["card-number"]
    shown = run_in_process(capsys, "quarantine", "show", first, "--config", str(gw2.config))
    assert shown.returncode == 0 and "node:        gw1" in shown.stdout
    assert unmasked_cards(shown.stdout) == [] and "**** **** **** 1111" in shown.stdout
    status = gw1.mailgate("db", "status", "--json")  # a process of its own: what an admin runs
    assert status.returncode == 0, status.stderr
    report = json.loads(status.stdout)
    assert [(n["node"], n["door"]) for n in report["nodes"]] == [("gw1", "relay"), ("gw2", "relay")]
    assert report["schema_version"] == report["known_version"] >= 1
    assert PASSWORD not in status.stdout and "***" in report["database"]
    assert sink.received == []  # held, not delivered
    assert not (gw1.folder / "quarantine").exists()  # quarantine.path is not used
    # The database holds the message and only masked values in the record.
    with psycopg.connect(database) as conn:
        record = conn.execute("SELECT subject, hits::text FROM quarantine WHERE id = %s", (first,))
        assert unmasked_cards(" ".join(record.fetchone())) == []
        body = conn.execute("SELECT raw FROM quarantine_bodies WHERE id = %s", (first,))
        assert CARD.encode() in bytes(body.fetchone()[0])


def _release_at(config: Path, qid: str, start: Barrier, conn: Connection) -> None:
    """One node's `quarantine release`, in a process of its own, once the other's is ready."""
    configuration = load_config(config)
    store = store_for(configuration)
    start.wait(30)
    try:
        result = release_message(configuration, store, qid, f"admin@{configuration.node}")
        conn.send((result.released, result.reply))
    except Exception as exc:  # reported to the test
        conn.send((False, repr(exc)))


def test_one_id_released_from_both_nodes_at_once_is_delivered_once(
    pg_server: PostgresInstance, nodes: list[Node], tmp_path: Path, sink: SmtpSink
) -> None:
    database = pg_server.create_database()
    gw1 = make_node(nodes, tmp_path, "gw1", database, sink).start()
    gw2 = make_node(nodes, tmp_path, "gw2", database, sink)  # its configuration only
    store = gw1.store()
    sink.faults.delay = 0.05  # a release takes a little while: the two overlap
    ctx = multiprocessing.get_context("fork")
    for round_ in range(6):
        qid = gw1.hold(f"round {round_}")
        start = ctx.Barrier(2)  # all at once: released when the last is ready
        pipes, procs = [], []
        for node in (gw1, gw2):
            receiver, sender = ctx.Pipe(duplex=False)
            proc = ctx.Process(target=_release_at, args=(node.config, qid, start, sender))
            proc.start()
            pipes.append(receiver)
            procs.append(proc)
        outcomes = [pipe.recv() if pipe.poll(60) else (False, "timeout") for pipe in pipes]
        for proc in procs:
            proc.join(30)
        sink.wait_for(round_ + 1, timeout=30)
        time.sleep(0.3)  # a second copy, were there one, would have arrived by now
        delivered = [r for r in sink.received if r.message["Subject"] == f"round {round_}"]
        assert len(delivered) == 1, outcomes
        assert sorted(released for released, _ in outcomes) == [False, True], outcomes
        loser = next(reply for released, reply in outcomes if not released)
        assert "already being released" in loser or "already released" in loser, outcomes
        record = store.get(qid)
        assert record.state == "released"
        assert [e.kind for e in record.events].count("released") == 1
    # The command says the same to the loser.
    again = gw2.mailgate("quarantine", "release", qid)
    assert again.returncode == 0 and "already released" in again.stdout


def test_database_down_holds_get_451_clean_mail_flows_and_recovers(
    private_pg: PostgresInstance, nodes: list[Node], tmp_path: Path, sink: SmtpSink
) -> None:
    database = private_pg.create_database()
    gw1 = make_node(nodes, tmp_path, "gw1", database, sink).start()
    private_pg.stop()
    code, text = send_to(gw1.port, card_message("while down"))
    assert (code, text[:5]) == (451, b"4.3.0"), text
    assert send_to(gw1.port, message("clean while down"))[0] == 250
    [clean] = sink.wait_for(1)
    assert clean.message["Subject"] == "clean while down"
    private_pg.start()
    qid = gw1.hold("after")
    [record] = gw1.held()  # the refused one was not half-written
    assert record["id"] == qid
    shown = gw1.mailgate("quarantine", "show", qid)
    assert shown.returncode == 0 and "Subject: after" in shown.stdout


def test_frozen_database_gets_451_within_the_deadline(
    private_pg: PostgresInstance, nodes: list[Node], tmp_path: Path, sink: SmtpSink
) -> None:
    database = private_pg.create_database()
    gw1 = make_node(nodes, tmp_path, "gw1", database, sink).start()
    gw1.hold("before")
    paused = private_pg.pause()
    try:
        started = time.monotonic()
        code, _ = send_to(gw1.port, card_message("while frozen"))
        assert code == 451
        assert time.monotonic() - started < 30  # the store's deadline (10 s), not the server
        assert send_to(gw1.port, message("clean while frozen"))[0] == 250
        # Monitoring goes on: the held count is unknown, the rest of the scrape is there.
        samples = scrape(gw1.metrics_port)
        assert math.isnan(samples[("mailgate_quarantine_held", ())])
        assert samples[("mailgate_messages_total", (("action", "accept"), ("door", "relay")))] >= 1
    finally:
        private_pg.resume(paused)
    gw1.hold("after")
    assert sorted(r["subject"] for r in gw1.held()) == ["after", "before"]


def test_node_killed_mid_release_leaves_release_unknown_and_force_delivers(
    pg_server: PostgresInstance, nodes: list[Node], tmp_path: Path, sink: SmtpSink
) -> None:
    database = pg_server.create_database()
    # Timeout 1 s: the release's bound is 4 s and its lease 8 s.
    gw1 = make_node(nodes, tmp_path, "gw1", database, sink, release={"timeout": 1}).start()
    store = gw1.store()
    qid = gw1.hold()
    sink.faults.delay = 0.8  # a slow next hop: every reply takes 0.8 s
    before = sink.connections  # the relay's own next-hop sessions
    release = ChildProcess(
        "release",
        mailgate_argv("quarantine", "release", qid, "--config", str(gw1.config)),
        tmp_path / "release.log",
    ).start()
    wait_until(lambda: sink.connections > before, 30, "the release to reach the next hop")
    assert release.process is not None
    release.process.send_signal(signal.SIGKILL)
    release.process.wait(10)
    assert store.get(qid).state == "releasing"
    wait_until(lambda: store.get(qid).state == "release_unknown", 30, "the lease to end")
    assert gw1.held()[0]["state"] == "release_unknown"
    assert sink.received == []
    refused = gw1.mailgate("quarantine", "release", qid)
    assert refused.returncode == 1 and "--force" in refused.stderr
    sink.faults.delay = 0
    forced = gw1.mailgate("quarantine", "release", qid, "--force")
    assert forced.returncode == 0, forced.stdout + forced.stderr
    assert len(sink.wait_for(1)) == 1
    kinds = [e.kind for e in store.get(qid).events]
    assert kinds == ["quarantined", "releasing", "release_forced", "released"]


def test_two_nodes_starting_at_once_on_an_empty_database(
    pg_server: PostgresInstance, nodes: list[Node], tmp_path: Path, sink: SmtpSink
) -> None:
    database = pg_server.create_database()
    gw1 = make_node(nodes, tmp_path, "gw1", database, sink)
    gw2 = make_node(nodes, tmp_path, "gw2", database, sink)
    gw1.process, gw2.process = gw1.relay(), gw2.relay()
    with (tmp_path / "gw1.log").open("ab") as out1, (tmp_path / "gw2.log").open("ab") as out2:
        for child, out in ((gw1.process, out1), (gw2.process, out2)):
            child.process = subprocess.Popen(child.argv, stdout=out, stderr=out)
    for node in (gw1, gw2):
        wait_until(lambda node=node: node.process._ready(), 90, f"{node.name} to start")
    with psycopg.connect(database) as conn:
        versions = conn.execute("SELECT version FROM schema_migrations ORDER BY 1").fetchall()
    assert versions == [(v,) for v in range(1, len(versions) + 1)]
    gw1.hold()
    assert len(gw2.held()) == 1


def test_unusable_database_at_start_is_one_line_and_no_start(
    private_pg: PostgresInstance, nodes: list[Node], tmp_path: Path, sink: SmtpSink
) -> None:
    database = private_pg.create_database()
    private_pg.stop()
    gw1 = make_node(nodes, tmp_path, "gw1", database, sink)
    refused = subprocess.run(
        mailgate_argv("relay", "--config", str(gw1.config)),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert refused.returncode == 2
    lines = refused.stderr.strip().splitlines()
    assert len(lines) == 1, refused.stderr
    assert f"127.0.0.1:{private_pg.port}" in lines[0] and "refused" in lines[0].lower()
    assert PASSWORD not in refused.stderr
    # --wait-for-database: up as soon as the database is.
    waiting = gw1.relay("--wait-for-database")
    with (tmp_path / "waiting.log").open("ab") as out:
        waiting.process = subprocess.Popen(waiting.argv, stdout=out, stderr=out)
    gw1.process = waiting
    time.sleep(3)
    waiting.check_alive()
    private_pg.start()
    wait_until(waiting._ready, 90, "the waiting relay to start")
    assert PASSWORD not in waiting.log_text()
    gw1.hold()


def test_malformed_database_url_names_the_cause(tmp_path: Path) -> None:
    config = tmp_path / "mailgate.yaml"
    config.write_text(f"database: postgresql://mailgate:{PASSWORD}@db.example.com:54x2/mg\n")
    refused = run_mailgate("relay", "--config", str(config))
    assert refused.returncode == 2
    assert "line 1: database: " in refused.stderr and "db.example.com:54x2" in refused.stderr
    assert PASSWORD not in refused.stderr and len(refused.stderr.strip().splitlines()) == 1


def test_import_of_a_local_quarantine_twice_copies_once(
    pg_server: PostgresInstance,
    tmp_path: Path,
    sink: SmtpSink,
    nodes: list[Node],
    capsys: pytest.CaptureFixture[str],
) -> None:
    from mailgate.filter.policy.envelope import Envelope
    from mailgate.filter.policy.verdict import Action, Verdict
    from mailgate.filter.store.quarantine import LocalQuarantine
    from tests.support.releases import record_release

    local = LocalQuarantine(tmp_path / "old-quarantine", node="gw-old")
    envelope = Envelope("alice@example.com", ("bob@example.org",), door="relay")
    verdict = Verdict(Action.QUARANTINE, rules=["card-number"], reason="card")
    ids = [local.put(card_message(f"m{i}"), envelope, verdict) for i in range(4)]
    record_release(local, ids[1], "rev", "250 2.0.0 queued", reason="ok")
    local.delete(ids[2], "rev", "spam")
    purged = local.put(card_message("old"), envelope, verdict)
    with __import__("sqlite3").connect(local.index_path) as db:
        db.execute("UPDATE messages SET time = '2000-01-01T00:00:00.000000+00:00' WHERE id = ?",
                   (purged,))  # fmt: skip
    assert local.purge(__import__("datetime").timedelta(days=1), "cron") == 1
    gw1 = make_node(nodes, tmp_path, "gw1", pg_server.create_database(), sink)
    config = ("--config", str(gw1.config))
    first = run_in_process(capsys, "quarantine", "import", str(local.path), *config)
    assert first.returncode == 0, first.stderr
    assert "imported 4 message(s)" in first.stdout and "1 purge record(s)" in first.stdout
    again = run_in_process(capsys, "quarantine", "import", str(local.path), *config)
    assert "imported 0 message(s)" in again.stdout and "(4 there already), 0 purge" in again.stdout
    listed = run_in_process(capsys, "quarantine", "list", "--json", *config).stdout
    assert {json.loads(line)["id"] for line in listed.splitlines()} == set(ids)
    store = gw1.store()
    for record in local.list():
        copied = store.get(record.id)
        assert (copied.state, copied.node, copied.subject) == (
            record.state,
            "gw-old",
            record.subject,
        )
        assert [(e.kind, e.actor, e.time) for e in copied.events] == [
            (e.kind, e.actor, e.time) for e in record.events
        ]
    assert b"Subject: m0" in store.raw(ids[0])  # the body came along
    with psycopg.connect(gw1.database) as conn:
        assert conn.execute("SELECT count(*) FROM quarantine_purges").fetchone() == (1,)

"""A held message's life, the same in both stores (the local folder and the fleet's
PostgreSQL): the claim is atomic, a message being released cannot be deleted, a lost release
shows as release_unknown and only a forced claim sends it again, outcomes are recorded under
the claim, a release mark is spent once, and the history says who, where and what."""

from __future__ import annotations

import multiprocessing
import time
from collections.abc import Iterator
from datetime import timedelta
from multiprocessing.connection import Connection
from multiprocessing.synchronize import Barrier
from pathlib import Path
from typing import Any

import pytest

from mailgate.filter.policy.envelope import Envelope
from mailgate.filter.policy.verdict import Action, Hit, Verdict
from mailgate.filter.store.lifecycle import Change
from mailgate.filter.store.quarantine import (
    LocalQuarantine,
    QuarantineStore,
    StateError,
    UnknownMessage,
)
from tests.support.postgres import (  # noqa: F401
    PostgresInstance,
    binaries,
    pg_server_fixture,
)

CARD = "4111 1111 1111 1111"
RAW = (
    b"From: Alice <alice@example.com>\r\nTo: bob@example.net\r\n"
    b"Subject: card " + CARD.encode() + b"\r\nMessage-ID: <abc@example.com>\r\n\r\n"
    b"Card: " + CARD.encode() + b"\r\n"
)
LEASE = timedelta(minutes=5)
pytestmark = pytest.mark.timeout(120)


def envelope() -> Envelope:
    return Envelope(
        mail_from="alice@example.com",
        rcpt_tos=("bob@example.net",),
        client_address="127.0.0.1",
        door="relay",
    )


def verdict() -> Verdict:
    return Verdict(
        action=Action.QUARANTINE,
        rules=["card-numbers"],
        hits=[Hit("card-numbers", "dlp:credit_card", "1", 1, "**** **** **** 1111")],
        reason="Held for review",
        pack_version="p1",
    )


def open_store(kind: str, where: Any, node: str = "gw1") -> QuarantineStore:
    """A second handle on the same store, as another process or node would open it."""
    if kind == "local":
        return LocalQuarantine(where, node=node)
    from mailgate.filter.store.database import Database
    from mailgate.filter.store.dburl import parse_database_url
    from mailgate.filter.store.postgres import PostgresQuarantine

    database = Database(parse_database_url(where), node)
    database.prepare()
    return PostgresQuarantine(database)


@pytest.fixture(params=["local", "postgres"])
def place(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[str, Any]]:
    if request.param == "local":
        yield "local", tmp_path / "q"
        return
    if binaries() is None:
        pytest.skip("needs PostgreSQL's initdb and pg_ctl (see README: Testing)")
    server: PostgresInstance = request.getfixturevalue("pg_server")
    yield "postgres", server.create_database()


@pytest.fixture
def store(place: tuple[str, Any]) -> QuarantineStore:
    return open_store(*place)


def test_claim_release_and_history(store: QuarantineStore) -> None:
    qid = store.put(RAW, envelope(), verdict())
    claim = store.claim(qid, "alice-admin", LEASE, reason="approved")
    assert store.get(qid).state == "releasing"
    assert store.count() == 0  # not held any more
    assert store.finish(claim, Change.RELEASED, "250 2.0.0 queued as S1")
    record = store.get(qid)
    assert record.state == "released" and record.node == "gw1"
    assert [(e.kind, e.actor, e.node, e.reply) for e in record.events] == [
        ("quarantined", "relay", "gw1", ""),
        ("releasing", "alice-admin", "gw1", ""),
        ("released", "alice-admin", "gw1", "250 2.0.0 queued as S1"),
    ]
    assert record.events[1].reason == "approved"
    with pytest.raises(StateError, match="already released") as again:
        store.claim(qid, "bob-admin", LEASE)
    assert again.value.state == "released"
    assert store.raw(qid) == RAW  # released mail is kept until deleted or purged


def test_a_second_claim_loses_and_delete_is_refused_while_releasing(
    store: QuarantineStore,
) -> None:
    qid = store.put(RAW, envelope(), verdict())
    claim = store.claim(qid, "alice", LEASE)
    with pytest.raises(StateError, match="already being released"):
        store.claim(qid, "bob", LEASE)
    with pytest.raises(StateError, match="cannot be deleted while the release runs"):
        store.delete(qid, "carol")
    assert store.raw(qid) == RAW  # the message is still there for the release
    assert store.finish(claim, Change.FAILED, "550 5.7.1 no")
    record = store.get(qid)
    assert record.state == "held" and record.events[-1].kind == "release_failed"
    assert store.delete(qid, "carol") and not store.delete(qid, "carol")
    with pytest.raises(StateError, match="deleted"):
        store.claim(qid, "alice", LEASE)


def test_lost_release_is_release_unknown_and_only_force_sends_again(
    store: QuarantineStore,
) -> None:
    qid = store.put(RAW, envelope(), verdict())
    lost = store.claim(qid, "alice", timedelta(seconds=1))
    time.sleep(1.2)  # the releasing process died: nobody ends the claim; the lease does
    assert store.get(qid).state == "release_unknown"
    assert [r.id for r in store.list(state="release_unknown")] == [qid]
    assert store.list(state="releasing") == []
    with pytest.raises(StateError, match="--force") as refused:
        store.claim(qid, "bob", LEASE)
    assert refused.value.state == "release_unknown"
    forced = store.claim(qid, "bob", LEASE, force=True)
    assert store.get(qid).state == "releasing"
    # The lost release's late outcome is history, not the state: its claim was taken over.
    assert not store.finish(lost, Change.RELEASED, "250 late")
    assert store.get(qid).state == "releasing"
    assert store.finish(forced, Change.RELEASED, "250 2.0.0 ok")
    kinds = [e.kind for e in store.get(qid).events]
    assert kinds == ["quarantined", "releasing", "release_forced", "released", "released"]


def test_unknown_outcome_ends_the_lease_at_once(store: QuarantineStore) -> None:
    qid = store.put(RAW, envelope(), verdict())
    claim = store.claim(qid, "alice", LEASE)
    assert store.finish(claim, Change.UNKNOWN, "451 4.4.2 Next hop timed out")
    assert store.get(qid).state == "release_unknown"
    assert store.delete(qid, "alice")  # an operator may give it up


def test_release_mark_is_spent_once_and_only_in_flight(store: QuarantineStore) -> None:
    qid = store.put(RAW, envelope(), verdict())
    claim = store.claim(qid, "alice", LEASE)
    assert store.consume_mark(qid, "0" * 16) is None  # not this release's
    assert store.consume_mark(qid, claim.token) == ("alice@example.com", ("bob@example.net",))
    assert store.consume_mark(qid, claim.token) is None  # spent
    store.finish(claim, Change.FAILED, "451 try later")
    second = store.claim(qid, "alice", LEASE)
    store.finish(second, Change.FAILED, "451 try later")
    assert store.consume_mark(qid, second.token) is None  # a failed release voids its mark
    assert store.consume_mark("../etc/passwd", second.token) is None


def test_outcome_must_be_an_outcome(store: QuarantineStore) -> None:
    qid = store.put(RAW, envelope(), verdict())
    claim = store.claim(qid, "alice", LEASE)
    with pytest.raises(ValueError):
        store.finish(claim, Change.DELETE, "")
    with pytest.raises(UnknownMessage):
        store.claim("20240101T000000000Z-aaaaaaaaaaaaaaaa", "alice", LEASE)


def test_purge_keeps_a_release_in_flight(store: QuarantineStore) -> None:
    held = store.put(RAW, envelope(), verdict())
    releasing = store.put(RAW, envelope(), verdict())
    store.claim(releasing, "alice", LEASE)
    assert store.purge(timedelta(0), "cron") == 1
    assert [r.id for r in store.list()] == [releasing]
    with pytest.raises(UnknownMessage):
        store.get(held)


def test_release_secret_is_one_for_every_handle(place: tuple[str, Any]) -> None:
    first, second = open_store(*place), open_store(*place, node="gw2")
    assert len(first.release_secret()) >= 16
    assert first.release_secret() == second.release_secret()


def _claim_at(kind: str, where: Any, qid: str, start: Barrier, conn: Connection) -> None:
    store = open_store(kind, where, node=f"gw-{multiprocessing.current_process().pid}")
    start.wait(30)
    try:
        store.claim(qid, "racer", LEASE)
        conn.send("won")
    except StateError as lost:
        conn.send(str(lost))


def test_claims_at_the_same_moment_from_two_processes(place: tuple[str, Any]) -> None:
    store = open_store(*place)
    ctx = multiprocessing.get_context("fork")
    for _ in range(10):
        qid = store.put(RAW, envelope(), verdict())
        start = ctx.Barrier(2)  # all at once: released when the last is ready
        pipes, procs = [], []
        for _racer in range(2):
            receiver, sender = ctx.Pipe(duplex=False)
            proc = ctx.Process(target=_claim_at, args=(*place, qid, start, sender))
            proc.start()
            pipes.append(receiver)
            procs.append(proc)
        results = sorted(pipe.recv() if pipe.poll(60) else "timeout" for pipe in pipes)
        for proc in procs:
            proc.join(30)
        assert results[1] == "won" and "already being released" in results[0], results
        assert [e.kind for e in store.get(qid).events].count("releasing") == 1


def _open_at(path: Path, start: Barrier, conn: Connection) -> None:
    start.wait(30)
    try:
        LocalQuarantine(path)
        conn.send("ok")
    except Exception as exc:  # reported to the test
        conn.send(repr(exc))


def test_local_store_opened_by_processes_at_once(tmp_path: Path) -> None:
    """Issue 10 #23: a relay and a milter starting together failed "database is locked"."""
    ctx = multiprocessing.get_context("fork")
    for round_ in range(20):
        path = tmp_path / f"q{round_}"
        start = ctx.Barrier(4)  # all at once: released when the last is ready
        pipes, procs = [], []
        for _ in range(4):
            receiver, sender = ctx.Pipe(duplex=False)
            proc = ctx.Process(target=_open_at, args=(path, start, sender))
            proc.start()
            pipes.append(receiver)
            procs.append(proc)
        results = [pipe.recv() if pipe.poll(60) else "timeout" for pipe in pipes]
        for proc in procs:
            proc.join(30)
        assert results == ["ok"] * 4


def test_console_queries_read_the_same_from_both_stores(
    pg_server: PostgresInstance, tmp_path: Path
) -> None:
    """The review console's pages (search, counts per rule, history) over the fleet's store
    give what the local store gives for the same messages and changes."""
    from mailgate.filter.store.quarantine import HeldQuery, HistoryQuery
    from tests.support.releases import record_release

    if binaries() is None:
        pytest.skip("needs PostgreSQL's initdb and pg_ctl (see README: Testing)")
    stores = [
        open_store("local", tmp_path / "q"),
        open_store("postgres", pg_server.create_database()),
    ]
    for store in stores:
        mails = [
            ("alice@example.com", ("bob@partner.example",), ["card-numbers"], ["watch"], "a"),
            ("Carol@Example.org", ("dave@partner.example",), ["iban"], [], "b IBAN list"),
            ("alice@example.com", ("erin@x.example", "bob@partner.example"), ["iban"], [], "c"),
        ]
        ids = []
        for sender, rcpts, rules, monitor, subject in mails:
            verdict = Verdict(Action.QUARANTINE, rules=rules, monitor=monitor, reason="held")
            ids.append(store.put(RAW, Envelope(sender, rcpts, door="relay"), verdict, subject))
            time.sleep(0.01)  # distinct times: the order is the time order
        record_release(store, ids[2], "rev", "250 ok", reason=f"approved, card {CARD}")
        store.delete(ids[1], "rev", "spam")
        store.record_activity("signed_in", "rev", detail="127.0.0.1")

    def read(store: QuarantineStore) -> list[object]:
        def subjects(query: HeldQuery, offset: int = 0, limit: int = 50) -> list[str]:
            page = store.search(query, offset, limit)
            return [*(r.subject for r in page.records), f"total {page.total}"]

        history = store.history(HistoryQuery())
        return [
            subjects(HeldQuery()),
            subjects(HeldQuery(newest_first=False), 1, 1),
            subjects(HeldQuery(state="held")),
            subjects(HeldQuery(rule="watch")),
            subjects(HeldQuery(sender="ALICE@example.com")),
            subjects(HeldQuery(recipient="bob@partner.example")),
            subjects(HeldQuery(domain="partner.example")),
            subjects(HeldQuery(text="iban")),
            store.rule_counts(HeldQuery()),
            store.rule_counts(HeldQuery(state="held", rule="iban")),
            [(e.kind, e.actor, e.reason, e.detail) for e in history.entries],
            history.total,
            store.history(HistoryQuery(kind="released")).total,
            store.history(HistoryQuery(text="APPROVED")).total,
        ]

    local, fleet = (read(store) for store in stores)
    assert fleet == local
    assert local[0] == ["c", "b IBAN list", "a", "total 3"]
    assert CARD not in repr(local)  # the reviewer's reason is stored masked

"""The quarantine's pages for the review console: search, counts per rule, the history, and
the migration of a store written before they existed."""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path

from mailgate.filter.policy.envelope import Envelope
from mailgate.filter.policy.verdict import Action, Hit, Verdict
from mailgate.filter.store.quarantine import HeldQuery, HistoryQuery, LocalQuarantine
from tests.support.releases import record_release

CARD = "4111 1111 1111 1111"
MASKED = "**** **** **** 1111"


def hold(
    store: LocalQuarantine,
    sender: str = "alice@example.com",
    rcpts: tuple[str, ...] = ("bob@example.net",),
    rules: tuple[str, ...] = ("card-numbers",),
    monitor: tuple[str, ...] = (),
    subject: str = "Quarterly numbers",
) -> str:
    verdict = Verdict(
        action=Action.QUARANTINE,
        rules=list(rules),
        monitor=list(monitor),
        hits=[Hit(rule=r, detector="dlp:credit_card", where="1", sample=MASKED) for r in rules],
        reason="Held for review",
        pack_version="test-1",
    )
    raw = f"Subject: {subject}\r\n\r\nCard {CARD}\r\n".encode()
    return store.put(raw, Envelope(sender, rcpts, door="relay"), verdict, subject)


def ids(page) -> list[str]:
    return [r.id for r in page.records]


def test_search_filters_sorts_and_pages(tmp_path: Path) -> None:
    store = LocalQuarantine(tmp_path, node="gw1")
    a = hold(store, "alice@example.com", ("bob@example.net",), ("card-numbers",), ("watch",))
    b = hold(store, "Carol@Example.org", ("dave@partner.example",), ("iban",), subject="IBAN list")
    c = hold(store, "alice@example.com", ("erin@partner.example", "bob@example.net"), ("iban",))
    record_release(store, c, "rev", "250 ok")

    assert ids(store.search(HeldQuery())) == [c, b, a]  # newest first
    assert ids(store.search(HeldQuery(newest_first=False))) == [a, b, c]
    held = store.search(HeldQuery(state="held"))
    assert (ids(held), held.total) == ([b, a], 2)
    assert ids(store.search(HeldQuery(rule="iban"))) == [c, b]
    assert ids(store.search(HeldQuery(rule="iban", state="held"))) == [b]
    assert ids(store.search(HeldQuery(rule="watch"))) == [a]  # monitor rules count too
    assert ids(store.search(HeldQuery(sender="carol@example.ORG"))) == [b]  # any case
    assert ids(store.search(HeldQuery(recipient="bob@example.net"))) == [c, a]
    assert ids(store.search(HeldQuery(sender="bob@example.net"))) == []  # a recipient only
    assert ids(store.search(HeldQuery(domain="partner.example"))) == [c, b]
    assert ids(store.search(HeldQuery(domain="example.com"))) == [c, a]
    assert ids(store.search(HeldQuery(text="iban l"))) == [b]  # the Subject, any case
    assert ids(store.search(HeldQuery(text="erin@"))) == [c]
    assert ids(store.search(HeldQuery(text=b))) == [b]
    assert ids(store.search(HeldQuery(text="100%_"))) == []  # LIKE's wildcards are literal
    hour = timedelta(hours=1)
    assert store.search(HeldQuery(since=datetime.now(UTC) + hour)).total == 0
    assert store.search(HeldQuery(until=datetime.now(UTC) + hour)).total == 3
    assert store.search(HeldQuery(until=datetime.now(UTC) - hour)).total == 0

    first, second = store.search(HeldQuery(), 0, 2), store.search(HeldQuery(), 2, 2)
    assert (ids(first), first.total, ids(second), second.total) == ([c, b], 3, [a], 3)
    assert all(r.events == () and r.node == "gw1" for r in first.records)


def test_rule_counts_follow_the_filters_but_not_the_rule(tmp_path: Path) -> None:
    store = LocalQuarantine(tmp_path)
    hold(store, rules=("card-numbers",), monitor=("watch",))
    b = hold(store, rules=("iban",), sender="carol@example.org")
    hold(store, rules=("iban", "card-numbers"))
    assert store.rule_counts(HeldQuery()) == {"card-numbers": 2, "iban": 2, "watch": 1}
    store.delete(b, "rev", "spam")
    assert store.rule_counts(HeldQuery(state="held")) == {"card-numbers": 2, "iban": 1, "watch": 1}
    assert store.rule_counts(HeldQuery(state="deleted", rule="card-numbers")) == {"iban": 1}
    assert store.rule_counts(HeldQuery(sender="carol@example.org")) == {"iban": 1}
    assert store.rule_counts(HeldQuery(since=datetime.now(UTC) + timedelta(hours=1))) == {}


def test_history_has_reasons_masked_purges_and_activity(tmp_path: Path) -> None:
    store = LocalQuarantine(tmp_path, node="gw1")
    a, b, c = hold(store), hold(store), hold(store)
    record_release(store, a, "rev", "451 4.4.1 down", reason="customer asked", failed=True)
    record_release(store, a, "rev", "250 2.0.0 queued", reason=f"approved, card {CARD}")
    store.delete(b, "rev2", reason="not business mail")
    store.record_activity("signed_in", "rev", detail="127.0.0.1")
    store.record_activity("original_viewed", "boss", qid=c, reason=f"audit of {CARD}")
    assert store.purge(timedelta(0), "boss") == 3

    page = store.history(HistoryQuery())
    got = [(e.kind, e.actor, e.qid, e.reason) for e in page.entries]
    assert got[:3] == [
        ("purged", "boss", None, ""),
        ("original_viewed", "boss", c, f"audit of {MASKED}"),
        ("signed_in", "rev", None, ""),
    ]
    assert page.total == 3  # the purge took the messages' own events with it
    assert "3 message(s)" in page.entries[0].detail
    assert all(e.node == "gw1" for e in page.entries)
    assert CARD not in repr(page)

    store2 = LocalQuarantine(tmp_path / "two", node="gw2")
    d = hold(store2)
    record_release(store2, d, "rev", "451 4.4.1 down", reason="customer asked", failed=True)
    record_release(store2, d, "rev", "250 2.0.0 queued", reason=f"approved, card {CARD}")
    entries = store2.history(HistoryQuery()).entries
    assert [(e.kind, e.reason, e.detail) for e in entries] == [
        ("released", f"approved, card {MASKED}", "250 2.0.0 queued"),
        ("releasing", f"approved, card {MASKED}", ""),  # each release's claim
        ("release_failed", "customer asked", "451 4.4.1 down"),
        ("releasing", "customer asked", ""),
    ]
    assert store2.get(d).events[-1].reason == f"approved, card {MASKED}"
    assert store2.history(HistoryQuery(kind="release_failed")).total == 1
    assert store2.history(HistoryQuery(actor="nobody")).total == 0
    assert store2.history(HistoryQuery(text="APPROVED")).total == 2  # claim and outcome
    assert store2.history(HistoryQuery(text=d)).total == 4
    page = store2.history(HistoryQuery(), 1, 2).entries
    assert [e.kind for e in page] == ["releasing", "release_failed"]


# The index as the release before the console wrote it (schema version 0).
SCHEMA_V0 = """
CREATE TABLE messages (
    id TEXT PRIMARY KEY, time TEXT NOT NULL, door TEXT NOT NULL, queue_id TEXT,
    message_id TEXT NOT NULL, sender TEXT NOT NULL, recipients TEXT NOT NULL,
    client_address TEXT, subject TEXT NOT NULL, size INTEGER NOT NULL, action TEXT NOT NULL,
    rules TEXT NOT NULL, monitor TEXT NOT NULL, hits TEXT NOT NULL, reason TEXT NOT NULL,
    pack_version TEXT NOT NULL, state TEXT NOT NULL
);
CREATE INDEX messages_time ON messages(time);
CREATE INDEX messages_state ON messages(state);
CREATE TABLE events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL REFERENCES messages(id) ON DELETE CASCADE,
    time TEXT NOT NULL, kind TEXT NOT NULL, actor TEXT NOT NULL, reply TEXT NOT NULL DEFAULT ''
);
CREATE INDEX events_id ON events(id);
CREATE TABLE purges (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, time TEXT NOT NULL, actor TEXT NOT NULL,
    older_than TEXT NOT NULL, ids TEXT NOT NULL
);
"""


def test_a_store_from_before_the_console_is_migrated(tmp_path: Path) -> None:
    folder = tmp_path / "q"
    folder.mkdir()
    db = sqlite3.connect(folder / "index.sqlite3")
    db.executescript(SCHEMA_V0)
    db.execute(
        "INSERT INTO messages VALUES ('20240101T000000000Z-aaaaaaaaaaaaaaaa', "
        "'2024-01-01T00:00:00.000000+00:00', 'relay', NULL, '', 'Old@Example.com', "
        "'[\"bob@example.net\"]', NULL, 'old', 10, 'quarantine', '[\"iban\"]', '[\"watch\"]', "
        "'[]', 'r', 'v0', 'held')"
    )
    db.commit()
    db.close()
    store = LocalQuarantine(folder)
    LocalQuarantine(folder)  # a second opening finds it migrated
    assert store.rule_counts(HeldQuery(state="held")) == {"iban": 1, "watch": 1}
    assert store.search(HeldQuery(rule="watch", sender="old@example.com")).total == 1
    assert store.search(HeldQuery(domain="example.net")).total == 1
    assert store.get("20240101T000000000Z-aaaaaaaaaaaaaaaa").node == ""

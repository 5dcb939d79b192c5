"""The quarantine's pages for the review console: search, counts per rule, the history, and
the migration of a store written before they existed."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from mailgate.filter.policy.envelope import Envelope
from mailgate.filter.policy.verdict import Action, Hit, Verdict
from mailgate.filter.store import postgres, quarantine
from mailgate.filter.store.quarantine import (
    HeldQuery,
    HistoryQuery,
    LocalQuarantine,
    QuarantineStore,
)
from tests.support.postgres import SKIP_REASON, binaries, pg_server_fixture  # noqa: F401
from tests.support.releases import record_release

CARD = "4111 1111 1111 1111"
MASKED = "**** **** **** 1111"


def hold(
    store: QuarantineStore,
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
    assert store.search(HeldQuery(domain="example.net", state="held")).total == 1
    assert store.search(HeldQuery(text="OLD@exam")).total == 1  # the trigram index
    assert store.search(HeldQuery(text="b@example.n", rule="iban")).total == 1
    assert store.search(HeldQuery(text="ld")).total == 1  # too short for it: every row
    assert store.get("20240101T000000000Z-aaaaaaaaaaaaaaaa").node == ""
    with sqlite3.connect(folder / "index.sqlite3") as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == len(quarantine._MIGRATIONS)


# --- both stores: the console's filters through their indexes --------------------------------


@pytest.fixture(params=["local", "postgres"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[QuarantineStore]:
    if request.param == "local":
        yield LocalQuarantine(tmp_path / "q", node="gw1")
        return
    if binaries() is None:
        pytest.skip(SKIP_REASON)
    from mailgate.filter.store.database import Database
    from mailgate.filter.store.dburl import parse_database_url
    from mailgate.filter.store.postgres import PostgresQuarantine

    url = request.getfixturevalue("pg_server").create_database()
    database = Database(parse_database_url(url), "gw1")
    database.prepare()
    yield PostgresQuarantine(database)
    database.close()


def held_five(store: QuarantineStore) -> list[str]:
    mails = [
        ("alice@example.com", ("bob@partner.example",), ("card-numbers",), "Order 7 for ACME"),
        ("carol@example.org", ("dave@bank.example",), ("iban",), "Wire 100%_ today"),
        ("alice@example.com", ("erin@bank.example",), ("iban",), "order 8 (ACME)"),
        ("zed@example.com", ("Bob@Partner.example",), ("card-numbers",), "Quarterly ORDER"),
        ("alice@example.com", ("eve@else.example",), ("iban", "card-numbers"), "Re: order"),
    ]
    ids = []
    for sender, rcpts, rules, subject in mails:
        ids.append(hold(store, sender, rcpts, rules, subject=subject))
        time.sleep(0.002)  # distinct times: the order is the time order
    return ids


def test_text_domain_and_recipient_filters_in_both_stores(
    store: QuarantineStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A text of 3 characters or more through the trigram index (any case, any part of the
    id, Subject, sender or a recipient; %, _ and quotes literal), a shorter one through every
    row; the domain and recipient filters; all combined with the state, the rule and the
    time, in time order both ways, the same whether the matches are sorted or the rows read
    in time order (`SORT_LIMIT`)."""
    a, b, c, d, e = held_five(store)
    record_release(store, b, "rev", "250 ok")
    store.delete(d, "rev", "spam")
    cases: list[tuple[HeldQuery, list[str]]] = [
        (HeldQuery(text="ORDER"), [e, d, c, a]),
        (HeldQuery(text="order", state="held"), [e, c, a]),
        (HeldQuery(text="order", newest_first=False, state="held"), [a, c, e]),
        (HeldQuery(text="acme)"), [c]),
        (HeldQuery(text="100%_"), [b]),
        (HeldQuery(text="0%_ t"), [b]),
        (HeldQuery(text="%_x"), []),
        (HeldQuery(text='"acme"'), []),
        (HeldQuery(text="bank.exa"), [c, b]),
        (HeldQuery(text=a[-10:]), [a]),  # part of the id
        (HeldQuery(text=a), [a]),
        (HeldQuery(text="E:"), [e]),  # short (no id holds a colon)
        (HeldQuery(text="order", rule="iban"), [e, c]),
        (HeldQuery(text="order", domain="partner.example"), [d, a]),
        (HeldQuery(text="order", sender="ALICE@example.com", state="held"), [e, c, a]),
        (HeldQuery(domain="bank.example"), [c, b]),
        (HeldQuery(domain="@Bank.Example."), [c, b]),
        (HeldQuery(domain="example.com", state="held"), [e, c, a]),
        (HeldQuery(domain="partner.example", state="deleted"), [d]),
        (HeldQuery(domain="bank.example", rule="iban", state="released"), [b]),
        (HeldQuery(recipient="bob@partner.example"), [d, a]),
        (HeldQuery(recipient="bob@partner.example", state="held"), [a]),
        (HeldQuery(rule="iban", state="held"), [e, c]),
        (HeldQuery(rule="card-numbers", state="deleted"), [d]),
        (HeldQuery(text="order", until=datetime.now(UTC) - timedelta(hours=1)), []),
    ]
    for query, expected in cases:
        page = store.search(query)
        assert ([r.id for r in page.records], page.total, page.exact) == (
            expected,
            len(expected),
            True,
        ), query
    for module in (quarantine, postgres):  # read in time order, never sorted
        monkeypatch.setattr(module, "SORT_LIMIT", 1)
    for query, expected in cases:
        assert ids(store.search(query)) == expected, query
    assert ids(store.search(HeldQuery(text="order"), 1, 2)) == [d, c]
    assert store.rule_counts(HeldQuery(text="order", state="held")) == {
        "card-numbers": 2,
        "iban": 2,
    }
    assert store.rule_counts(HeldQuery(domain="bank.example")) == {"iban": 2}
    assert store.rule_counts(HeldQuery(domain="example.com", state="held", rule="x")) == {
        "card-numbers": 2,
        "iban": 2,
    }
    assert store.rule_counts(HeldQuery(state="deleted")) == {"card-numbers": 1}


def test_a_common_word_is_counted_only_so_far(
    store: QuarantineStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A text search counts at most TEXT_COUNT_LIMIT + 1 matches and says the count is not
    exact (the console then shows "more than"); the page itself is whole."""
    for module in (quarantine, postgres):
        monkeypatch.setattr(module, "TEXT_COUNT_LIMIT", 2)
    a, _, c, d, e = held_five(store)
    page = store.search(HeldQuery(text="order"))
    assert (ids(page), page.total, page.exact) == ([e, d, c, a], 3, False)
    exact = store.search(HeldQuery(text="order", rule="iban"))
    assert (exact.total, exact.exact) == (2, True)
    assert store.search(HeldQuery(state="held")).exact  # counted in full without a text


def test_purged_messages_leave_no_index_rows(store: QuarantineStore) -> None:
    held_five(store)
    assert store.purge(timedelta(0), "boss") == 5
    for query in (HeldQuery(text="order"), HeldQuery(domain="bank.example", state="held")):
        assert store.search(query).total == 0
    assert store.rule_counts(HeldQuery()) == store.rule_counts(HeldQuery(domain="x.y")) == {}
    if not isinstance(store, LocalQuarantine):
        return
    with sqlite3.connect(store.index_path) as db:
        for side in ("message_rules", "message_domains", "message_search"):
            assert db.execute(f"SELECT count(*) FROM {side}").fetchone()[0] == 0, side
        db.execute("INSERT INTO message_text (message_text) VALUES ('integrity-check')")
        assert db.execute("SELECT count(*) FROM message_text").fetchone()[0] == 0

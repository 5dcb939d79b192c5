"""The local quarantine store and `mailgate quarantine` run as a real command."""

from __future__ import annotations

import json
import multiprocessing
import os
import sqlite3
import stat
import subprocess
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from multiprocessing.connection import Connection
from pathlib import Path

import pytest

from mailgate.filter.policy.envelope import Envelope
from mailgate.filter.policy.verdict import Action, Hit, Verdict
from mailgate.filter.store.quarantine import (
    LocalQuarantine,
    QuarantineError,
    StateError,
    UnknownMessage,
    is_valid_id,
)
from tests.support.cli import run_in_process
from tests.support.releases import record_release

CARD = "4111 1111 1111 1111"
MASKED = "**** **** **** 1111"

RAW = (
    b"From: Alice <alice@example.com>\r\n"
    b"To: bob@example.net\r\n"
    b"Subject: Quarterly numbers\r\n"
    b"Message-ID: <abc123@example.com>\r\n"
    b"\r\n"
    b"Card: " + CARD.encode() + b"\r\n"
)


def envelope(door: str = "relay") -> Envelope:
    return Envelope(
        mail_from="alice@example.com",
        rcpt_tos=("bob@example.net", "carol@example.net"),
        client_address="127.0.0.1",
        queue_id="4QxYz1" if door == "milter" else None,
        door=door,
    )


def verdict(rule: str = "card-numbers") -> Verdict:
    return Verdict(
        action=Action.QUARANTINE,
        rules=[rule],
        monitor=["watch-finance"],
        hits=[
            Hit(rule=rule, detector="dlp:credit_card", where="1", count=1, sample=MASKED),
            Hit(rule="watch-finance", detector="body", where="1", sample="Q*******y"),
        ],
        reason="Held for review",
        pack_version="test-1",
    )


def put(store: LocalQuarantine, rule: str = "card-numbers", door: str = "relay") -> str:
    return store.put(RAW, envelope(door), verdict(rule), "Quarterly numbers")


def test_put_get_raw_list(tmp_path: Path) -> None:
    store = LocalQuarantine(tmp_path / "q")
    qid = put(store, door="milter")
    assert is_valid_id(qid)
    assert store.raw(qid) == RAW
    r = store.get(qid)
    assert (r.id, r.state, r.door, r.queue_id) == (qid, "held", "milter", "4QxYz1")
    assert r.sender == "alice@example.com"
    assert r.recipients == ("bob@example.net", "carol@example.net")
    assert (r.subject, r.message_id, r.size) == (
        "Quarterly numbers",
        "<abc123@example.com>",
        len(RAW),
    )
    assert (r.action, r.rules, r.monitor) == ("quarantine", ("card-numbers",), ("watch-finance",))
    assert r.hits[0] == {
        "rule": "card-numbers",
        "detector": "dlp:credit_card",
        "where": "1",
        "count": 1,
        "sample": MASKED,
        "detail": {},
    }
    assert (r.reason, r.pack_version, r.client_address) == (
        "Held for review",
        "test-1",
        "127.0.0.1",
    )
    assert abs(r.time - datetime.now(UTC)) < timedelta(minutes=1)
    assert [e.kind for e in r.events] == ["quarantined"]
    json.dumps(r.to_dict())  # JSON-safe
    assert store.list() == [r]
    assert store.count() == 1


def test_ids_sort_by_time_and_are_unguessable(tmp_path: Path) -> None:
    store = LocalQuarantine(tmp_path)
    ids = [put(store) for _ in range(5)]
    assert ids == sorted(ids)
    assert len({i.split("-")[1] for i in ids}) == 5
    assert [r.id for r in store.list()] == ids


def test_list_filters(tmp_path: Path) -> None:
    store = LocalQuarantine(tmp_path)
    a = put(store, rule="card-numbers")
    b = put(store, rule="exe-attachments")
    record_release(store, b, "admin", "250 ok")
    assert [r.id for r in store.list(rule="exe-attachments")] == [b]
    assert [r.id for r in store.list(rule="watch-finance")] == [a, b]  # monitor ids match too
    assert store.list(rule="nothing") == []
    assert [r.id for r in store.list(state="held")] == [a]
    assert [r.id for r in store.list(state="released")] == [b]
    assert len(store.list(since=datetime.now(UTC) - timedelta(hours=1))) == 2
    assert store.list(since=datetime.now(UTC) + timedelta(hours=1)) == []
    with pytest.raises(QuarantineError):
        store.list(state="lost")


def test_release_records_and_is_idempotent(tmp_path: Path) -> None:
    store = LocalQuarantine(tmp_path)
    qid = put(store)
    record_release(store, qid, "alice", "550 5.7.1 relay denied", failed=True)
    assert store.get(qid).state == "held"
    assert record_release(store, qid, "bob", "250 2.0.0 Ok: queued as ABC")
    with pytest.raises(StateError, match="already released"):
        record_release(store, qid, "carol", "250 again")
    r = store.get(qid)
    assert r.state == "released"
    assert [(e.kind, e.actor, e.reply) for e in r.events] == [
        ("quarantined", "relay", ""),
        ("releasing", "alice", ""),
        ("release_failed", "alice", "550 5.7.1 relay denied"),
        ("releasing", "bob", ""),
        ("released", "bob", "250 2.0.0 Ok: queued as ABC"),
    ]
    assert store.count() == 0
    assert store.raw(qid) == RAW  # released mail is kept until deleted or purged


def test_delete(tmp_path: Path) -> None:
    store = LocalQuarantine(tmp_path)
    qid = put(store)
    assert store.delete(qid, "admin")
    assert not (tmp_path / "messages" / f"{qid}.eml").exists()
    with pytest.raises(QuarantineError, match="deleted"):
        store.raw(qid)
    assert not store.delete(qid, "admin")
    r = store.get(qid)
    assert r.state == "deleted" and (r.events[-1].kind, r.events[-1].actor) == ("deleted", "admin")
    with pytest.raises(StateError, match="deleted"):
        record_release(store, qid, "admin", "")


def test_unknown_and_hostile_ids(tmp_path: Path) -> None:
    store = LocalQuarantine(tmp_path / "q")
    (tmp_path / "secret.eml").write_bytes(b"not yours")
    for bad in ("../secret", "20240101T000000000Z-aaaaaaaaaaaaaaaa", "", "x" * 40):
        with pytest.raises(UnknownMessage):
            store.raw(bad)
        with pytest.raises(UnknownMessage):
            store.delete(bad, "admin")
        with pytest.raises(UnknownMessage):
            record_release(store, bad, "admin", "")


def test_purge(tmp_path: Path) -> None:
    store = LocalQuarantine(tmp_path)
    old, new = put(store), put(store)
    with sqlite3.connect(tmp_path / "index.sqlite3") as db:
        old_time = (datetime.now(UTC) - timedelta(days=40)).isoformat(timespec="microseconds")
        db.execute("UPDATE messages SET time = ? WHERE id = ?", (old_time, old))
    # A file a crashed put left without an index row, last touched long ago.
    orphan = tmp_path / "messages" / "20200101T000000000Z-aaaaaaaaaaaaaaaa.eml"
    orphan.write_bytes(RAW)
    os.utime(orphan, (0, 0))
    assert store.purge(timedelta(days=30), "admin") == 1
    with pytest.raises(UnknownMessage):
        store.get(old)
    assert not (tmp_path / "messages" / f"{old}.eml").exists()
    assert not orphan.exists()
    assert store.raw(new) == RAW
    assert store.purge(timedelta(days=30), "admin") == 0
    first, second = store.purges()  # every removal stays on record: who, when, which
    assert (first["actor"], first["ids"]) == ("admin", [old])
    assert second["ids"] == [] and first["older_than"] == str(timedelta(days=30))


def _put_watching_the_disk(path: Path, conn: Connection) -> None:
    """In a child process: `put` with `os.fsync` and `os.rename` recorded in the order they
    happen (what each fsync'd file is, and how much of it there was), then what put returned,
    and out without any cleanup. The page cache outlives a process, so only the calls say
    whether the message would survive the machine losing power."""
    events: list[tuple[str, ...]] = []
    real_fsync, real_rename = os.fsync, os.rename

    def fsync(fd: int) -> None:
        real_fsync(fd)
        info = os.fstat(fd)
        kind = "folder" if stat.S_ISDIR(info.st_mode) else f"file of {info.st_size} bytes"
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}"), kind))

    def rename(src: str | Path, dst: str | Path) -> None:
        real_rename(src, dst)
        events.append(("rename", str(src), str(dst)))

    os.fsync, os.rename = fsync, rename  # type: ignore[assignment]
    qid = put(LocalQuarantine(path))
    events.append(("returned", qid))
    conn.send(events)  # a pipe write is done when send returns (a Queue's is not)
    os._exit(0)  # no cleanup, no close


def test_put_syncs_the_file_then_its_folder_before_returning(tmp_path: Path) -> None:
    ctx = multiprocessing.get_context("fork")
    receiver, sender = ctx.Pipe(duplex=False)
    child = ctx.Process(target=_put_watching_the_disk, args=(tmp_path, sender))
    child.start()
    assert receiver.poll(30)
    events = receiver.recv()
    child.join(30)
    qid = events[-1][1]
    tmp, final = tmp_path / "tmp" / f"{qid}.eml", tmp_path / "messages" / f"{qid}.eml"
    # Only these, in this order: the whole message synced under its temporary name, renamed
    # into place, and the rename made durable by syncing the folder, all before put returns.
    assert events == [
        ("fsync", str(tmp), f"file of {len(RAW)} bytes"),
        ("rename", str(tmp), str(final)),
        ("fsync", str(tmp_path / "messages"), "folder"),
        ("returned", qid),
    ]
    assert final.read_bytes() == RAW
    with sqlite3.connect(tmp_path / "index.sqlite3") as db:
        assert db.execute("PRAGMA journal_mode").fetchone() == ("wal",)
        row = db.execute("SELECT state FROM messages WHERE id = ?", (qid,)).fetchone()
    assert row == ("held",)
    assert list((tmp_path / "tmp").iterdir()) == []


def _worker(path: Path, n: int, queue: multiprocessing.Queue) -> None:
    store = LocalQuarantine(path)
    queue.put([put(store) for _ in range(n)])


def test_concurrent_processes(tmp_path: Path) -> None:
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    workers = [ctx.Process(target=_worker, args=(tmp_path, 20, queue)) for _ in range(4)]
    for w in workers:
        w.start()
    ids = [qid for _ in workers for qid in queue.get(timeout=60)]
    for w in workers:
        w.join(30)
        assert w.exitcode == 0
    store = LocalQuarantine(tmp_path)
    assert len(set(ids)) == 80 and store.count() == 80
    assert sorted(r.id for r in store.list()) == sorted(ids)
    assert all(store.raw(qid) == RAW for qid in ids)


def test_index_holds_only_masked_hits(tmp_path: Path) -> None:
    store = LocalQuarantine(tmp_path)
    qid = put(store)
    index_bytes = b"".join(p.read_bytes() for p in tmp_path.glob("index.sqlite3*"))
    for form in (CARD, CARD.replace(" ", "")):
        assert form.encode() not in index_bytes
    assert MASKED.encode() in index_bytes
    assert CARD.encode() in (tmp_path / "messages" / f"{qid}.eml").read_bytes()


# --- the command line ----------------------------------------------------------------------


Mailgate = Callable[..., subprocess.CompletedProcess[str]]


@pytest.fixture(name="mailgate")
def mailgate_fixture(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> Mailgate:
    """`mailgate quarantine ARGS --config CONFIG` as sudo runs it for "auditor", through its
    entry point in this process: only its output and status matter here, and a child
    process would spend over a second importing mailgate for each command."""
    monkeypatch.setenv("SUDO_USER", "auditor")

    def mailgate(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
        return run_in_process(capsys, "quarantine", *args, "--config", str(config))

    return mailgate


@pytest.fixture
def configured(tmp_path: Path) -> tuple[Path, LocalQuarantine]:
    config = tmp_path / "etc" / "mailgate.yaml"
    config.parent.mkdir()
    config.write_text("quarantine:\n  path: ../store\n")  # relative to the config file
    return config, LocalQuarantine(tmp_path / "store")


def test_cli_list_show_delete_purge(
    configured: tuple[Path, LocalQuarantine], mailgate: Mailgate
) -> None:
    config, store = configured
    card_id = put(store)
    exe_id = put(store, rule="exe-attachments")

    listed = mailgate(config, "list", "--json")
    assert listed.returncode == 0, listed.stderr
    records = [json.loads(line) for line in listed.stdout.splitlines()]
    assert [r["id"] for r in records] == [card_id, exe_id]
    first = records[0]
    assert first["sender"] == "alice@example.com"
    assert first["recipients"] == ["bob@example.net", "carol@example.net"]
    assert (first["subject"], first["rules"], first["state"]) == (
        "Quarterly numbers",
        ["card-numbers"],
        "held",
    )
    assert datetime.fromisoformat(first["time"]).tzinfo is not None

    only = mailgate(config, "list", "--json", "--rule", "exe-attachments", "--since", "1d")
    assert [json.loads(line)["id"] for line in only.stdout.splitlines()] == [exe_id]
    table = mailgate(config, "list", "--state", "held")
    assert table.returncode == 0 and card_id in table.stdout and "2 message(s)" in table.stderr

    show = mailgate(config, "show", card_id)
    assert show.returncode == 0, show.stderr
    assert "Subject: Quarterly numbers" in show.stdout  # headers
    assert MASKED in show.stdout and "dlp:credit_card" in show.stdout  # masked hits
    for output in (show.stdout, listed.stdout):
        assert CARD not in output and CARD.replace(" ", "") not in output

    deleted = mailgate(config, "delete", card_id)
    assert deleted.returncode == 0 and store.get(card_id).state == "deleted"
    assert (store.get(card_id).events[-1].kind, store.get(card_id).events[-1].actor) == (
        "deleted",
        "auditor",
    )

    purged = mailgate(config, "purge", "--older-than", "0s", "--actor", "cron")
    assert purged.returncode == 0 and "purged 2" in purged.stdout
    assert store.list() == []


def test_cli_errors(
    configured: tuple[Path, LocalQuarantine], tmp_path: Path, mailgate: Mailgate
) -> None:
    config, _ = configured
    missing = mailgate(config, "show", "20240101T000000000Z-aaaaaaaaaaaaaaaa")
    assert missing.returncode == 2 and "no quarantined message" in missing.stderr
    release = mailgate(config, "release", "../../etc/passwd")
    assert release.returncode == 2 and "no quarantined message" in release.stderr
    assert mailgate(config, "purge").returncode == 2  # no age, no retention
    assert mailgate(config, "list", "--since", "yesterday-ish").returncode == 2
    bad = tmp_path / "bad.yaml"
    bad.write_text("quarantine:\n  pth: x\n")
    broken = mailgate(bad, "list")
    assert broken.returncode == 2
    assert "line 2: quarantine.pth: unknown key" in broken.stderr


def test_subject_is_stored_with_card_numbers_masked(tmp_path: Path) -> None:
    from mailgate.filter.policy.envelope import Envelope
    from mailgate.filter.policy.verdict import Action, Verdict

    store = LocalQuarantine(tmp_path / "q")
    envelope = Envelope("a@corp.example", ("b@partner.example",))
    qid = store.put(
        b"Subject: x\r\n\r\nbody\r\n",
        envelope,
        Verdict(Action.QUARANTINE),
        "Card 4111 1111 1111 1111 for the hotel",
    )
    assert store.get(qid).subject == "Card **** **** **** 1111 for the hotel"
    assert b"4111 1111 1111 1111" not in (tmp_path / "q" / "index.sqlite3").read_bytes()

"""Quarantine -> release -> the next hop (or the outbox), with the next hop's reply recorded."""

from __future__ import annotations

import multiprocessing
import os
import sqlite3
from datetime import timedelta

import pytest

from mailgate.filter.store.quarantine import LocalQuarantine, QuarantineError
from mailgate.filter.store.release_mark import (
    RELEASE_HEADER,
    find_mark,
    load_or_create_secret,
    marked,
    verify_mark,
)
from mailgate.relay.release import release_message
from tests.support.samples import message
from tests.support.smtp_client import send, send_to

pytestmark = pytest.mark.timeout(60)


def hold(relay, rcpts=("bob@example.org", "carol@example.org")) -> str:
    with relay.client() as client:
        code, text = send(client, message("quarantine-me please"), rcpts=rcpts)
    assert code == 250, text
    return text.decode().rsplit(" ", 1)[-1]


def test_release_sends_the_original_once_with_the_release_mark(make_relay, sink):
    relay = make_relay({"next_hop": {"host": "127.0.0.1", "port": sink.port, "tls": "none"}})
    qid = hold(relay)
    assert sink.received == []
    result = release_message(relay.config, relay.store, qid, actor="alice-admin")
    assert result.released and result.ok
    assert "sink: queued as S1" in result.reply
    [got] = sink.wait_for(1)
    assert got.mail_from == "alice@example.com"
    assert got.rcpt_tos == ("bob@example.org", "carol@example.org")
    found = find_mark(got.content)
    assert found is not None and found[1] == 0  # the first header
    secret = load_or_create_secret(relay.config.quarantine.path)
    assert verify_mark(secret, found[0], got.content[found[2] :])
    assert got.content.endswith(relay.store.raw(qid))  # the original, as held
    record = relay.store.get(qid)
    assert record.state == "released"
    assert [(e.kind, e.actor) for e in record.events][-1] == ("released", "alice-admin")
    assert "sink: queued as S1" in record.events[-1].reply

    again = release_message(relay.config, relay.store, qid, actor="bob-admin")
    assert again.already and again.ok and not again.released
    assert len(sink.received) == 1  # releasing twice does nothing the second time


def test_release_while_next_hop_refuses_keeps_it_held(make_relay, sink):
    relay = make_relay({"next_hop": {"host": "127.0.0.1", "port": sink.port, "tls": "none"}})
    qid = hold(relay)
    sink.faults.rcpt = {"carol@example.org": "550 5.1.1 sink: no such user"}
    result = release_message(relay.config, relay.store, qid, actor="admin")
    assert not result.ok
    assert "550" in result.reply and "carol@example.org" in result.reply
    assert sink.received == []  # all or nothing: bob did not get it either
    record = relay.store.get(qid)
    assert record.state == "held"
    assert record.events[-1].kind == "release_failed"
    assert "no such user" in record.events[-1].reply

    sink.faults.rcpt = {}
    assert release_message(relay.config, relay.store, qid, actor="admin").released
    assert len(sink.wait_for(1)) == 1


def test_release_while_next_hop_is_down(make_relay, sink):
    relay = make_relay({"next_hop": {"host": "127.0.0.1", "port": sink.port, "tls": "none"}})
    qid = hold(relay)
    sink.stop()
    result = release_message(relay.config, relay.store, qid, actor="admin")
    assert not result.ok
    assert result.reply.startswith("451 4.4.1")
    assert relay.store.get(qid).state == "held"


def test_release_without_next_hop_goes_to_the_outbox(make_relay):
    relay = make_relay()
    qid = hold(relay, rcpts=("bob@example.org",))
    assert relay.outbox_files() == []
    assert release_message(relay.config, relay.store, qid, actor="admin").released
    [path] = relay.outbox_files()
    content = path.read_bytes()
    assert content.startswith(b"Return-Path: <alice@example.com>\r\nX-Envelope-To: <bob@")
    assert f"{RELEASE_HEADER}: v2; id={qid};".encode() in content


def test_release_of_unknown_id_is_an_error(make_relay):
    relay = make_relay()
    with pytest.raises(QuarantineError):
        release_message(relay.config, relay.store, "20240101T000000000Z-aaaaaaaaaaaaaaaa", "x")


def test_release_through_a_mailgate_relay_is_not_held_again(make_relay, sink):
    # Relay B sits in front of the next hop and shares relay A's quarantine; A releases to B.
    second = make_relay({"next_hop": {"host": "127.0.0.1", "port": sink.port, "tls": "none"}})
    first = make_relay(
        quarantine={
            "path": str(second.config.quarantine.path),
            "release_to": {"host": "127.0.0.1", "port": second.port, "tls": "none"},
        }
    )
    qid = hold(first, rcpts=("bob@example.org",))
    result = release_message(first.config, first.store, qid, actor="admin")
    assert result.released, result.reply
    [got] = sink.wait_for(1)
    assert b"quarantine-me please" in got.content
    assert RELEASE_HEADER not in got.message  # the mark is not handed to recipients
    assert [r.id for r in second.store.list()] == [qid]  # not held a second time


def test_forged_release_mark_is_just_a_header(make_relay, sink):
    relay = make_relay({"next_hop": {"host": "127.0.0.1", "port": sink.port, "tls": "none"}})
    qid = "20240101T000000000Z-aaaaaaaaaaaaaaaa"
    forged = f"{RELEASE_HEADER}: v2; id={qid}; n={'0' * 16}; t=1; mac={'0' * 64}\r\n"
    with relay.client() as client:
        code, text = send(client, forged.encode() + message("quarantine-me please"))
    assert code == 250
    assert b"quarantine as" in text
    assert sink.received == []


def test_a_release_mark_works_once_and_only_for_the_held_envelope(make_relay, sink):
    """A copy of a released message (mark included, as a recipient of a direct release gets
    it) cannot carry mail past the rules: not after the release, not to anyone else."""
    relay = make_relay({"next_hop": {"host": "127.0.0.1", "port": sink.port, "tls": "none"}})
    qid = hold(relay, rcpts=("bob@example.org",))
    assert release_message(relay.config, relay.store, qid, actor="admin").released
    [got] = sink.wait_for(1)
    marked = got.content  # carries the mark: the sink is not a mailgate door

    replayed = send_to(relay.port, marked)
    elsewhere = send_to(relay.port, marked, "mallory@example.com", ("boss@competitor.example",))
    for code, text in (replayed, elsewhere):
        assert code == 250 and b"quarantine as" in text
    assert len(sink.received) == 1  # neither went out unscanned


def test_a_mark_for_a_held_message_does_not_reach_other_recipients(make_relay, sink):
    relay = make_relay({"next_hop": {"host": "127.0.0.1", "port": sink.port, "tls": "none"}})
    qid = hold(relay, rcpts=("bob@example.org",))
    secret = load_or_create_secret(relay.config.quarantine.path)
    claim = relay.store.claim(qid, "admin", timedelta(minutes=5))  # a release in flight
    in_flight = marked(secret, qid, claim.token, relay.store.raw(qid))
    with relay.client() as client:
        # eve is not among the held message's recipients.
        code, text = send(client, in_flight, rcpts=("eve@elsewhere.example",))
    assert code == 250 and b"quarantine as" in text
    assert sink.received == []
    # The look spent the mark, whatever it decided: the right envelope now is scanned too.
    code, text = send_to(relay.port, in_flight)
    assert code == 250 and b"quarantine as" in text
    assert sink.received == []


def test_a_mark_passes_once_while_its_release_is_in_flight(make_relay, sink):
    """Issue 10 #4: single use, the content as released, and void once the release failed."""
    relay = make_relay({"next_hop": {"host": "127.0.0.1", "port": sink.port, "tls": "none"}})
    qid = hold(relay, rcpts=("bob@example.org",))
    secret = load_or_create_secret(relay.config.quarantine.path)
    claim = relay.store.claim(qid, "admin", timedelta(minutes=5))
    in_flight = marked(secret, qid, claim.token, relay.store.raw(qid))
    card = b"4111 1111 1111 1111"
    changed = in_flight.replace(b"quarantine-me please", b"quarantine-me please " + card)
    assert send_to(relay.port, changed)[1].startswith(b"2.0.0 Held")  # header changed: scanned
    assert send_to(relay.port, in_flight)[0] == 250
    [got] = sink.wait_for(1)
    assert RELEASE_HEADER not in got.message and b"quarantine-me please" in got.content
    code, text = send_to(relay.port, in_flight)  # the same mark again
    assert code == 250 and b"quarantine as" in text
    assert len(sink.received) == 1


def test_a_failed_release_voids_its_mark(make_relay, sink):
    """Issue 10 #4: after a release the next hop refused, the message is held again and the
    mark that went out with it carries nothing past the rules, however often it is sent."""
    relay = make_relay({"next_hop": {"host": "127.0.0.1", "port": sink.port, "tls": "none"}})
    qid = hold(relay, rcpts=("bob@example.org",))
    sink.faults.data = "451 4.3.0 sink: try again later"
    result = release_message(relay.config, relay.store, qid, actor="admin")
    assert not result.ok and relay.store.get(qid).state == "held"
    with sqlite3.connect(relay.config.quarantine.path / "index.sqlite3") as db:
        [(token,)] = db.execute("SELECT claim FROM messages WHERE id = ?", (qid,)).fetchall()
    sent = marked(load_or_create_secret(relay.config.quarantine.path), qid, token,
                  relay.store.raw(qid))  # fmt: skip
    sink.faults.data = None
    for _ in range(3):
        code, text = send_to(relay.port, sent)
        assert code == 250 and b"quarantine as" in text
    assert sink.received == []


def test_a_stored_envelope_with_a_line_break_is_refused_before_anything_is_sent(make_relay, sink):
    """Issue 10 #18: a CRLF planted in the index ended in a ValueError traceback."""
    relay = make_relay({"next_hop": {"host": "127.0.0.1", "port": sink.port, "tls": "none"}})
    qid = hold(relay, rcpts=("bob@example.org",))
    with sqlite3.connect(relay.config.quarantine.path / "index.sqlite3") as db:
        db.execute(
            "UPDATE messages SET recipients = ? WHERE id = ?",
            ('["bob@example.org>\\r\\nRCPT TO:<eve@elsewhere.example"]', qid),
        )
    with pytest.raises(QuarantineError, match="control character"):
        release_message(relay.config, relay.store, qid, actor="admin")
    assert sink.received == [] and relay.store.get(qid).state == "held"


def _release_together(config, qid: str, barrier, conn) -> None:
    """In a child process: `release_message` on a store of its own, once the other child is
    ready too; what it returned (or raised) goes back over `conn`."""
    store = LocalQuarantine(config.quarantine.path, node=f"p{os.getpid()}")
    barrier.wait(30)
    try:
        result = release_message(config, store, qid, actor=f"admin{os.getpid()}")
        conn.send((result.released, result.already, result.reply))
    except Exception as exc:  # reported to the test
        conn.send((False, False, repr(exc)))


RELEASE_ROUNDS = 20


def test_release_message_in_two_processes_at_once_sends_once(make_relay, sink):
    """Issue 10: release_message itself, not a stand-in, from two processes started together,
    20 times: each time exactly one of them sends, the other is told it is done or under way,
    and the next hop gets the held message once, over one connection."""
    relay = make_relay({"next_hop": {"host": "127.0.0.1", "port": sink.port, "tls": "none"}})
    sink.faults.delay = 0.02  # a release takes a while: the two overlap
    ctx = multiprocessing.get_context("fork")
    for round_ in range(RELEASE_ROUNDS):
        qid = hold(relay, rcpts=("bob@example.org",))
        connections = sink.connections
        barrier = ctx.Barrier(2)
        pipes, procs = [], []
        for _ in range(2):
            receiver, sender = ctx.Pipe(duplex=False)
            proc = ctx.Process(target=_release_together, args=(relay.config, qid, barrier, sender))
            proc.start()
            pipes.append(receiver)
            procs.append(proc)
        outcomes = [pipe.recv() if pipe.poll(60) else (False, False, "timeout") for pipe in pipes]
        for proc in procs:
            proc.join(30)
            assert proc.exitcode == 0
        # release_message returns once the next hop has answered, and the one that was told
        # "already" never opened a session: what the sink has now is all there will be.
        assert sorted((released, already) for released, already, _ in outcomes) == [
            (False, True),
            (True, False),
        ], outcomes
        assert len(sink.received) == round_ + 1, outcomes
        assert sink.connections == connections + 1
        assert sink.received[-1].content.endswith(relay.store.raw(qid))
        assert relay.store.get(qid).state == "released"
        assert [e.kind for e in relay.store.get(qid).events].count("released") == 1

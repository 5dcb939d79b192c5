"""The relay end to end over loopback: client -> relay (real engine workers) -> test next hop."""

from __future__ import annotations

from typing import Any

import pytest

from mailgate.filter.scan.pool import ScanPool
from tests.support.net import free_port
from tests.support.samples import message
from tests.support.smtp_client import send
from tests.support.smtp_sink import SmtpSink

pytestmark = pytest.mark.timeout(60)


def next_hop(port: int, **settings: Any) -> dict[str, Any]:
    return {
        "next_hop": {"host": "127.0.0.1", "port": port, "tls": "none", "timeout": 5, **settings}
    }


def test_accepted_message_reaches_next_hop_with_received_header(make_relay, sink):
    relay = make_relay(next_hop(sink.port))
    raw = message("hello")
    with relay.client() as client:
        code, text = send(client, raw)
    assert code == 250
    assert b"sink: queued as S1" in text  # the client hears the next hop's own final answer
    [got] = sink.wait_for(1)
    assert got.mail_from == "alice@example.com"
    assert got.rcpt_tos == ("bob@example.org",)
    received, _, _ = got.content.partition(b"\r\n\t")
    assert received.startswith(b"Received: from client.example.test ([127.0.0.1])")
    assert b"by mailgate.example.test (mailgate) with ESMTP" in got.content
    assert got.content.endswith(raw)  # the message itself is passed on unchanged


def test_tag_rewrites_subject_and_adds_headers(make_relay, sink):
    relay = make_relay(next_hop(sink.port))
    with relay.client() as client:
        code, _ = send(client, message("please tag-me"))
    assert code == 250
    [got] = sink.wait_for(1)
    assert got.message["Subject"] == "[TAGGED] please tag-me"
    assert got.message["X-Mailgate-Test"] == "yes"


def test_tag_without_options_names_the_rule_in_a_header(make_relay, sink):
    relay = make_relay(next_hop(sink.port))
    with relay.client() as client:
        code, _ = send(client, message("please mark-me"))
    assert code == 250
    [got] = sink.wait_for(1)
    assert got.message["X-Mailgate-Rules"] == "mark-word"
    assert got.message["Subject"] == "please mark-me"


def test_tag_rule_adds_a_recipient_at_the_next_hop(make_relay, sink):
    relay = make_relay(next_hop(sink.port))
    with relay.client() as client:
        code, _ = send(client, message("copy-me please"))
    assert code == 250
    [got] = sink.wait_for(1)
    assert got.rcpt_tos == ("bob@example.org", "archive@example.org")


def test_quarantine_stores_durably_and_does_not_pass_on(make_relay, sink):
    relay = make_relay(next_hop(sink.port))
    with relay.client() as client:
        code, text = send(client, message("quarantine-me now"))
    assert code == 250
    qid = text.decode().rsplit(" ", 1)[-1]
    record = relay.store.get(qid)
    assert record.state == "held"
    assert record.rules == ("hold-word",)
    assert record.subject == "quarantine-me now"
    assert record.recipients == ("bob@example.org",)
    assert b"Subject: quarantine-me now" in relay.store.raw(qid)
    assert sink.received == []


@pytest.mark.parametrize(
    ("subject", "expected"),
    [
        ("reject-me", (550, b"5.7.1 Subject contains a blocked word")),
        ("tempfail-me", (451, b"4.7.1 Try later")),
    ],
)
def test_reject_and_tempfail_refuse_with_the_rules_reason(make_relay, sink, subject, expected):
    relay = make_relay(next_hop(sink.port))
    with relay.client() as client:
        assert send(client, message(subject)) == expected
        # The session goes on: the next message on it is delivered.
        assert send(client, message("fine"))[0] == 250
    assert len(sink.wait_for(1)) == 1
    assert relay.store.list() == []


def test_each_recipient_hears_the_next_hops_answer(make_relay, sink):
    sink.faults.rcpt = {
        "gone@example.org": "550 5.1.1 sink: no such user",
        "busy@example.org": "450 4.2.1 sink: mailbox busy",
    }
    relay = make_relay(next_hop(sink.port))
    with relay.client() as client:
        client.ehlo()
        assert client.mail("alice@example.com")[0] == 250
        assert client.rcpt("gone@example.org") == (550, b"5.1.1 sink: no such user")
        assert client.rcpt("busy@example.org") == (450, b"4.2.1 sink: mailbox busy")
        assert client.rcpt("bob@example.org") == (250, b"2.1.5 sink: <bob@example.org> ok")
        assert client.data(message())[0] == 250
    [got] = sink.wait_for(1)
    assert got.rcpt_tos == ("bob@example.org",)


def test_next_hop_down_is_a_temporary_failure(make_relay):
    relay = make_relay(next_hop(free_port()))
    with relay.client() as client:
        client.ehlo()
        code, text = client.mail("alice@example.com")
    assert code == 451
    assert text.startswith(b"4.4.1 Next hop 127.0.0.1:")


def test_slow_next_hop_times_out_as_a_temporary_failure(make_relay, sink):
    sink.faults.delay = 3.0
    relay = make_relay(next_hop(sink.port, timeout=1))
    with relay.client() as client:
        client.ehlo()
        code, text = client.mail("alice@example.com")
    assert code == 451
    assert b"timed out" in text


def test_next_hop_dropping_mid_data_never_gets_250(make_relay, sink):
    sink.faults.drop_mid_data = True
    relay = make_relay(next_hop(sink.port))
    with relay.client() as client:
        code, text = send(client, message(body="x" * 500 + "\r\n"))
    assert code == 451
    assert text.startswith(b"4.4.2")
    assert sink.received == []


@pytest.mark.parametrize("reply", ["554 5.6.0 sink: content refused", "452 4.3.1 sink: full"])
def test_next_hop_final_refusal_reaches_the_client(make_relay, sink, reply):
    sink.faults.data = reply
    relay = make_relay(next_hop(sink.port))
    with relay.client() as client:
        code, text = send(client, message())
    assert f"{code} {text.decode()}" == reply


def test_engine_that_cannot_answer_means_451(make_relay, sink, pack):
    not_running = ScanPool(pack)  # never started: every scan is an engine failure
    relay = make_relay(next_hop(sink.port), scanner=not_running)
    with relay.client() as client:
        code, text = send(client, message())
    assert code == 451
    assert text.startswith(b"4.3.0")
    assert sink.received == []


def test_fail_open_relays_when_the_engine_cannot_answer(make_relay, sink, pack):
    relay = make_relay({**next_hop(sink.port), "fail_open": True}, scanner=ScanPool(pack))
    with relay.client() as client:
        assert send(client, message("reject-me"))[0] == 250
    assert len(sink.wait_for(1)) == 1


def test_without_next_hop_mail_goes_to_the_outbox(make_relay):
    relay = make_relay()
    raw = message("hello outbox")
    with relay.client() as client:
        code, text = send(client, raw, rcpts=("bob@example.org", "carol@example.net"))
    assert code == 250
    assert b"outbox" in text
    [path] = relay.outbox_files()
    content = path.read_bytes()
    assert content.startswith(
        b"Return-Path: <alice@example.com>\r\n"
        b"X-Envelope-To: <bob@example.org>\r\nX-Envelope-To: <carol@example.net>\r\n"
        b"Received: from client.example.test"
    )
    assert content.endswith(raw)
    assert list((relay.config.relay.outbox / ".tmp").iterdir()) == []


def test_size_is_advertised_and_enforced(make_relay, sink):
    relay = make_relay({**next_hop(sink.port), "max_message_size": 10_000})
    with relay.client() as client:
        client.ehlo()
        assert client.esmtp_features["size"] == "10000"
        assert client.mail("alice@example.com", ["SIZE=20000"])[0] == 552
        client.rset()
        code, text = send(client, message(body="y" * 76 + "\r\n") * 200)
        assert code == 552
        assert text.startswith(b"5.3.4")
        # The oversized DATA was read to its end: the session carries on.
        assert send(client, message("small"))[0] == 250
    assert len(sink.wait_for(1)) == 1
    assert b"small" in sink.received[0].content


def test_line_and_header_limits(make_relay, sink):
    relay = make_relay({**next_hop(sink.port), "max_line_length": 1000, "max_header_size": 2000})
    with relay.client() as client:
        code, text = send(client, message(body="z" * 1200 + "\r\n"))
        assert (code, text[:5]) == (554, b"5.6.0")
        big_header = [(f"X-Filler-{n}", "h" * 900) for n in range(3)]
        code, text = send(client, message(extra_headers=big_header))
        assert (code, text[:5]) == (552, b"5.3.4")
    assert sink.received == []


def test_too_many_recipients(make_relay, sink):
    relay = make_relay({**next_hop(sink.port), "max_recipients": 2})
    with relay.client() as client:
        client.ehlo()
        client.mail("alice@example.com")
        assert client.rcpt("a@example.org")[0] == 250
        assert client.rcpt("b@example.org")[0] == 250
        assert client.rcpt("c@example.org") == (452, b"4.5.3 Too many recipients")


def test_sender_outside_accepted_domains_is_refused_at_mail(make_relay, sink):
    domains = ["example.com", "*.corp.example"]
    relay = make_relay({**next_hop(sink.port), "accepted_domains": domains})
    with relay.client() as client:
        client.ehlo()
        code, text = client.mail("mallory@elsewhere.example")
        assert code == 550
        assert text.startswith(b"5.7.1 Sender domain")
        assert client.mail("eve@dept.corp.example")[0] == 250
        client.rset()
        assert client.mail("")[0] == 250  # the null sender (bounces) is not a domain


@pytest.mark.parametrize(
    ("given", "passed_on"),
    [
        ("<@hop1.example,@hop2.example:bob@example.org>", "bob@example.org"),
        ("<bob%other.example@example.org>", "bob%other.example@example.org"),
        ('<"bob@evil.example"@example.org>', '"bob@evil.example"@example.org'),
    ],
)
def test_relay_tricks_go_only_where_written(make_relay, sink, given, passed_on):
    relay = make_relay(next_hop(sink.port))
    with relay.client() as client:
        client.ehlo()
        client.mail("alice@example.com")
        code, _ = client.docmd("RCPT", f"TO:{given}")
        assert code == 250
        assert client.data(message())[0] == 250
    [got] = sink.wait_for(1)
    assert got.rcpt_tos == (passed_on,)


@pytest.mark.parametrize("address", ["<a!b!user>", "<postmaster>", "<us..er@example.org>"])
def test_addresses_without_domain_or_bad_syntax_get_553(make_relay, sink, address):
    relay = make_relay(next_hop(sink.port))
    with relay.client() as client:
        client.ehlo()
        client.mail("alice@example.com")
        code, text = client.docmd("RCPT", f"TO:{address}")
    assert code == 553
    assert text.startswith(b"5.1.3")


def test_smtputf8_addresses_pass_through(make_relay, sink):
    relay = make_relay(next_hop(sink.port))
    raw = "From: <ålice@exämple.com>\r\nSubject: grüße\r\n\r\nÄpfel\r\n".encode()
    with relay.client() as client:
        client.ehlo()
        assert client.has_extn("smtputf8") and client.has_extn("8bitmime")
        assert client.mail("ålice@exämple.com", ["SMTPUTF8", "BODY=8BITMIME"])[0] == 250
        assert client.rcpt("jürgen@example.org")[0] == 250
        assert client.data(raw)[0] == 250
    [got] = sink.wait_for(1)
    assert got.mail_from == "ålice@exämple.com"
    assert got.rcpt_tos == ("jürgen@example.org",)
    assert "SMTPUTF8" in got.options
    assert got.content.endswith(raw)


def test_8bit_mail_is_refused_when_the_next_hop_lacks_8bitmime(make_relay, bg):
    seven_bit = SmtpSink(bg, extensions_off=("8BITMIME",)).start()
    try:
        relay = make_relay(next_hop(seven_bit.port))
        with relay.client() as client:
            client.ehlo()
            code, text = client.mail("alice@example.com", ["BODY=8BITMIME"])
            assert code == 554 and text.startswith(b"5.6.3")
            assert client.mail("alice@example.com")[0] == 250  # 7-bit mail still goes
    finally:
        seven_bit.stop()


def test_non_ascii_address_without_smtputf8_is_refused(make_relay, sink):
    relay = make_relay(next_hop(sink.port))
    with relay.client() as client:
        client.ehlo()
        client.mail("alice@example.com")
        client.command_encoding = "utf-8"
        code, text = client.docmd("RCPT", "TO:<jürgen@example.org>")
    assert code == 553
    assert text.startswith(b"5.6.7")


def test_next_hop_sessions_are_pooled_across_clients(make_relay, sink):
    relay = make_relay(next_hop(sink.port))
    for n in range(3):
        with relay.client() as client:
            assert send(client, message(f"pooled {n}"))[0] == 250
            client.mail("alice@example.com")
            client.rcpt("bob@example.org")
            client.rset()  # an abandoned transaction: the pooled session must be reset
    assert len(sink.wait_for(3)) == 3
    assert sink.connections == 1


def test_pooled_session_closed_by_next_hop_is_replaced(make_relay, sink):
    relay = make_relay(next_hop(sink.port))
    with relay.client() as client:
        assert send(client, message("one"))[0] == 250
    sink.drop_connections()  # as a next hop does with a connection idle for too long
    with relay.client() as client:
        assert send(client, message("two"))[0] == 250
    assert len(sink.wait_for(2)) == 2
    assert sink.connections == 2


def test_pipelined_commands_get_replies_in_order(make_relay, sink):
    relay = make_relay(next_hop(sink.port))
    with relay.client() as client:
        client.ehlo()
        assert client.has_extn("pipelining")
        assert not client.has_extn("auth")
        client.send(
            b"MAIL FROM:<alice@example.com>\r\nRCPT TO:<bob@example.org>\r\n"
            b"RCPT TO:<carol@example.org>\r\nDATA\r\n"
        )
        assert [client.getreply()[0] for _ in range(4)] == [250, 250, 250, 354]
        client.send(message() + b".\r\nNOOP\r\n")
        assert client.getreply()[0] == 250
        assert client.getreply()[0] == 250  # the NOOP sent right behind the final dot
    [got] = sink.wait_for(1)
    assert got.rcpt_tos == ("bob@example.org", "carol@example.org")


def test_dot_stuffing_is_undone_once(make_relay, sink):
    relay = make_relay(next_hop(sink.port))
    with relay.client() as client:
        assert send(client, message(body=".leading dot\r\n..two dots\r\n.\r\n"))[0] == 250
    [got] = sink.wait_for(1)
    # smtplib stuffed each line; the next hop sees the lines as written.
    assert got.content.endswith(b"\r\n\r\n.leading dot\r\n..two dots\r\n.\r\n")

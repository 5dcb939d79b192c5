"""The relay when something goes wrong, over real sockets: a store that cannot write, a next
hop whose TLS or recipients fail, TLS offered but not used, slow or vanishing clients, and a
stop in the middle of a transaction. Each promise holds: no 250 for mail not delivered or
held, nothing sent twice, no session left holding its slot."""

from __future__ import annotations

import json
import shutil
import socket
import ssl
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from mailgate.relay.release import release_message
from tests.support.background_loop import BackgroundLoop
from tests.support.certs import SERVER_NAME, KeyPair, Pki
from tests.support.relay_harness import tls_relay_settings
from tests.support.samples import message
from tests.support.smtp_client import send
from tests.support.smtp_sink import SmtpSink
from tests.support.waiting import wait_until

pytestmark = pytest.mark.timeout(90)


def next_hop(port: int, **settings: Any) -> dict[str, Any]:
    return {
        "next_hop": {"host": "127.0.0.1", "port": port, "tls": "none", "timeout": 5, **settings}
    }


def replace_folder_with_a_file(folder) -> None:
    """A store whose writes fail the way a full or broken disk makes them (we run as root,
    so permissions would not stop a write)."""
    shutil.rmtree(folder)
    folder.write_text("not a folder")


# --- the stores ---------------------------------------------------------------------------


def test_quarantine_that_cannot_write_means_451(make_relay, sink):
    relay = make_relay(next_hop(sink.port))
    replace_folder_with_a_file(relay.store.tmp_dir)
    with relay.client() as client:
        code, text = send(client, message("quarantine-me now"))
        assert (code, text) == (451, b"4.3.0 Message could not be held, try again later")
        assert send(client, message("fine"))[0] == 250  # the session goes on
    assert [m.message["Subject"] for m in sink.wait_for(1)] == ["fine"]
    assert relay.store.list() == []


def test_outbox_that_cannot_write_means_451(make_relay):
    relay = make_relay()  # no next hop: the outbox
    replace_folder_with_a_file(relay.config.relay.outbox / ".tmp")
    with relay.client() as client:
        code, text = send(client, message("hello outbox"))
    assert code == 451
    assert text.startswith(b"4.3.0")
    assert relay.outbox_files() == []


# --- the next hop ---------------------------------------------------------------------------


def test_a_copy_a_rule_adds_that_the_next_hop_refuses_means_451(make_relay, sink):
    sink.faults.rcpt = {"archive@example.org": "550 5.1.1 sink: no such user"}
    relay = make_relay(next_hop(sink.port))
    with relay.client() as client:
        code, text = send(client, message("copy-me please"))
        assert code == 451
        assert text.startswith(b"4.3.0 Required copy to <archive@example.org> refused: 550")
        assert send(client, message("fine"))[0] == 250
    [got] = sink.wait_for(1)  # the refused one went nowhere, not even to bob
    assert got.message["Subject"] == "fine"
    assert got.rcpt_tos == ("bob@example.org",)


class FailingTLSSink(SmtpSink):
    """A next hop that offers STARTTLS but whose handshake no client of ours completes:
    `old` speaks nothing newer than TLS 1.1; otherwise it demands a client certificate,
    which under TLS 1.3 fails only once the client has finished its side."""

    def __init__(self, loop: BackgroundLoop, pki: Pki, old: bool) -> None:
        super().__init__(loop, tls=(pki.right_name.cert, pki.right_name.key))
        assert self._tls is not None
        if old:
            self._tls.maximum_version = ssl.TLSVersion.TLSv1_1
        else:
            self._tls.verify_mode = ssl.CERT_REQUIRED
            self._tls.load_verify_locations(cafile=str(pki.ca))


# A next hop that speaks only TLS 1.1, as old appliances do: naming it is deprecated.
old_tls = pytest.mark.filterwarnings("ignore:ssl.TLSVersion.TLSv1_1 is deprecated")


@old_tls
@pytest.mark.parametrize("old", [True, False], ids=["old-protocol", "client-cert-required"])
def test_opportunistic_tls_that_fails_falls_back_to_plain(make_relay, bg, pki, old):
    failing = FailingTLSSink(bg, pki, old).start()
    try:
        relay = make_relay(next_hop(failing.port, tls="opportunistic"))
        with relay.client() as client:
            code, text = send(client, message())
        assert code == 250, text
        [got] = failing.wait_for(1)
        assert not got.tls  # sent in clear, as opportunistic TLS means
        assert failing.connections == 2  # the failed upgrade, then a plain session
    finally:
        failing.stop()


@old_tls
@pytest.mark.parametrize("old", [True, False], ids=["old-protocol", "client-cert-required"])
def test_required_tls_that_fails_never_falls_back(make_relay, bg, pki, old):
    failing = FailingTLSSink(bg, pki, old).start()
    try:
        relay = make_relay(next_hop(failing.port, tls="required"))
        with relay.client() as client:
            code, _ = send(client, message())
        assert code == 451
        assert failing.received == []
    finally:
        failing.stop()


@pytest.fixture(name="tls_sink")
def tls_sink_fixture(bg: BackgroundLoop, pki: Pki, request: pytest.FixtureRequest):
    pair: KeyPair = getattr(pki, request.param)
    started = SmtpSink(bg, tls=(pair.cert, pair.key)).start()
    yield started
    started.stop()


@pytest.mark.parametrize(
    ("tls_sink", "released"), [("right_name", True), ("wrong_name", False)], indirect=["tls_sink"]
)
def test_release_to_with_tls_verifies_and_encrypts(make_relay, sink, tls_sink, pki, released):
    release_to = {
        "host": "127.0.0.1",
        "port": tls_sink.port,
        "tls": "verify_name",
        "tls_name": SERVER_NAME,
        "ca": str(pki.ca),
        "timeout": 5,
    }
    relay = make_relay(
        next_hop(sink.port), quarantine={"path": "quarantine", "release_to": release_to}
    )
    with relay.client() as client:
        code, text = send(client, message("quarantine-me please"))
    assert code == 250, text
    qid = text.decode().rsplit(" ", 1)[-1]
    result = release_message(relay.config, relay.store, qid, actor="admin")
    assert result.released is released, result.reply
    if released:
        [got] = tls_sink.wait_for(1)
        assert got.tls
        assert relay.store.get(qid).state == "released"
    else:
        assert "4.7.5" in result.reply  # the name does not match: nothing sent in clear
        assert tls_sink.received == []
        assert relay.store.get(qid).state == "held"
    assert sink.received == []  # the release did not take the relay's own next hop


# --- the client ---------------------------------------------------------------------------


def test_tls_offered_but_not_required_serves_a_plain_client(make_relay, pki, sink):
    relay = make_relay(tls_relay_settings(pki, sink.port))
    with relay.client() as client:
        client.ehlo()
        assert client.has_extn("starttls")
        assert send(client, message())[0] == 250
    [got] = sink.wait_for(1)
    assert b"with ESMTP id" in got.content
    assert b"(using TLS" not in got.content


def connection_closed(sock: socket.socket, drip: bytes = b"", bound: float = 15.0) -> bool:
    """Send `drip` every 0.3 s (nothing if empty) until the relay closes the connection;
    False if it is still open after `bound` seconds."""
    sock.settimeout(0.3)
    end = time.monotonic() + bound
    while time.monotonic() < end:
        try:
            if drip:
                sock.sendall(drip)
            if sock.recv(4096) == b"":
                return True
        except TimeoutError:
            continue
        except OSError:  # reset, or a write after the close
            return True
    return False


def test_data_timeout_cuts_off_a_client_dripping_its_message(make_relay, sink):
    relay = make_relay({**next_hop(sink.port), "data_timeout": 1, "idle_timeout": 60})
    client = relay.client()
    try:
        client.ehlo()
        assert client.mail("alice@example.com")[0] == 250
        assert client.rcpt("bob@example.org")[0] == 250
        assert client.docmd("DATA")[0] == 354
        # Each line resets no timer: the whole transfer has one deadline (idle is 60 s).
        assert connection_closed(client.sock, drip=b"X-Drip: one more line\r\n")
    finally:
        client.close()
    wait_until(lambda: not relay.relay.sessions, 10, "the session to end")
    assert sink.received == []


def test_idle_timeout_ends_a_silent_session_and_its_transaction(make_relay, sink):
    relay = make_relay({**next_hop(sink.port), "idle_timeout": 1})
    client = relay.client()
    try:
        client.ehlo()
        assert client.mail("alice@example.com")[0] == 250  # a next-hop session is open
        assert client.rcpt("bob@example.org")[0] == 250
        assert connection_closed(client.sock)
    finally:
        client.close()
    wait_until(lambda: not relay.relay.sessions, 10, "the session to end")
    with relay.client() as again:  # the next hop's session came back usable
        assert send(again, message())[0] == 250
    assert len(sink.wait_for(1)) == 1


def test_idle_timeout_ends_a_stalled_starttls_handshake(make_relay, pki, sink):
    relay = make_relay({**tls_relay_settings(pki, sink.port), "idle_timeout": 1})
    client = relay.client()
    try:
        client.ehlo()
        assert client.docmd("STARTTLS")[0] == 220
        # No ClientHello: aiosmtpd's timeout closed the TLS layer, which then never told
        # the session the connection was gone, and it waited for a command forever.
        assert connection_closed(client.sock)
    finally:
        client.close()
    wait_until(lambda: not relay.relay.sessions, 10, "the session to end")


def test_graceful_stop_finishes_the_message_in_flight(make_relay, sink):
    sink.faults.delay = 0.3  # every next-hop reply: the transaction is in flight a while
    relay = make_relay(next_hop(sink.port))
    waiting = relay.client()  # a transaction that has not reached DATA: it is not waited for
    waiting.ehlo()
    assert waiting.mail("alice@example.com")[0] == 250
    with ThreadPoolExecutor(1) as sender, relay.client() as client:
        reply = sender.submit(send, client, message("in flight"))
        wait_until(lambda: any(s.busy for s in relay.relay.sessions), 30, "DATA in flight")
        relay.loop.run(relay.relay.stop(grace=20))
        assert reply.result(30)[0] == 250  # it was delivered, and the client was told
    assert [m.message["Subject"] for m in sink.wait_for(1)] == ["in flight"]
    assert connection_closed(waiting.sock, bound=5)
    waiting.close()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", relay.port), timeout=5)


def test_a_client_leaving_after_its_final_dot_still_gets_its_message_delivered_once(
    make_relay, sink, tmp_path
):
    relay = make_relay(next_hop(sink.port), audit={"path": str(tmp_path / "audit.jsonl")})
    # The readiness probe's next-hop session is in the pool: the transaction takes it.
    wait_until(lambda: relay.relay.next_hop_answered, 10, "the next hop to answer")
    client = relay.client()
    client.ehlo()
    assert client.mail("alice@example.com")[0] == 250
    assert client.rcpt("bob@example.org")[0] == 250
    sink.faults.delay = 0.3  # the next hop takes its time over the message
    assert client.docmd("DATA")[0] == 354
    client.send(message("left early") + b".\r\n")
    client.close()  # gone before the reply
    [got] = sink.wait_for(1)
    assert got.message["Subject"] == "left early"
    audit = tmp_path / "audit.jsonl"
    wait_until(lambda: audit.exists() and audit.read_text().strip(), 10, "the audit record")
    [record] = [json.loads(line) for line in audit.read_text().splitlines()]
    assert record["action"] == "accept"
    assert record["outcome"]["reply"].startswith("250")
    with relay.client() as again:
        assert send(again, message("next"))[0] == 250
    assert [m.message["Subject"] for m in sink.wait_for(2)] == ["left early", "next"]
    assert sink.connections == 1  # the abandoned transaction's next-hop session was reused

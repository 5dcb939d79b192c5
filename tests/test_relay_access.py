"""Who may relay (accept_from and client certificates, every combination) and who may hold a
connection slot: clients without an accepted certificate get a short deadline and a small
share of the slots per address, so a crowd of them cannot lock out the certified client."""

from __future__ import annotations

import contextlib
import ipaddress
import smtplib
import socket
import time
from collections.abc import Iterator

import pytest

from mailgate.filter.ops.config import ConfigError
from mailgate.relay.server import client_key
from tests.support.certs import CLIENT_NAME, KeyPair, Pki, client_context
from tests.support.relay_harness import tls_relay_settings, write_config
from tests.support.samples import message
from tests.support.smtp_client import send
from tests.support.smtp_sink import SmtpSink
from tests.support.waiting import wait_until

pytestmark = pytest.mark.timeout(90)


def certificate_relay(
    make_relay, pki: Pki, sink: SmtpSink, deadline: float = 20.0, **relay: object
):
    tls = {"client_ca": str(pki.ca), "client_names": [CLIENT_NAME]}
    started = make_relay(
        {
            **tls_relay_settings(pki, sink.port, **tls, client_cert_timeout=deadline),
            "accept_from": ["127.0.0.1/32"],
            **relay,
        }
    )
    return started


def try_relaying(
    relay, pki: Pki, source: str, cert: KeyPair | None, starttls: bool
) -> tuple[int, bytes]:
    """The first refusal on the way to a delivered message, or the final reply."""
    try:
        client = relay.client(source=source)
    except smtplib.SMTPConnectError as refused:
        return refused.smtp_code, refused.smtp_error
    with client:
        client.ehlo()
        if starttls:
            client.starttls(context=client_context(pki, cert))
            client.ehlo()
        return send(client, message())


# (source, certificate, STARTTLS?, expected reply code, expected text start)
WITH_CLIENT_NAMES = [
    ("127.0.0.1", None, False, 550, b"5.7.1 Relaying denied: a client certificate is required"),
    ("127.0.0.1", None, True, 550, b"5.7.1 Relaying denied: a client certificate is required"),
    ("127.0.0.1", "client_other", True, 550, b"5.7.1 Relaying denied: certificate name intruder"),
    ("127.0.0.1", "client", True, 250, b""),
    ("127.0.0.2", "client", True, 554, b"127.0.0.2 is not allowed to relay"),
    ("127.0.0.2", None, False, 554, b"127.0.0.2 is not allowed to relay"),
]


@pytest.mark.parametrize(
    ("source", "cert", "starttls", "code", "text"),
    WITH_CLIENT_NAMES,
    ids=[f"{s}-{c or 'nocert'}-{'tls' if t else 'plain'}" for s, c, t, _, _ in WITH_CLIENT_NAMES],
)
def test_with_client_names_both_network_and_certificate_are_required(
    make_relay, pki, sink, source, cert, starttls, code, text
):
    relay = certificate_relay(make_relay, pki, sink)
    got = try_relaying(relay, pki, source, getattr(pki, cert) if cert else None, starttls)
    assert got[0] == code, got
    assert text in got[1]
    assert len(sink.received) == (1 if code == 250 else 0)


@pytest.mark.parametrize(
    ("source", "code"), [("127.0.0.1", 250), ("127.0.0.2", 554)], ids=["inside", "outside"]
)
def test_without_client_names_the_network_alone_decides(make_relay, pki, sink, source, code):
    relay = make_relay({**tls_relay_settings(pki, sink.port), "accept_from": ["127.0.0.1/32"]})
    assert try_relaying(relay, pki, source, None, starttls=True)[0] == code


def test_client_ca_without_client_names_is_a_configuration_error(tmp_path, pack, pki, sink):
    with pytest.raises(ConfigError, match="client_ca needs client_names"):
        write_config(tmp_path, pack, tls_relay_settings(pki, sink.port, client_ca=str(pki.ca)))


# --- connection slots ------------------------------------------------------------------------


def read_reply(sock: socket.socket) -> bytes:
    """One whole (possibly multi-line) reply; b'' when the relay closed the connection."""
    data = b""
    while True:
        chunk = sock.recv(4096)
        if not chunk:
            return data
        data += chunk
        lines = data.split(b"\r\n")
        if len(lines) > 1 and lines[-2][3:4] == b" ":
            return data


class CertlessClient:
    """A raw client that connects, says EHLO and then only ever NOOPs."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.greeting = read_reply(self.sock)
        self.last = self.greeting
        if self.greeting.startswith(b"220"):
            self.command(b"EHLO attacker.example.test")

    def command(self, line: bytes) -> bytes:
        try:
            self.sock.sendall(line + b"\r\n")
            self.last = read_reply(self.sock)
        except OSError:
            self.last = b""
        return self.last

    @property
    def open(self) -> bool:
        return self.last.startswith(b"250")


@pytest.fixture(name="crowd")
def crowd_fixture() -> Iterator[list[CertlessClient]]:
    clients: list[CertlessClient] = []
    yield clients
    for client in clients:
        client.sock.close()


def test_certless_clients_cannot_lock_out_the_certified_client(make_relay, pki, sink, crowd):
    relay = certificate_relay(make_relay, pki, sink, max_connections=8, idle_timeout=60)
    for _ in range(30):  # far more than max_connections, all from 127.0.0.1
        crowd.append(CertlessClient(relay.port))
        for client in crowd:
            if client.open:
                client.command(b"NOOP")
    holding = [c for c in crowd if c.open and c.command(b"NOOP").startswith(b"250")]
    # Each client address gets a small share of the slots while it has no certificate.
    assert 0 < len(holding) <= 2
    assert any(c.last.startswith(b"421 4.7.0") or c.greeting.startswith(b"421") for c in crowd)
    with relay.client() as client:
        client.ehlo()
        client.starttls(context=client_context(pki, pki.client))
        client.ehlo()
        assert client.mail("alice@example.com")[0] == 250
        assert client.rcpt("bob@example.org")[0] == 250
        assert client.data(message())[0] == 250
    assert len(sink.wait_for(1)) == 1


def test_an_ipv6_client_has_one_share_for_its_whole_64() -> None:
    # One host gets a /64: counted by address, it would have 2**64 shares of the slots.
    ip = ipaddress.ip_address
    assert client_key(ip("2001:db8:1:2::1")) == client_key(ip("2001:db8:1:2:ffff::9"))
    assert client_key(ip("2001:db8:1:2::1")) != client_key(ip("2001:db8:1:3::1"))
    assert client_key(ip("192.0.2.1")) != client_key(ip("192.0.2.2"))


def test_noop_does_not_extend_the_deadline_for_a_certificate(make_relay, pki, sink):
    relay = certificate_relay(make_relay, pki, sink, deadline=1.0, idle_timeout=60)
    client = CertlessClient(relay.port)
    try:
        replies = []
        end = time.monotonic() + 20  # bound only: the deadline is 1 s, idle_timeout 60 s
        while time.monotonic() < end:
            replies.append(client.command(b"NOOP"))
            if not replies[-1].startswith(b"250"):
                break
            time.sleep(0.2)
        assert replies[-1].startswith(b"421 4.7.0"), replies[-3:]
        assert b"client certificate" in replies[-1]
        assert len(replies) > 2  # NOOPs were answered until the deadline, then no more
    finally:
        client.sock.close()


def test_a_certified_session_outlives_the_deadline(make_relay, pki, sink):
    relay = certificate_relay(make_relay, pki, sink, deadline=1.0, idle_timeout=60)
    with relay.client() as client:
        client.ehlo()
        client.starttls(context=client_context(pki, pki.client))
        client.ehlo()
        time.sleep(1.5)  # past the certificate deadline: it no longer applies
        assert client.noop()[0] == 250
        assert client.mail("alice@example.com")[0] == 250
        assert client.rcpt("bob@example.org")[0] == 250
        assert client.data(message())[0] == 250
    assert len(sink.wait_for(1)) == 1


def test_a_stalled_handshake_is_cut_at_the_deadline(make_relay, pki, sink):
    relay = certificate_relay(make_relay, pki, sink, deadline=1.0, idle_timeout=60)
    client = CertlessClient(relay.port)
    try:
        assert client.command(b"STARTTLS").startswith(b"220")
        # No ClientHello follows: without the deadline the slot would be held for 60 s.
        client.sock.settimeout(20)
        with contextlib.suppress(ConnectionResetError):
            assert client.sock.recv(100) == b""
        wait_until(lambda: not relay.relay.sessions, 10, "the session to end")  # slot back
    finally:
        client.sock.close()

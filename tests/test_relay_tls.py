"""TLS on both sides with trustme certificates, the open-relay checks, and `mailgate relay
--check-next-hop` (who may relay with a client certificate: test_relay_access)."""

from __future__ import annotations

import smtplib
import ssl

import pytest

from tests.support.background_loop import BackgroundLoop
from tests.support.certs import CLIENT_NAME, SERVER_NAME, KeyPair, Pki, client_context
from tests.support.cli import run_in_process
from tests.support.relay_harness import tls_relay_settings, write_config
from tests.support.samples import message
from tests.support.smtp_client import send, send_to
from tests.support.smtp_sink import SmtpSink

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(name="tls_sink")
def tls_sink_fixture(bg: BackgroundLoop, pki: Pki, request: pytest.FixtureRequest):
    pair: KeyPair | None = getattr(pki, request.param) if request.param else None
    sink = SmtpSink(bg, tls=(pair.cert, pair.key) if pair else None).start()
    yield sink
    sink.stop()


def hop(sink: SmtpSink, pki: Pki, mode: str) -> dict:
    settings: dict = {"host": "127.0.0.1", "port": sink.port, "tls": mode, "timeout": 5}
    if mode in ("verify_ca", "verify_name"):
        settings["ca"] = str(pki.ca)
    if mode == "verify_name":
        settings["tls_name"] = SERVER_NAME
    return {"next_hop": settings}


# (mode, the next hop's certificate or None for no STARTTLS, delivered?, encrypted?)
CASES = [
    ("none", "right_name", True, False),
    ("opportunistic", None, True, False),
    ("opportunistic", "self_signed", True, True),
    ("opportunistic", "expired", True, True),
    ("required", "self_signed", True, True),
    ("required", "expired", True, True),
    ("required", None, False, False),
    ("verify_ca", "right_name", True, True),
    ("verify_ca", "wrong_name", True, True),
    ("verify_ca", "self_signed", False, False),
    ("verify_ca", "expired", False, False),
    ("verify_name", "right_name", True, True),
    ("verify_name", "wrong_name", False, False),
    ("verify_name", "self_signed", False, False),
    ("verify_name", "expired", False, False),
]


@pytest.mark.parametrize(
    ("mode", "tls_sink", "delivered", "encrypted"),
    CASES,
    ids=[f"{m}-{c or 'plain'}" for m, c, _, _ in CASES],
    indirect=["tls_sink"],
)
def test_next_hop_tls_modes(make_relay, pki, tls_sink, mode, delivered, encrypted):
    relay = make_relay(hop(tls_sink, pki, mode))
    code, text = send_to(relay.port, message())
    assert tls_sink.connections >= 1  # the relay did reach the next hop
    if delivered:
        assert code == 250, text
        [got] = tls_sink.wait_for(1)
        assert got.tls is encrypted
        assert tls_sink.mails == [("alice@example.com", encrypted)]
    else:
        # Refused at MAIL, before the client sends any of the message: the sender retries,
        # and the next hop never learned even the envelope, in clear or otherwise.
        assert code == 451
        assert text.startswith(b"4.7.5")
        assert tls_sink.mails == []


def test_inbound_starttls_required_before_mail(make_relay, pki, sink):
    relay = make_relay(tls_relay_settings(pki, sink.port, require=True))
    with relay.client() as client:
        client.ehlo()
        assert client.has_extn("starttls")
        assert client.mail("alice@example.com")[0] == 530
        client.starttls(context=client_context(pki))
        client.ehlo()
        assert send(client, message())[0] == 250
    [got] = sink.wait_for(1)
    assert b"with ESMTPS id" in got.content
    assert b"(using TLSv1." in got.content


def test_starttls_inside_tls_is_a_bad_sequence(make_relay, pki, sink):
    relay = make_relay(tls_relay_settings(pki, sink.port))
    with relay.client() as client:
        client.ehlo()
        client.starttls(context=client_context(pki))
        client.ehlo()
        assert not client.has_extn("starttls")
        # RFC 3207 4.2: no second handshake inside the first (aiosmtpd answered 220).
        assert client.docmd("STARTTLS") == (503, b"5.5.1 Error: TLS already active")
        assert send(client, message())[0] == 250  # the session goes on, still encrypted
    [got] = sink.wait_for(1)
    assert b"with ESMTPS id" in got.content


def client_cert_relay(make_relay, pki, sink):
    return make_relay(
        {
            **tls_relay_settings(pki, sink.port, client_ca=str(pki.ca), client_names=[CLIENT_NAME]),
            "accept_from": ["127.0.0.1/32"],
        }
    )


@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3])
def test_client_certificate_from_an_untrusted_ca_fails_the_handshake(
    make_relay, pki, sink, version
):
    relay = client_cert_relay(make_relay, pki, sink)

    def starttls(cert: KeyPair) -> smtplib.SMTP:
        client = relay.client()
        client.ehlo()
        context = client_context(pki, cert)
        context.minimum_version = context.maximum_version = version
        client.starttls(context=context)
        return client

    with starttls(pki.client) as trusted:  # the same steps with a certificate it trusts
        assert trusted.ehlo()[0] == 250
    if version is ssl.TLSVersion.TLSv1_2:
        # The relay checks the certificate inside the handshake, which it then aborts.
        with pytest.raises(ssl.SSLError):
            starttls(pki.client_untrusted)
    else:
        # TLS 1.3 ends the handshake on the client's side before the server has checked the
        # certificate: the relay's refusal is the end of the connection, before any reply.
        client = starttls(pki.client_untrusted)
        with pytest.raises(smtplib.SMTPServerDisconnected, match="unexpectedly closed"):
            client.ehlo()
        client.close()


def test_open_relay_attempt_from_outside_accept_from_is_refused_at_connect(make_relay, sink):
    relay = make_relay(
        {
            "accept_from": ["127.0.0.1/32"],
            "next_hop": {"host": "127.0.0.1", "port": sink.port, "tls": "none"},
        }
    )
    with pytest.raises(smtplib.SMTPConnectError) as refused:
        relay.client(source="127.0.0.2")
    assert refused.value.smtp_code == 554
    assert b"127.0.0.2 is not allowed to relay" in refused.value.smtp_error
    assert send_to(relay.port, message())[0] == 250  # 127.0.0.1 still may
    assert len(sink.wait_for(1)) == 1
    assert sink.connections == 1  # the refused client never caused a next-hop session


def test_connections_beyond_the_limit_are_turned_away(make_relay, sink):
    relay = make_relay({"max_connections": 2})
    first, second = relay.client(), relay.client()
    try:
        with pytest.raises(smtplib.SMTPConnectError) as refused:
            relay.client()
        assert refused.value.smtp_code == 421
    finally:
        first.close()
        second.close()


@pytest.mark.parametrize("tls_sink", ["right_name"], indirect=True)
def test_check_next_hop_shows_the_certificate_and_passes(tmp_path, pack, pki, tls_sink, capsys):
    config = write_config(tmp_path, pack, hop(tls_sink, pki, "verify_name"))
    result = run_in_process(capsys, "relay", "--config", str(config.source), "--check-next-hop")
    status, out = result.returncode, result.stdout
    assert status == 0, out
    assert "sink.example.test" in out  # banner
    assert "STARTTLS:      offered" in out
    assert "TLS:           TLSv1." in out
    assert "mailgate test CA" in out  # issuer
    assert f"names:         {SERVER_NAME}, 127.0.0.1" in out
    assert "check:         PASS: certificate chain verified; TLSv1." in out
    assert f"name {SERVER_NAME} matches" in out


@pytest.mark.parametrize("tls_sink", ["wrong_name"], indirect=True)
def test_check_next_hop_says_why_the_check_fails(tmp_path, pack, pki, tls_sink, capsys):
    config = write_config(tmp_path, pack, hop(tls_sink, pki, "verify_name"))
    result = run_in_process(capsys, "relay", "--config", str(config.source), "--check-next-hop")
    status, out = result.returncode, result.stdout
    assert status == 1
    assert "names:         wrong.example.test" in out  # still shown, though it fails
    assert "check:         FAIL: 451 4.7.5" in out
    assert "mismatch" in out.lower()

"""Test certificates (trustme): a trusted CA with a server certificate for the right name, one
for a wrong name, an expired one, a self-signed one from an untrusted CA, and client
certificates. All written as PEM files, since the relay's configuration takes paths."""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import trustme

SERVER_NAME = "mx.example.test"
CLIENT_NAME = "exchange.example.test"


@dataclass(frozen=True)
class KeyPair:
    cert: Path
    key: Path


@dataclass(frozen=True)
class Pki:
    ca: Path  # bundle to trust
    right_name: KeyPair  # SERVER_NAME and 127.0.0.1, issued by the trusted CA
    wrong_name: KeyPair  # wrong.example.test, issued by the trusted CA
    expired: KeyPair  # SERVER_NAME, expired yesterday
    self_signed: KeyPair  # SERVER_NAME from a CA nobody trusts
    client: KeyPair  # CLIENT_NAME, issued by the trusted CA
    client_other: KeyPair  # intruder.example.test, issued by the trusted CA
    client_untrusted: KeyPair  # CLIENT_NAME from a CA nobody trusts


def _write(folder: Path, name: str, cert: trustme.LeafCert) -> KeyPair:
    pair = KeyPair(folder / f"{name}.crt", folder / f"{name}.key")
    cert.cert_chain_pems[0].write_to_path(str(pair.cert))
    cert.private_key_pem.write_to_path(str(pair.key))
    return pair


def make_pki(folder: Path) -> Pki:
    folder.mkdir(parents=True, exist_ok=True)
    ca = trustme.CA(organization_name="mailgate test CA")
    rogue = trustme.CA(organization_name="untrusted test CA")
    ca.cert_pem.write_to_path(str(folder / "ca.pem"))
    now = datetime.now(UTC)
    return Pki(
        ca=folder / "ca.pem",
        right_name=_write(folder, "right", ca.issue_cert(SERVER_NAME, "127.0.0.1")),
        wrong_name=_write(folder, "wrong", ca.issue_cert("wrong.example.test")),
        expired=_write(
            folder,
            "expired",
            ca.issue_cert(
                SERVER_NAME,
                not_before=now - timedelta(days=30),
                not_after=now - timedelta(days=1),
            ),
        ),
        self_signed=_write(folder, "selfsigned", rogue.issue_cert(SERVER_NAME)),
        client=_write(folder, "client", ca.issue_cert(CLIENT_NAME)),
        client_other=_write(folder, "client-other", ca.issue_cert("intruder.example.test")),
        client_untrusted=_write(folder, "client-untrusted", rogue.issue_cert(CLIENT_NAME)),
    )


def client_context(pki: Pki, cert: KeyPair | None = None) -> ssl.SSLContext:
    """A client's TLS context trusting the test CA (any server name), presenting `cert`."""
    context = ssl.create_default_context(cafile=str(pki.ca))
    context.check_hostname = False
    if cert is not None:
        context.load_cert_chain(cert.cert, cert.key)
    return context

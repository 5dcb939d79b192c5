"""TLS for both sides of the relay: the inbound STARTTLS context and one client context per
`next_hop.tls` mode (the Exchange Online connector's choices, one to one).

Client certificates (inbound): with `client_ca` set the server asks for a certificate and the
handshake fails on one that does not verify; whether a verified certificate may relay is
decided by its names (`client_names`), see `certificate_names`.
"""

from __future__ import annotations

import ssl
from typing import Any

from mailgate.filter.ops.config import InboundTLS, NextHopTLS, SmtpTarget


class TLSPolicyError(Exception):
    """The next hop cannot satisfy the configured TLS mode (no STARTTLS, bad certificate)."""


def server_context(tls: InboundTLS) -> ssl.SSLContext | None:
    """Context for inbound STARTTLS; None when no certificate is configured."""
    if tls.cert is None or tls.key is None:
        return None
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(tls.cert, tls.key)
    if tls.client_ca is not None:
        # OPTIONAL, not REQUIRED: a client without a certificate still gets STARTTLS and then
        # a clear "relaying denied" at RCPT instead of a bare handshake failure.
        context.verify_mode = ssl.CERT_OPTIONAL
        context.load_verify_locations(cafile=tls.client_ca)
    return context


def client_context(target: SmtpTarget) -> ssl.SSLContext | None:
    """Context for STARTTLS to `target`; None for `tls: none`."""
    mode = target.tls
    if mode is NextHopTLS.NONE:
        return None
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    if mode in (NextHopTLS.OPPORTUNISTIC, NextHopTLS.REQUIRED):
        # Encrypt without verifying: what "opportunistic" and "self-signed" mean in the
        # Exchange connector, and what RFC 7435 calls opportunistic security.
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        return context
    context.verify_mode = ssl.CERT_REQUIRED
    context.check_hostname = mode is NextHopTLS.VERIFY_NAME
    if target.ca is not None:
        context.load_verify_locations(cafile=target.ca)
    else:
        context.load_default_certs(ssl.Purpose.SERVER_AUTH)
    return context


def inspection_context() -> ssl.SSLContext:
    """Accepts any certificate, so `--check-next-hop` can show one that would fail."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


def server_hostname(target: SmtpTarget) -> str | None:
    """SNI and, under verify_name, the name the certificate must carry."""
    if target.tls is NextHopTLS.VERIFY_NAME:
        return target.expected_name
    return target.host


def certificate_names(peercert: dict[str, Any] | None) -> tuple[str, ...]:
    """DNS names of a verified peer certificate (SubjectAltName, else the subject CN), lower
    case. Matching against `client_names` is exact: wildcards in a client certificate do not
    stand for a configured name."""
    if not peercert:
        return ()
    names = [value for kind, value in peercert.get("subjectAltName", ()) if kind == "DNS"]
    if not names:
        names = [
            value
            for rdn in peercert.get("subject", ())
            for key, value in rdn
            if key == "commonName"
        ]
    return tuple(name.lower().rstrip(".") for name in names)


def describe_session(ssl_object: ssl.SSLObject | ssl.SSLSocket | None) -> str | None:
    """'TLSv1.3 TLS_AES_256_GCM_SHA384' for logs and the Received header."""
    if ssl_object is None:
        return None
    cipher = ssl_object.cipher()
    return f"{ssl_object.version()} {cipher[0]}" if cipher else ssl_object.version()

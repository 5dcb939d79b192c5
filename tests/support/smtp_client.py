"""Sending mail as a client does, with smtplib: a session on a loopback port, and one
transaction on it whose replies come back as values (refusals included), never as exceptions."""

from __future__ import annotations

import smtplib
import socket
from collections.abc import Sequence

SENDER = "alice@example.com"
RECIPIENTS = ("bob@example.org",)


def banner(port: int, timeout: float = 5.0) -> bytes:
    """The first bytes a server on 127.0.0.1:`port` sends (its 220 greeting, if it is one)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        return sock.recv(100)


def connect(port: int, source: str = "127.0.0.1", timeout: float = 30.0) -> smtplib.SMTP:
    """A session with 127.0.0.1:`port` from `source` (127.0.0.2 is a foreign host)."""
    return smtplib.SMTP(
        "127.0.0.1",
        port,
        timeout=timeout,
        source_address=(source, 0),
        local_hostname="client.example.test",
    )


def send(
    client: smtplib.SMTP,
    raw: bytes,
    sender: str = SENDER,
    rcpts: Sequence[str] = RECIPIENTS,
) -> tuple[int, bytes]:
    """MAIL, RCPT for each recipient, DATA on an open session (EHLO first if it has had none):
    the first reply that is not a success, or else the final reply to the message."""
    client.ehlo_or_helo_if_needed()
    code, text = client.mail(sender)
    for rcpt in rcpts:
        if code != 250:
            break
        code, text = client.rcpt(rcpt)
    if code == 250:
        try:
            code, text = client.data(raw)
        except smtplib.SMTPDataError as refused:  # DATA itself refused, before the message
            code, text = refused.smtp_code, refused.smtp_error
    return code, text


def send_to(
    port: int,
    raw: bytes,
    sender: str = SENDER,
    rcpts: Sequence[str] = RECIPIENTS,
    timeout: float = 60.0,
) -> tuple[int, bytes]:
    """`send` on a session of its own, as most submitting clients do."""
    with connect(port, timeout=timeout) as client:
        return send(client, raw, sender, rcpts)

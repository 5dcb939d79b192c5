"""The milter door without an MTA: pymilter's own `Milter.testctx.TestCtx` stands in for
libmilter's context and drives the callbacks in the order Postfix does. Needs pymilter: a test
module imports this only after `pytest.importorskip("Milter", reason=skips.NEEDS_PYMILTER,
exc_type=ImportError)`."""

from __future__ import annotations

import io
from collections.abc import Mapping

import Milter
import pytest
from Milter import testctx

from mailgate.filter.milter.door import MilterDoor

# Macros as Postfix sends them: queue id, its own name, the client's login, TLS and address.
MACROS = {
    "i": "4XyZ1",
    "j": "mx.example.net",
    "{auth_authen}": "alice",
    "{tls_version}": "TLSv1.3",
    "{client_addr}": "192.0.2.10",
}


def no_reply_is_continue(monkeypatch: pytest.MonkeyPatch) -> None:
    """TestCtx stops a message at any answer other than CONTINUE; libmilter does not wait for
    the answers of no-reply steps at all. pymilter's own Milter.test does the same."""
    monkeypatch.setattr(Milter, "NOREPLY", Milter.CONTINUE)


def connect(door: MilterDoor, macros: Mapping[str, str] = MACROS) -> testctx.TestCtx:
    """A new connection to the door from client.example.com [192.0.2.10]."""
    Milter.factory = door.factory
    ctx = testctx.TestCtx()
    for name, value in macros.items():
        ctx._setsymval(name, value)
    assert ctx._connect(host="client.example.com", helo="helo.example.com", ip="192.0.2.10") == (
        Milter.CONTINUE
    )
    return ctx


def feed(
    door: MilterDoor, raw: bytes, rcpts: tuple[str, ...] = ("bob@example.org",)
) -> tuple[int, testctx.TestCtx]:
    """One message from alice@example.com through a fresh connection; the door's answer at
    the end of the message and the context (replies, header changes, added recipients)."""
    ctx = connect(door)
    rc = ctx._feedFile(io.BytesIO(raw), "alice@example.com", *rcpts)
    ctx._close()
    return rc, ctx


def header(ctx: testctx.TestCtx, name: str) -> str | None:
    """The header's value after the milter's changes. TestCtx's chgheader appends the new
    value instead of replacing the old one, so the last value is the current one."""
    values = ctx._msg.get_all(name)
    return None if not values else str(values[-1]).strip()

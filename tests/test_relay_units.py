"""The relay's pure pieces: envelope address checks, DATA normalisation, reply texts."""

from __future__ import annotations

import asyncio
import types

import pytest
from aiosmtplib.protocol import PERIOD_REGEX, normalize_message_line_endings
from hypothesis import given
from hypothesis import strategies as st

from mailgate.filter.policy.actions import refusal_for
from mailgate.filter.policy.verdict import Action, Verdict
from mailgate.relay.addresses import AddressRefused, check_recipient, check_sender
from mailgate.relay.nexthop import data_payload
from mailgate.relay.server import DataRefused, RelayHandler, RelaySMTP, normalise


@pytest.mark.parametrize(
    ("given_address", "passed_on"),
    [
        ("bob@example.org", "bob@example.org"),
        ("@a.example,@b.example:bob@example.org", "bob@example.org"),
        ("bob%other.example@example.org", "bob%other.example@example.org"),
        ('"bob@evil.example"@example.org', '"bob@evil.example"@example.org'),
        ("bob@[192.0.2.1]", "bob@[192.0.2.1]"),
    ],
)
def test_recipients_pass_literally(given_address, passed_on):
    assert check_recipient(given_address, smtputf8=False) == passed_on


@pytest.mark.parametrize(
    ("address", "reply_start"),
    [
        ("a!b!user", "553 5.1.3 <a!b!user>: recipient address has no domain"),
        ("user", "553 5.1.3 <user>: recipient address has no domain"),
        ("us..er@example.org", "553 5.1.3 <us..er@example.org>: bad recipient address"),
        ("jürgen@example.org", "553 5.6.7"),
    ],
)
def test_bad_recipients_get_553(address, reply_start):
    with pytest.raises(AddressRefused) as refused:
        check_recipient(address, smtputf8=False)
    assert refused.value.reply.startswith(reply_start)


def test_sender_checks():
    assert check_sender("<>", smtputf8=False) == ""
    assert check_sender("jürgen@exämple.org", smtputf8=True) == "jürgen@exämple.org"
    with pytest.raises(AddressRefused) as refused:
        check_sender("nobody", smtputf8=False)
    assert refused.value.reply.startswith("553 5.1.7")


def test_refusal_text_never_echoes_control_characters():
    with pytest.raises(AddressRefused) as refused:
        check_recipient("a\x07b", smtputf8=False)
    assert "\x07" not in refused.value.reply


@given(st.binary(max_size=2000))
def test_normalise_leaves_only_crlf_line_ends(content):
    try:
        out = normalise(content, max_line_length=10_000, max_header_size=1 << 20)
    except DataRefused:
        return
    assert out.count(b"\r") == out.count(b"\n") == out.count(b"\r\n")
    assert out.replace(b"\r\n", b"") == content.replace(b"\r\n", b"").replace(b"\r", b"").replace(
        b"\n", b""
    )


def test_normalise_limits():
    with pytest.raises(DataRefused, match=r"^554 5\.6\.0"):
        normalise(b"a" * 1000 + b"\r\n", max_line_length=1000, max_header_size=10_000)
    assert normalise(b"a" * 998 + b"\r\n", max_line_length=1000, max_header_size=10_000)
    with pytest.raises(DataRefused, match=r"^552 5\.3\.4"):
        normalise(
            b"X: " + b"a" * 200 + b"\r\n\r\nbody\r\n", max_line_length=1000, max_header_size=100
        )


def test_refusals_use_the_rules_code_or_the_defaults():
    assert str(refusal_for(Verdict(Action.REJECT, reason="No\r\nway"))) == "550 5.7.1 No way"
    assert str(refusal_for(Verdict(Action.TEMPFAIL))).startswith("451 4.7.1 ")
    custom = Verdict(Action.REJECT, reason="Too big", smtp_code=552, smtp_status="5.3.4")
    assert str(refusal_for(custom)) == "552 5.3.4 Too big"
    wrong_class = Verdict(Action.TEMPFAIL, reason="later", smtp_code=550, smtp_status="5.7.1")
    assert str(refusal_for(wrong_class)) == "451 4.7.1 later"


@given(st.lists(st.sampled_from([b"a", b".", b"..", b"\r\n", b"\n", b"\r", b" ", b"\xff"])))
def test_data_payload_is_what_aiosmtplib_would_send(pieces: list[bytes]) -> None:
    """Our DATA payload against aiosmtplib's own (line ends normalised, dots stuffed by
    regex), on text with and without CRLF throughout."""
    message = b"".join(pieces)
    expected = PERIOD_REGEX.sub(b"..", normalize_message_line_endings(message)) + b".\r\n"
    assert data_payload(message) == expected


def test_restricted_dir_keeps_every_command_and_hook() -> None:
    """RelaySMTP and RelayHandler answer dir() with their protocol methods only (aiosmtpd's
    per-connection lookup); aiosmtpd must still find every command and hook."""

    async def build() -> RelaySMTP:
        relay = types.SimpleNamespace()
        relay.handler = RelayHandler(relay)  # type: ignore[arg-type]
        return RelaySMTP(relay, hostname="mx.test")  # type: ignore[arg-type]

    server = asyncio.run(build())
    commands = {n.removeprefix("smtp_") for n in object.__dir__(server) if n.startswith("smtp_")}
    assert set(server._smtp_methods) == commands
    assert {"DATA", "EHLO", "MAIL", "RCPT", "STARTTLS"} <= commands
    handler = server.event_handler
    hooks = {n.removeprefix("handle_") for n in object.__dir__(handler) if n.startswith("handle_")}
    assert set(server._handle_hooks) == hooks
    assert {"EHLO", "MAIL", "RCPT", "DATA", "STARTTLS"} <= hooks

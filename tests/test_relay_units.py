"""The relay's pure pieces: envelope address checks, DATA normalisation, reply texts."""

from __future__ import annotations

import asyncio
import re
import types

import pytest
from aiosmtplib.protocol import PERIOD_REGEX, normalize_message_line_endings
from hypothesis import given
from hypothesis import strategies as st

from mailgate.filter.policy.actions import refusal_for
from mailgate.filter.policy.verdict import Action, Verdict
from mailgate.relay.addresses import AddressRefused, check_recipient, check_sender
from mailgate.relay.lines import longest_crlf_line
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


@given(st.lists(st.sampled_from([b"a", b"bc", b"\r\n", b"\n", b"\r", b"\r\r\n", b"\n\r"])))
def test_longest_crlf_line_reads_line_ends_as_splitlines_does(pieces: list[bytes]) -> None:
    data = b"".join(pieces)
    crlf = data.count(b"\r\n")
    throughout = data.count(b"\r") == data.count(b"\n") == crlf
    expected = max(map(len, data.split(b"\r\n"))) if throughout else None
    assert longest_crlf_line(data) == expected


@given(st.lists(st.sampled_from([b"a" * 7, b"a", b"\r\n", b"\n", b"\r", b"\r\n\r\n"])))
def test_normalise_checks_the_longest_line_whatever_its_end(pieces: list[bytes]) -> None:
    content = b"".join(pieces)
    longest = max(map(len, content.splitlines()), default=0)
    if longest > 8:
        with pytest.raises(DataRefused, match=r"^554 5\.6\.0"):
            normalise(content, max_line_length=10, max_header_size=1 << 20)
    else:
        out = normalise(content, max_line_length=10, max_header_size=1 << 20)
        assert out.splitlines() == content.splitlines()


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


_PATH_PIECES = [*'aZ0.@<> \t\r\n()"!#-_,:\\', "x y", "[1.2.3.4]", "ü", "SIZE=10", "BODY=8BITMIME"]
_pieces = st.lists(st.sampled_from(_PATH_PIECES), max_size=6).map("".join)


def _getaddr_both_ways(arg: str) -> tuple[object, object]:
    """(the relay's answer, the header parser's answer) for one MAIL/RCPT argument."""

    async def both() -> tuple[object, object]:
        relay = types.SimpleNamespace()
        relay.handler = RelayHandler(relay)  # type: ignore[arg-type]
        server = RelaySMTP(relay, hostname="mx.test")  # type: ignore[arg-type]
        fast = server._getaddr(arg)
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr("mailgate.relay.server._SIMPLE_PATH", re.compile(r"(?!)"))
            return fast, server._getaddr(arg)

    return asyncio.run(both())


@given(_pieces, _pieces, _pieces, _pieces)
def test_simple_paths_read_as_the_header_parser_reads_them(
    before: str, local: str, domain: str, after: str
) -> None:
    """`_getaddr` reads the common <local@domain> form itself; for every argument, the answer
    is the one the header parser gives (paths near that form included)."""
    fast, parsed = _getaddr_both_ways(f"{before}<{local}@{domain}>{after}")
    assert fast == parsed


@pytest.mark.parametrize(
    ("arg", "expected"),
    [
        ("<bob@example.org>", ("bob@example.org", "")),
        (" <bob@example.org> SIZE=100", ("bob@example.org", "SIZE=100")),
        ("<a.b-c+d@x.example>\tBODY=8BITMIME", ("a.b-c+d@x.example", "BODY=8BITMIME")),
        ("<a@b> (comment) SIZE=1", ("a@b", "SIZE=1")),  # the parser's way: a comment skipped
        ('"', (None, None)),  # the parser raised IndexError here: now a syntax error
        ("<", (None, None)),
    ],
)
def test_paths_and_parameters(arg: str, expected: tuple[str | None, str | None]) -> None:
    assert _getaddr_both_ways(arg) == (expected, expected)


@pytest.mark.parametrize(
    "arg", ["<bob@example.org>", "<bob@example.org> SIZE=100", "<a.b-c+d@x.example>\tBODY=8BIT"]
)
def test_common_paths_take_the_short_way(arg: str) -> None:
    from mailgate.relay.server import _SIMPLE_PATH

    assert _SIMPLE_PATH.match(arg) is not None

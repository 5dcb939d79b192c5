"""The relay's front door: aiosmtpd sessions in, the engine's verdict out as SMTP replies.

No rule logic lives here. Per message: the next-hop session opens at MAIL (from the pool),
each RCPT is passed on and the client hears the next hop's answer, then DATA is read, judged
by the engine's worker processes, and delivered, held, or refused. A 250 is only ever the next
hop's own final 250, the outbox's durable write, or the quarantine's durable write.

DATA is read in large chunks instead of aiosmtpd's line at a time: only CRLF.CRLF ends it, so
bare LF or CR (SMTP smuggling) never does, and the message is passed on with every line end
made CRLF, so no next hop can find a second message in it either.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import inspect
import ipaddress
import logging
import re
import secrets
import socket
import ssl
import time
from datetime import datetime
from email._header_value_parser import get_addr_spec, get_angle_addr
from email.errors import HeaderParseError
from email.utils import format_datetime
from typing import Any, Protocol

import aiosmtplib
from aiosmtpd.smtp import SMTP, Session, syntax
from aiosmtpd.smtp import Envelope as SMTPEnvelope

from mailgate.filter import (
    Action,
    Envelope,
    Verdict,
    mask_field,
    plan_for,
    refusal_for,
    replies,
)
from mailgate.filter.ops.config import Config
from mailgate.filter.ops.metrics import MetricsServer
from mailgate.filter.ops.notices import SenderNotices
from mailgate.filter.ops.report import Reporter, message_id_of
from mailgate.filter.store.quarantine import QuarantineStore
from mailgate.filter.store.release_mark import find_mark, released_id
from mailgate.relay.addresses import AddressRefused, check_recipient, check_sender
from mailgate.relay.lines import longest_crlf_line
from mailgate.relay.nexthop import NextHopError, NextHopPool, NextHopSession, Reply
from mailgate.relay.outbox import Outbox
from mailgate.relay.tls import TLSPolicyError, certificate_names, describe_session, server_context

log = logging.getLogger("mailgate.relay")

_TERMINATOR = b"\r\n.\r\n"
_READ_ALL = 1 << 30  # StreamReader.read(n) returns what is buffered, up to n
_PROBE_INTERVAL = 5.0  # seconds between next-hop probes until it first answers (readiness)


class Scanner(Protocol):
    """What the relay needs from the engine: filter.pool.ScanPool satisfies it."""

    async def scan(self, raw: bytes, envelope: Envelope) -> Verdict: ...


class DataRefused(Exception):
    """The DATA was read to its end but cannot be taken; `reply` says why, `size` is how many
    bytes the client sent."""

    def __init__(self, reply: str, size: int = 0) -> None:
        super().__init__(reply)
        self.reply = reply
        self.size = size


class RelaySMTP(SMTP):
    """aiosmtpd's SMTP with connect-time policy, chunked DATA reading and per-phase timeouts.
    Connection-level facts live here, not on the Session, which aiosmtpd replaces on STARTTLS."""

    def __init__(self, relay: Relay, **kwargs: Any) -> None:
        self.relay = relay
        self.client_ip: ipaddress.IPv4Address | ipaddress.IPv6Address | None = None
        self.client_cert_names: tuple[str, ...] = ()
        self.nexthop: NextHopSession | None = None  # open from MAIL until the transaction ends
        self.busy = False  # a DATA transaction is being judged or delivered
        # Connection slots (Relay.admit): a client that still owes an accepted certificate
        # holds its slot on a deadline, and gives way first when slots run short.
        self.owes_certificate = False
        self.tls_started = False
        self.connected_at = 0.0
        self.dismissed = False
        self._certificate_deadline: asyncio.TimerHandle | None = None
        self._counted = False
        super().__init__(relay.handler, **kwargs)

    def __dir__(self) -> list[str]:
        """Only the command and AUTH methods. aiosmtpd's constructor finds those by walking
        dir() of the new instance, reading every attribute, on each connection: 80% of the
        cost of a connection's setup (~100 us of a 10 KB message's ~1.3 ms here)."""
        return _protocol_method_names(type(self))

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if not self._counted:
            self._counted = True
            self.relay.sessions.add(self)
            peer = transport.get_extra_info("peername")
            self.client_ip = _ip(peer[0]) if isinstance(peer, tuple) else None
            self.connected_at = asyncio.get_running_loop().time()
        super().connection_made(transport)

    def connection_lost(self, error: Exception | None) -> None:
        if self._counted:
            self._counted = False
            self.relay.sessions.discard(self)
        self.certificate_presented()
        if not self.busy:
            self.relay.handler.end_transaction(self)
        super().connection_lost(error)

    async def _handle_client(self) -> None:
        refusal = self.relay.admit(self)
        if refusal is not None:
            await self.push(refusal)
            assert self.transport is not None
            self.transport.close()
            return
        await super()._handle_client()

    def owe_certificate(self, deadline: float) -> None:
        """Until `deadline` seconds from now, this client must have presented an accepted
        certificate. Unlike the idle timer, no command (NOOP included) extends it."""
        self.owes_certificate = True
        self._certificate_deadline = asyncio.get_running_loop().call_later(
            deadline,
            self.dismiss,
            str(replies.NO_CERTIFICATE_IN_TIME.format(seconds=deadline)),
        )

    def certificate_presented(self) -> None:
        self.owes_certificate = False
        if self._certificate_deadline is not None:
            self._certificate_deadline.cancel()
            self._certificate_deadline = None

    def dismiss(self, reply: str) -> None:
        """Say `reply` and close, whatever the session is doing: its slot is taken back.
        During a TLS handshake nothing can be said; the connection is just closed."""
        if self.dismissed or self.transport is None:
            return
        self.dismissed = True
        log.info("%s: %s", self.client_ip, reply)
        if not self._close_in_handshake():
            self.transport.write(reply.encode() + b"\r\n")
            self.transport.close()

    def _getaddr(self, arg: str) -> tuple[str | None, str | None]:
        """aiosmtpd's address parsing, less the typing.Protocol class it builds on every call
        (a few per cent of the relay's CPU), with the common form read by a regex:
        (address, rest), (None, None) if it does not parse or its local part is too long."""
        if not arg:
            return "", ""
        if (simple := _SIMPLE_PATH.match(arg)) is not None:
            addr, rest = simple.group(1), arg[simple.end() :]
        else:
            try:
                if arg.lstrip().startswith("<"):
                    address, rest = get_angle_addr(arg)
                else:
                    address, rest = get_addr_spec(arg)
                addr = address.addr_spec
            except (HeaderParseError, IndexError):  # IndexError: the parser on '"', '<', ...
                return None, None
        if self.local_part_limit and len(addr.rpartition("@")[0]) > self.local_part_limit:
            return None, None
        return addr, rest

    def _timeout_cb(self) -> None:
        log.info("%s: idle timeout", self.client_ip)
        if not self._close_in_handshake():
            super()._timeout_cb()

    def _close_in_handshake(self) -> bool:
        """Close a connection whose STARTTLS handshake has not finished, and say whether it
        was one. Closing the TLS layer then would end the handshake as if it had succeeded
        and never report the connection lost: the session would wait for a command forever,
        holding its slot. So the socket is aborted and the session ended here."""
        if self._tls_protocol is None or self.session is None or self.session.ssl is not None:
            return False
        assert self._original_transport is not None
        self._original_transport.abort()
        self.connection_lost(None)
        return True

    @syntax("STARTTLS", when="tls_context")
    async def smtp_STARTTLS(self, arg: str) -> None:
        if self._tls_protocol is not None:
            # RFC 3207 4.2: no second STARTTLS in a TLS session (aiosmtpd would start one).
            await self.push(str(replies.TLS_ACTIVE))
            return
        self.tls_started = True
        await super().smtp_STARTTLS(arg)

    async def smtp_DATA(self, arg: str) -> None:
        if await self.check_helo_needed():
            return
        assert self.envelope is not None
        if not self.envelope.rcpt_tos:
            await self.push(str(replies.NEED_RCPT))
            return
        if arg:
            await self.push(str(replies.DATA_SYNTAX))
            return
        await self.push(str(replies.START_DATA))
        limits = self.relay.config.relay
        # One deadline for the whole transfer: a client dripping a byte a minute is cut off.
        self._reset_timeout(limits.data_timeout)
        content = b""
        try:
            content = await self._read_data()
            raw = normalise(content, limits.max_line_length, limits.max_header_size)
        except DataRefused as refused:
            log.info("%s: DATA refused: %s", self.client_ip, refused.reply)
            self.relay.handler.report_refused(
                self, content, refused.size or len(content), refused.reply
            )
            self.relay.handler.end_transaction(self)
            self._set_post_data_state()
            await self._reply_after_data(refused.reply)
            return
        self.envelope.content = raw
        self.envelope.original_content = raw
        # Judging and delivering are bounded by the engine's budget and the next hop's
        # timeouts; the idle timer must not cut the client off while it waits for us.
        assert self._timeout_handle is not None
        self._timeout_handle.cancel()
        status = await self._call_handler_hook("DATA")  # RelayHandler.handle_DATA: a reply
        self._set_post_data_state()
        await self._reply_after_data(status)

    async def _reply_after_data(self, status: str) -> None:
        self._reset_timeout()
        await self.push(status)

    async def _read_data(self) -> bytes:
        """The DATA bytes up to CRLF.CRLF, dot-unstuffed. Bytes after the final dot (pipelined
        commands) go back to the reader. Too much data is read to the end and discarded."""
        reader = self._reader
        limit = self.data_size_limit or 0
        # The leading CRLF stands for the line end before DATA, so ".\r\n" at once is found.
        buf = bytearray(b"\r\n")
        searched = 0
        discarded = 0
        while True:
            chunk = await reader.read(_READ_ALL)
            if not chunk:
                raise ConnectionResetError("connection closed during DATA")
            buf += chunk
            end = buf.find(_TERMINATOR, searched)
            if end >= 0:
                if len(buf) > end + 5:
                    # Nothing is left in the reader's buffer after read(_READ_ALL), so this
                    # puts the pipelined bytes back in their place.
                    reader.feed_data(bytes(buf[end + 5 :]))
                if discarded or (limit and end > limit):
                    raise DataRefused(str(replies.TOO_BIG.format(limit=limit)), discarded + end)
                break
            if limit and len(buf) - 2 > limit:
                # Keep only what could begin the terminator; drop the rest as it comes.
                discarded += len(buf) - 4
                del buf[:-4]
            searched = max(0, len(buf) - 4)
        # RFC 5321 4.5.2: a line starting with "." had one added by the client. Most messages
        # have none: then the message is copied out of the buffer once, and that is all.
        with memoryview(buf) as view:
            if buf.find(b"\r\n.", 0, end + 2) < 0:
                return bytes(view[2 : end + 2])
            return bytes(view[: end + 2]).replace(b"\r\n.", b"\r\n")[2:]


# A path as nearly every client sends it, <dot-atom@dot-atom> then nothing or parameters, is
# read without the header parser, which takes 50-120 us a call: the same (address, rest) as
# get_angle_addr gives (a test compares them); anything else is left to it.
_ATEXT = r"[A-Za-z0-9!#$%&'*+\-/=?^_`{|}~]+"
_DOT_ATOM = rf"{_ATEXT}(?:\.{_ATEXT})*"
_SIMPLE_PATH = re.compile(rf"<({_DOT_ATOM}@{_DOT_ATOM})>(?:[ \t]+(?=[^\s(])|\Z)")


@functools.cache
def _protocol_method_names(cls: type) -> list[str]:
    """What aiosmtpd looks for by name: SMTP commands, AUTH mechanisms and handler hooks."""
    return sorted(name for name in dir(cls) if name.startswith(("smtp_", "auth_", "handle_")))


def normalise(content: bytes, max_line_length: int, max_header_size: int) -> bytes:
    """Every line end CRLF (bare CR and LF included), with the line and header limits checked."""
    longest = longest_crlf_line(content)
    if longest is None or (content and not content.endswith(b"\r\n")):
        lines = content.splitlines()  # bytes split on CRLF, CR and LF alike
        content = b"\r\n".join(lines) + b"\r\n" if lines else b""
        longest = max(map(len, lines), default=0)
    if longest > max_line_length - 2:
        raise DataRefused(str(replies.LINE_TOO_LONG.format(limit=max_line_length)))
    header_end = content.find(b"\r\n\r\n")
    header_size = header_end if header_end >= 0 else len(content)
    if header_size > max_header_size:
        raise DataRefused(str(replies.HEADER_TOO_BIG.format(limit=max_header_size)))
    return content


def _ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        ip = ipaddress.ip_address(text.split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


class RelayHandler:
    """aiosmtpd hooks. Each turns one SMTP event into a next-hop call or a local decision."""

    def __init__(self, relay: Relay) -> None:
        self.relay = relay

    def __dir__(self) -> list[str]:
        """Only the hooks, for aiosmtpd's per-connection lookup (see RelaySMTP.__dir__)."""
        return _protocol_method_names(type(self))

    async def handle_EHLO(
        self,
        server: RelaySMTP,
        session: Session,
        envelope: SMTPEnvelope,
        hostname: str,
        responses: list[str],
    ) -> list[str]:
        self.end_transaction(server)
        session.host_name = hostname
        # No AUTH here: who may relay is decided by network and client certificate.
        kept = [r for r in responses[:-1] if not r[4:].upper().startswith("AUTH")]
        # One item: aiosmtpd writes each item of the list by itself, and a write per line
        # is a send per line (Postfix sends the reply in one).
        return ["\r\n".join([*kept, "250-PIPELINING", responses[-1]])]

    async def handle_HELO(
        self, server: RelaySMTP, session: Session, envelope: SMTPEnvelope, hostname: str
    ) -> str:
        self.end_transaction(server)
        session.host_name = hostname
        return str(replies.HELLO.format(hostname=server.hostname))

    async def handle_RSET(self, server: RelaySMTP, session: Session, envelope: SMTPEnvelope) -> str:
        self.end_transaction(server)
        return str(replies.OK)

    async def handle_QUIT(self, server: RelaySMTP, session: Session, envelope: SMTPEnvelope) -> str:
        self.end_transaction(server)
        return str(replies.BYE)

    def handle_STARTTLS(self, server: RelaySMTP, session: Session, envelope: SMTPEnvelope) -> bool:
        # The handshake has already verified any certificate against client_ca; a name in
        # client_names ends the deadline (Relay.admit). What the client may do is decided at
        # RCPT, where it hears why.
        server.client_cert_names = certificate_names((session.ssl or {}).get("peercert"))
        if self.relay.certificate_accepted(server.client_cert_names):
            server.certificate_presented()
        return True

    def end_transaction(self, server: RelaySMTP) -> None:
        """Give the transaction's next-hop session back (the pool resets it before reuse)."""
        nexthop, server.nexthop = server.nexthop, None
        if nexthop is not None and self.relay.nexthop_pool is not None:
            self.relay.nexthop_pool.release(nexthop)

    async def handle_MAIL(
        self,
        server: RelaySMTP,
        session: Session,
        envelope: SMTPEnvelope,
        address: str,
        mail_options: list[str],
    ) -> str:
        try:
            sender = check_sender(address, envelope.smtp_utf8)
        except AddressRefused as refused:
            return refused.reply
        relay = self.relay.config.relay
        if sender and not relay.accepts_sender_domain(sender.rpartition("@")[2]):
            return str(replies.SENDER_DOMAIN_REFUSED.format(sender=sender))
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        pool = self.relay.nexthop_pool
        if pool is None or self.relay.relay_refusal(server) is not None:
            # No next hop to ask, or a client that may not relay: it hears why at RCPT.
            return str(replies.SENDER_OK)
        try:
            reply = await self._open_transaction(server, pool, sender, envelope)
        except NextHopError as failed:
            self.relay.next_hop_failed(failed)
            reply = failed.reply
        if not reply.ok:
            envelope.mail_from = None
            envelope.mail_options.clear()
            self.end_transaction(server)
        return reply.smtp

    async def _open_transaction(
        self, server: RelaySMTP, pool: NextHopPool, sender: str, envelope: SMTPEnvelope
    ) -> Reply:
        if (probe := self.relay.probe_in_flight) is not None:
            # The readiness probe is connecting: its session is the pool's in a moment, so
            # no second connection is opened beside it.
            await asyncio.wait([probe])
        nexthop, pooled = await pool.acquire()
        server.nexthop = nexthop
        self.relay.next_hop_answered = True
        if envelope.smtp_utf8 and not nexthop.supports("smtputf8") and not sender.isascii():
            return Reply.of(replies.NEXT_HOP_NO_SMTPUTF8.format(role="sender"))
        if "BODY=8BITMIME" in (o.upper() for o in envelope.mail_options) and not nexthop.supports(
            "8bitmime"
        ):
            # RFC 6152: 8-bit mail is not passed to a server that did not offer 8BITMIME.
            return Reply.of(replies.NEXT_HOP_NO_8BITMIME)
        options = _mail_options(envelope, nexthop)
        try:
            return await nexthop.mail(sender, options)
        except NextHopError:
            if not pooled:
                raise
        # A pooled session may have been closed by the next hop while idle: one fresh try.
        nexthop.close()
        server.nexthop = nexthop = await pool.open()
        return await nexthop.mail(sender, _mail_options(envelope, nexthop))

    async def handle_RCPT(
        self,
        server: RelaySMTP,
        session: Session,
        envelope: SMTPEnvelope,
        address: str,
        rcpt_options: list[str],
    ) -> str:
        refusal = self.relay.relay_refusal(server)
        if refusal is not None:
            return refusal
        if len(envelope.rcpt_tos) >= self.relay.config.relay.max_recipients:
            return str(replies.TOO_MANY_RECIPIENTS)
        try:
            recipient = check_recipient(address, envelope.smtp_utf8)
        except AddressRefused as refused:
            return refused.reply
        if self.relay.nexthop_pool is not None:
            if server.nexthop is None:
                return str(replies.NEXT_HOP_GONE)
            if not recipient.isascii() and not server.nexthop.supports("smtputf8"):
                return str(replies.NEXT_HOP_NO_SMTPUTF8.format(role="recipient"))
            try:
                reply = await server.nexthop.rcpt(recipient)
            except NextHopError as failed:
                self.relay.next_hop_failed(failed)
                self.end_transaction(server)
                return failed.reply.smtp
            if not reply.ok:
                return reply.smtp
            status = reply.smtp
        else:
            status = str(replies.RECIPIENT_OK)
        envelope.rcpt_tos.append(recipient)
        envelope.rcpt_options.extend(rcpt_options)
        return status

    async def handle_DATA(self, server: RelaySMTP, session: Session, envelope: SMTPEnvelope) -> str:
        # Shielded: if the client goes away mid-way, delivery or quarantine still finishes
        # (or fails) as a whole, and the next-hop session is returned in a known state.
        server.busy = True
        task = asyncio.ensure_future(self._process(server, session, envelope))
        try:
            return await asyncio.shield(task)
        finally:
            if task.done():
                server.busy = False
            else:
                task.add_done_callback(lambda _: self._finish_abandoned(server))

    def _finish_abandoned(self, server: RelaySMTP) -> None:
        server.busy = False
        self.end_transaction(server)

    @staticmethod
    def _envelope(
        server: RelaySMTP, session: Session, envelope: SMTPEnvelope, queue_id: str
    ) -> Envelope:
        """The engine's Envelope for this transaction."""
        ssl_object = (session.ssl or {}).get("ssl_object")
        return Envelope(
            mail_from="" if envelope.mail_from == "<>" else (envelope.mail_from or ""),
            rcpt_tos=tuple(envelope.rcpt_tos),
            client_address=str(server.client_ip) if server.client_ip else None,
            helo=session.host_name,
            tls_version=ssl_object.version() if ssl_object else None,
            queue_id=queue_id,
            door="relay",
            extra={"tls_client_name": server.client_cert_names[0]}
            if server.client_cert_names
            else {},
        )

    def report_refused(self, server: RelaySMTP, content: bytes, size: int, reply: str) -> None:
        """Audit a message refused before the rules saw it (too big, a line too long): a
        record like any other, action reject, no rules, the reply as its outcome."""
        if self.relay.reporter is None or server.envelope is None or server.session is None:
            return
        env = self._envelope(server, server.session, server.envelope, _queue_id())
        verdict = Verdict(Action.REJECT, reason=reply.split(" ", 2)[-1])
        outcome = {"reply": reply, "refused_before_scan": True}
        message_id = message_id_of(content) if content else ""
        self.relay.reporter.report_verdict("relay", env, message_id, size, verdict, outcome)

    async def _process(self, server: RelaySMTP, session: Session, envelope: SMTPEnvelope) -> str:
        relay = self.relay
        raw = envelope.content
        assert isinstance(raw, bytes)
        message_id = _queue_id()
        env = self._envelope(server, session, envelope, message_id)
        ssl_object = (session.ssl or {}).get("ssl_object")
        released = await relay.released_copy(raw, env)
        outcome: dict[str, Any] = {}
        if released is not None:
            # Mailgate's own release of a held message, in flight (see released_id): judged
            # already, so it goes on, without the mark.
            raw = released
            verdict = Verdict(Action.ACCEPT, reason="released from quarantine")
            outcome["released"] = True
        else:
            verdict = await relay.scanner.scan(raw, env)
        received = relay.received_header(server, session, envelope, message_id, ssl_object)
        action = verdict.action
        if verdict.engine_error:
            if not relay.fail_open:
                reply = str(replies.NOT_SCANNED)
                return self._done(server, env, raw, verdict, reply, outcome)
            log.warning(
                "%s: engine failed (%s); fail_open relays it unscanned",
                message_id,
                verdict.engine_error,
            )
            # Reported as what happened: accepted unscanned, the engine error kept.
            verdict = dataclasses.replace(verdict, action=Action.ACCEPT)
            action = Action.ACCEPT
            outcome["fail_open"] = True
        if action is Action.REJECT or action is Action.TEMPFAIL:
            return self._done(server, env, raw, verdict, str(refusal_for(verdict)), outcome)
        if action is Action.QUARANTINE:
            reply, outcome["quarantine_id"] = await relay.hold(received + raw, env, verdict)
            return self._done(server, env, raw, verdict, reply, outcome)
        plan = plan_for(verdict)
        message = received + plan.apply(raw)
        if server.nexthop is None and relay.nexthop_pool is not None:
            reply = str(replies.NEXT_HOP_GONE)
        else:
            outcome["delivered_to"] = "outbox" if relay.outbox is not None else "next_hop"
            reply = await relay.deliver(server, message, env, plan.add_recipients)
        return self._done(server, env, raw, verdict, reply, outcome)

    def _done(
        self,
        server: RelaySMTP,
        env: Envelope,
        raw: bytes,
        verdict: Verdict,
        reply: str,
        outcome: dict[str, Any],
    ) -> str:
        """End the transaction, report the message (audit log and metrics), give the reply."""
        self.end_transaction(server)
        if self.relay.reporter is not None:
            outcome["reply"] = reply
            self.relay.reporter.report_verdict(
                "relay", env, message_id_of(raw), len(raw), verdict, outcome
            )
        if log.isEnabledFor(logging.DEBUG):  # masking the sender costs ~40 us: not for nothing
            log.debug(  # the audit record is the per-message line
                "%s: from=<%s> rcpt=%d action=%s rules=%s -> %s",
                env.queue_id,
                mask_field(env.mail_from),
                len(env.rcpt_tos),
                verdict.action,
                ",".join(verdict.rules) or "-",
                reply.splitlines()[-1],
            )
        return reply


# aiosmtpd inspects the EHLO hook's signature on every connection (it accepts two forms);
# a function's __signature__ is what inspect.signature returns without working it out again.
_EHLO_HOOK: Any = RelayHandler.handle_EHLO
_EHLO_HOOK.__signature__ = inspect.signature(_EHLO_HOOK)


_date: tuple[int, str] = (0, "")  # the Received date of the current second


def _received_date() -> str:
    """Now, as a Received header gives it; worked out once a second, not per message."""
    global _date
    second = int(time.time())
    if _date[0] != second:
        _date = (second, format_datetime(datetime.fromtimestamp(second).astimezone()))
    return _date[1]


def _queue_id() -> str:
    return secrets.token_hex(6).upper()


def _mail_options(envelope: SMTPEnvelope, nexthop: NextHopSession) -> list[str]:
    """The client's MAIL parameters the next hop understands (aiosmtpd has checked them)."""
    extension = {"SIZE": "size", "BODY": "8bitmime", "SMTPUTF8": "smtputf8"}
    return [
        option
        for option in envelope.mail_options
        if (name := option.partition("=")[0]) in extension and nexthop.supports(extension[name])
    ]


class Relay:
    """The listening relay: policy, the engine, and where accepted mail goes."""

    def __init__(
        self,
        config: Config,
        scanner: Scanner,
        store: QuarantineStore,
        nexthop_pool: NextHopPool | None = None,
        outbox: Outbox | None = None,
        release_secret: bytes | None = None,
        reporter: Reporter | None = None,
        notices: SenderNotices | None = None,
    ) -> None:
        """`reporter`: audit log and metrics for every message; None reports nothing.
        `notices`: tells the sender of each message held."""
        if (nexthop_pool is None) == (outbox is None):
            raise ValueError("give exactly one of nexthop_pool and outbox")
        self.config = config
        self.scanner = scanner
        self.store = store
        self.nexthop_pool = nexthop_pool
        self.outbox = outbox
        self.release_secret = release_secret
        self.reporter = reporter
        self.notices = notices
        self.fail_open = config.relay.fail_open
        self.handler = RelayHandler(self)
        self.tls_context = server_context(config.relay.tls)
        self._server: asyncio.Server | None = None
        self.sessions: set[RelaySMTP] = set()
        # Readiness: the next hop has answered at least once (or there is none).
        self.next_hop_answered = nexthop_pool is None
        self._probe: asyncio.Task[None] | None = None
        self.probe_in_flight: asyncio.Future[None] | None = None  # the probe's current try
        self.metrics_server: MetricsServer | None = None

    @classmethod
    def from_config(
        cls,
        config: Config,
        scanner: Scanner,
        store: QuarantineStore,
        reporter: Reporter | None = None,
        notices: SenderNotices | None = None,
    ) -> Relay:
        """The relay the configuration describes, reporting each message to `reporter`, by
        default the audit log (audit.path, else stdout) and this process's metrics."""
        secret = store.release_secret()
        if reporter is None:
            reporter = Reporter.from_config(
                config, store, engine=lambda: getattr(scanner, "engine", None)
            )
        target = config.relay.next_hop
        pool = NextHopPool(target, config.relay.hostname) if target.host else None
        outbox = None if target.host else Outbox(config.relay.outbox)
        return cls(config, scanner, store, pool, outbox, secret, reporter, notices)

    def reconfigure(self, config: Config) -> None:
        """What applies live (SIGHUP): fail_open, the relay's answer to an engine failure."""
        self.fail_open = config.relay.fail_open

    def ready(self) -> bool:
        """For /readyz: a rule pack is loaded and the next hop has answered."""
        return bool(getattr(self.scanner, "pack_version", "")) and self.next_hop_answered

    def next_hop_failed(self, failed: NextHopError) -> None:
        if self.reporter is not None:
            self.reporter.next_hop_error(next_hop_error_kind(failed))

    # --- policy ----------------------------------------------------------------------------

    def admit(self, server: RelaySMTP) -> str | None:
        """None if this new connection may have a session: its address is in accept_from
        and a slot is free. With client_names, a client holds its slot on a deadline until
        it presents an accepted certificate, and such clients share a quarter of the slots,
        each address a quarter of that: when a share is full, its longest-waiting client
        that has not begun STARTTLS gives way (421). A crowd of certless connections thus
        cannot keep the certified client out, whatever address the crowd comes from."""
        relay = self.config.relay
        if not self._network_allowed(server.client_ip):
            return str(replies.NOT_ALLOWED.format(ip=server.client_ip, hostname=relay.hostname))
        live = [s for s in self.sessions if not s.dismissed and s is not server]
        full = len(live) >= relay.max_connections
        if not relay.tls.client_names:
            return str(replies.TOO_MANY_CONNECTIONS) if full else None
        waiting = [s for s in live if s.owes_certificate]
        share, per_address = certless_shares(relay.max_connections)
        client = client_key(server.client_ip)
        same_address = [s for s in waiting if client_key(s.client_ip) == client]
        if len(same_address) >= per_address:
            _longest_waiting(same_address).dismiss(
                str(replies.TOO_MANY_WITHOUT_CERTIFICATE_FROM.format(ip=server.client_ip))
            )
        elif waiting and (full or len(waiting) >= share):
            _longest_waiting(_largest_group(waiting)).dismiss(
                str(replies.TOO_MANY_WITHOUT_CERTIFICATE)
            )
        elif full:
            return str(replies.TOO_MANY_CONNECTIONS)
        server.owe_certificate(relay.tls.client_cert_timeout)
        return None

    def certificate_accepted(self, names: tuple[str, ...]) -> bool:
        allowed = {name.lower().rstrip(".") for name in self.config.relay.tls.client_names}
        return not allowed.isdisjoint(names)

    def relay_refusal(self, server: RelaySMTP) -> str | None:
        """None if this client may relay: its network is in accept_from and, when
        client_names is set, its verified certificate carries one of those names, wherever
        it connects from (no network is exempt)."""
        if not self._network_allowed(server.client_ip):
            return str(replies.DENIED_NETWORK.format(ip=server.client_ip))
        if not self.config.relay.tls.client_names:
            return None
        if not server.client_cert_names:
            return str(replies.DENIED_NO_CERTIFICATE)
        if self.certificate_accepted(server.client_cert_names):
            return None
        names = ", ".join(server.client_cert_names)
        return str(replies.DENIED_CERTIFICATE_NAME.format(names=names))

    def _network_allowed(self, ip: ipaddress.IPv4Address | ipaddress.IPv6Address | None) -> bool:
        return ip is not None and any(ip in net for net in self.config.relay.accept_from)

    async def released_copy(self, raw: bytes, env: Envelope) -> bytes | None:
        """The message without its release mark when it is mailgate's own release in flight
        (`released_id` says when a mark counts); else None: the mark is just a header."""
        if self.release_secret is None or find_mark(raw) is None:
            return None  # the common case, without a thread hop
        released = await asyncio.to_thread(released_id, self.release_secret, self.store, raw, env)
        return released[1] if released else None

    # --- where mail goes -------------------------------------------------------------------

    async def hold(self, raw: bytes, env: Envelope, verdict: Verdict) -> tuple[str, str | None]:
        """(the reply, the quarantine id or None when it could not be stored)."""
        try:
            qid = await asyncio.to_thread(self.store.put, raw, env, verdict)
        except Exception:
            log.exception("%s: quarantine write failed", env.queue_id)
            return str(replies.NOT_HELD), None
        if self.notices is not None:
            self.notices.held(qid)
        return str(replies.HELD.format(id=qid)), qid

    async def deliver(
        self, server: RelaySMTP, message: bytes, env: Envelope, add_recipients: list[str]
    ) -> str:
        if self.outbox is not None:
            recipients = (*env.rcpt_tos, *add_recipients)
            try:
                delivery_id = await asyncio.to_thread(
                    self.outbox.deliver, message, env.mail_from, recipients
                )
            except OSError:
                log.exception("%s: outbox write failed", env.queue_id)
                return str(replies.NOT_STORED)
            return str(replies.IN_OUTBOX.format(id=delivery_id))
        nexthop = server.nexthop
        assert nexthop is not None
        try:
            for recipient in add_recipients:
                added = await nexthop.rcpt(recipient)
                if not added.ok:
                    # A rule's copy (archive, supervisor) must not silently go missing.
                    return str(replies.COPY_REFUSED.format(recipient=recipient, reply=added))
            reply = await nexthop.data(message)
        except NextHopError as failed:
            self.next_hop_failed(failed)
            return failed.reply.smtp
        return reply.smtp

    def received_header(
        self,
        server: RelaySMTP,
        session: Session,
        envelope: SMTPEnvelope,
        message_id: str,
        ssl_object: ssl.SSLObject | None,
    ) -> bytes:
        helo = "".join(ch for ch in (session.host_name or "unknown") if ch.isprintable())[:200]
        protocol = (
            ("UTF8SMTP" if envelope.smtp_utf8 else "ESMTP") if session.extended_smtp else "SMTP"
        )
        if ssl_object is not None:
            protocol += "S"
        tls = describe_session(ssl_object)
        lines = [
            f"Received: from {helo} ([{server.client_ip}])",
            f"\tby {self.config.relay.hostname} (mailgate) with {protocol} id {message_id}",
        ]
        if tls:
            lines.append(f"\t(using {tls})")
        recipient = f" for <{envelope.rcpt_tos[0]}>" if len(envelope.rcpt_tos) == 1 else ""
        lines[-1] += f"{recipient}; {_received_date()}"
        return ("\r\n".join(lines) + "\r\n").encode("utf-8", "surrogateescape")

    # --- lifecycle -------------------------------------------------------------------------

    def _protocol(self) -> RelaySMTP:
        relay = self.config.relay
        protocol = RelaySMTP(
            self,
            data_size_limit=relay.max_message_size,
            enable_SMTPUTF8=True,
            hostname=relay.hostname,
            ident="mailgate",
            tls_context=self.tls_context,
            require_starttls=relay.tls.require,
            timeout=relay.idle_timeout,
            auth_require_tls=True,
        )
        return protocol

    async def start(self, sock: socket.socket | None = None, serve_metrics: bool = True) -> None:
        """Listen for clients (on `sock` when given); serve /metrics and the health checks when
        metrics.listen is set and `serve_metrics`; probe the next hop until it answers once.
        OSError when a port cannot be bound."""
        loop = asyncio.get_running_loop()
        if sock is not None:
            self._server = await loop.create_server(self._protocol, sock=sock)
        else:
            listen = self.config.relay.listen
            self._server = await loop.create_server(
                self._protocol, host=listen.host, port=listen.port, reuse_address=True
            )
        if serve_metrics and self.reporter is not None:
            try:
                self.metrics_server = MetricsServer.for_config(
                    self.config, self.ready, self.reporter.metrics
                )
            except OSError:
                self._server.close()
                raise
        if not self.next_hop_answered:
            self._probe = asyncio.ensure_future(self._probe_next_hop())

    async def _probe_next_hop(self) -> None:
        """Until a client's transaction reaches the next hop, open a session to it every few
        seconds; the first that opens goes into the pool for the next transaction."""
        assert self.nexthop_pool is not None
        while not self.next_hop_answered:
            attempt = self.probe_in_flight = asyncio.get_running_loop().create_future()
            try:
                session = await self.nexthop_pool.open()
            except NextHopError as failed:
                self.next_hop_failed(failed)
                log.warning("next hop not ready: %s", failed.reply)
            else:
                self.next_hop_answered = True
                self.nexthop_pool.release(session)
            finally:
                # Clients waiting for this attempt go on: to its pooled session, if any.
                self.probe_in_flight = None
                attempt.set_result(None)
            if not self.next_hop_answered:
                await asyncio.sleep(_PROBE_INTERVAL)

    @property
    def address(self) -> tuple[str, int]:
        assert self._server is not None
        host, port = self._server.sockets[0].getsockname()[:2]
        return host, port

    async def stop(self, grace: float = 10.0) -> None:
        """Stop listening, let sessions finish their transaction for up to `grace` seconds."""
        if self._server is not None:
            self._server.close()
        if self._probe is not None:
            self._probe.cancel()
        deadline = asyncio.get_running_loop().time() + grace
        while any(p.busy for p in self.sessions) and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.05)
        for protocol in list(self.sessions):
            if protocol.transport is not None:
                protocol.transport.close()
        if self.nexthop_pool is not None:
            await self.nexthop_pool.close()
        # Last: the messages that finished during the grace period are audited and counted.
        if self.metrics_server is not None:
            self.metrics_server.stop()
        if self.reporter is not None and self.reporter.audit is not None:
            self.reporter.audit.close()


def certless_shares(max_connections: int) -> tuple[int, int]:
    """(slots for all clients that still owe a certificate, slots for one address of them)."""
    share = max(1, max_connections // 4)
    return share, max(1, share // 4)


def _longest_waiting(sessions: list[RelaySMTP]) -> RelaySMTP:
    """Who gives way: one that has not begun STARTTLS before one in its handshake, then the
    oldest (a client that is just negotiating is spared)."""
    return min(sessions, key=lambda s: (s.tls_started, s.connected_at))


def client_key(
    ip: ipaddress.IPv4Address | ipaddress.IPv6Address | None,
) -> ipaddress.IPv4Address | ipaddress.IPv6Network | None:
    """Whose share a connection counts against: an IPv4 address, or an IPv6 address's /64,
    the least a single host gets (one host could otherwise take 2**64 shares)."""
    if isinstance(ip, ipaddress.IPv6Address):
        return ipaddress.IPv6Network((ip, 64), strict=False)
    return ip


def _largest_group(sessions: list[RelaySMTP]) -> list[RelaySMTP]:
    """The sessions of the client (see client_key) holding the most of them."""
    groups: dict[object, list[RelaySMTP]] = {}
    for session in sessions:
        groups.setdefault(client_key(session.client_ip), []).append(session)
    return max(groups.values(), key=len)


def next_hop_error_kind(failed: NextHopError) -> str:
    """The metrics label for a failure to talk to the next hop."""
    cause = failed.__cause__
    if failed.reply.text.startswith("4.7.5") or isinstance(cause, TLSPolicyError | ssl.SSLError):
        return "tls"
    if isinstance(cause, aiosmtplib.SMTPTimeoutError | TimeoutError):
        return "timeout"
    if isinstance(cause, aiosmtplib.SMTPConnectError | ConnectionRefusedError):
        return "connect"
    if isinstance(cause, aiosmtplib.SMTPServerDisconnected | ConnectionError):
        return "lost"
    return "other"

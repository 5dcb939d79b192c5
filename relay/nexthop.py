"""SMTP client for the next hop, driven in lockstep with the inbound session, with a small
pool of idle connections.

Every failure to talk to the next hop (refused connection, timeout, lost connection, TLS that
does not meet the configured mode) becomes a 4xx `Reply`, so the sender keeps the message and
retries; the next hop's own replies are passed through as they are.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import time
from dataclasses import dataclass

import aiosmtplib
from aiosmtplib import SMTPResponse

from mailgate.filter import replies, reply_text
from mailgate.filter.ops.config import NextHopTLS, SmtpTarget
from mailgate.relay.lines import longest_crlf_line
from mailgate.relay.tls import TLSPolicyError, client_context, describe_session, server_hostname

log = logging.getLogger("mailgate.relay.nexthop")


@dataclass(frozen=True)
class Reply:
    code: int
    text: str  # may span lines; the enhanced status code, if any, is part of the text

    @classmethod
    def of(cls, ours: replies.SMTPReply) -> Reply:
        """One of mailgate's own replies, in this form."""
        return cls(ours.code, ours.detail)

    @property
    def ok(self) -> bool:
        return 200 <= self.code < 300

    @property
    def smtp(self) -> str:
        """The reply as aiosmtpd pushes it: multi-line replies keep their continuation lines."""
        lines = [reply_text(line) for line in self.text.splitlines()] or [""]
        head = [f"{self.code}-{line}" for line in lines[:-1]]
        return "\r\n".join([*head, f"{self.code} {lines[-1]}"])

    def __str__(self) -> str:
        return f"{self.code} {' / '.join(self.text.splitlines())}"


class NextHopError(Exception):
    """The next hop could not be reached or lost the thread; `reply` is the 4xx to give."""

    def __init__(self, reply: Reply) -> None:
        super().__init__(str(reply))
        self.reply = reply


def data_payload(message: bytes) -> bytes:
    """What follows DATA: every line end CRLF, a dot doubled at the start of each line (RFC
    5321 4.5.2), and the end-of-data line. Text that is CRLF throughout already, as both
    doors' messages are, is only checked."""
    if longest_crlf_line(message) is None:
        message = b"\r\n".join(message.splitlines()) + b"\r\n"
    ending = b".\r\n" if message.endswith(b"\r\n") else b"\r\n.\r\n"
    # replace() hands back the message itself when no line starts with a dot: one copy in all.
    stuffed = message.replace(b"\r\n.", b"\r\n..")
    return b"".join((b"." if stuffed.startswith(b".") else b"", stuffed, ending))


def _from_response(response: SMTPResponse) -> Reply:
    # Only final 2xx/4xx/5xx answers are passed to the client; anything else from the next
    # hop is a protocol fault and the sender should retry.
    if response.code // 100 in (2, 4, 5):
        return Reply(response.code, response.message)
    return Reply.of(replies.NEXT_HOP_UNEXPECTED.format(code=response.code))


class NextHopSession:
    """One SMTP connection to the next hop. `usable` turns False once its state is unknown
    (a command failed half way or was cancelled); such a session is closed, not pooled."""

    def __init__(self, smtp: aiosmtplib.SMTP, label: str, timeout: float) -> None:
        self.smtp = smtp
        self.label = label
        self.timeout = timeout
        self.usable = True
        self.clean = True  # no transaction open, so no RSET needed before reuse
        self.idle_since = time.monotonic()

    @property
    def tls(self) -> str | None:
        return describe_session(self.smtp.get_transport_info("ssl_object"))

    def supports(self, extension: str) -> bool:
        return self.smtp.supports_extension(extension)

    async def command(self, *args: bytes) -> Reply:
        self.clean = False
        try:
            response = await self.smtp.execute_command(*args, timeout=self.timeout)
        except BaseException as exc:
            self.usable = False
            if isinstance(exc, aiosmtplib.SMTPException | OSError):
                raise NextHopError(_failure(exc, self.label)) from exc
            raise
        return _from_response(response)

    async def mail(self, sender: str, options: list[str]) -> Reply:
        path = f"<{sender}>".encode()
        return await self.command(b"MAIL", b"FROM:" + path, *(o.encode() for o in options))

    async def rcpt(self, recipient: str) -> Reply:
        return await self.command(b"RCPT", f"TO:<{recipient}>".encode())

    async def data(self, message: bytes) -> Reply:
        """Send the message and return the final reply.

        Not aiosmtplib's data(): its two whole-message regexes (line ends, dots) cost a
        quarter of the relay's own CPU at 100 KB, for messages that both doors hand over with
        CRLF line ends already. The protocol calls below are the ones data() makes; the
        session is ours alone (lockstep), so its command lock is not needed."""
        self.clean = False
        try:
            start = await self.smtp.execute_command(b"DATA", timeout=self.timeout)
            if start.code != 354:
                return _from_response(start)  # refused at DATA: RSET before reuse
            protocol = self.smtp.protocol
            assert protocol is not None  # execute_command raised if it were gone
            protocol.write(data_payload(message))
            response = await protocol.read_response(timeout=self.timeout)
        except BaseException as exc:
            self.usable = False
            if isinstance(exc, aiosmtplib.SMTPException | OSError):
                raise NextHopError(_failure(exc, self.label)) from exc
            raise
        self.clean = response.code == 250  # refused after the message: RSET before reuse
        return _from_response(response)

    async def rset(self) -> bool:
        try:
            reply = await self.command(b"RSET")
        except NextHopError:
            return False
        self.clean = reply.ok
        return reply.ok

    async def quit(self) -> None:
        if self.smtp.is_connected:
            with contextlib.suppress(aiosmtplib.SMTPException, OSError, asyncio.TimeoutError):
                await self.smtp.quit(timeout=min(self.timeout, 5.0))
        self.close()

    def close(self) -> None:
        self.usable = False
        self.smtp.close()


def _failure(exc: BaseException, label: str) -> Reply:
    if isinstance(exc, TLSPolicyError):
        reply = replies.NEXT_HOP_TLS.format(label=label, problem=exc)
    elif isinstance(exc, aiosmtplib.SMTPTimeoutError | asyncio.TimeoutError | TimeoutError):
        reply = replies.NEXT_HOP_TIMED_OUT.format(label=label)
    elif isinstance(exc, aiosmtplib.SMTPConnectError | ConnectionRefusedError):
        reply = replies.NEXT_HOP_UNREACHABLE.format(label=label, problem=_first_line(exc))
    elif isinstance(exc, aiosmtplib.SMTPServerDisconnected | ConnectionError):
        reply = replies.NEXT_HOP_LOST.format(label=label)
    else:
        reply = replies.NEXT_HOP_FAILED.format(label=label, problem=_first_line(exc))
    return Reply.of(reply)


def _first_line(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return reply_text(text.splitlines()[0] if text.splitlines() else text)


class _StartTLSFailed(Exception):
    """The server offered STARTTLS but the upgrade failed (handshake or reply)."""


async def open_session(target: SmtpTarget, local_hostname: str) -> NextHopSession:
    """Connect, EHLO, and STARTTLS as `target.tls` demands; NextHopError if that fails."""
    assert target.host is not None
    label = f"{target.host}:{target.port}"
    context = client_context(target)
    try:
        try:
            return await _connect(target, local_hostname, label, context)
        except _StartTLSFailed as failed:
            if target.tls is not NextHopTLS.OPPORTUNISTIC:
                raise
            # Opportunistic TLS falls back to plain SMTP when the upgrade fails, as the
            # Exchange connector and other MTAs do; a mode that demands TLS never falls back.
            log.warning(
                "next hop %s: STARTTLS failed (%s); sending without TLS", label, failed.__cause__
            )
            return await _connect(target, local_hostname, label, None)
    except _StartTLSFailed as failed:
        cause = failed.__cause__
        detail = _first_line(cause) if cause is not None else "STARTTLS failed"
        failed_tls = replies.NEXT_HOP_TLS_FAILED.format(label=label, problem=detail)
        raise NextHopError(Reply.of(failed_tls)) from cause
    except (TLSPolicyError, aiosmtplib.SMTPException, OSError) as exc:
        raise NextHopError(_failure(exc, label)) from exc


def smtp_client(target: SmtpTarget, local_hostname: str) -> aiosmtplib.SMTP:
    """A client for the target, not yet connected; STARTTLS is ours to decide, per the mode."""
    return aiosmtplib.SMTP(
        hostname=target.host,
        port=target.port,
        local_hostname=local_hostname,
        timeout=target.timeout,
        start_tls=False,
    )


async def _connect(
    target: SmtpTarget, local_hostname: str, label: str, context: ssl.SSLContext | None
) -> NextHopSession:
    smtp = smtp_client(target, local_hostname)
    await smtp.connect()
    try:
        await smtp.ehlo()
        if context is not None:
            if smtp.supports_extension("starttls"):
                try:
                    await smtp.starttls(
                        tls_context=context,
                        server_hostname=server_hostname(target),
                        timeout=target.timeout,
                    )
                    # Under TLS 1.3 a server's refusal of the handshake (a client certificate
                    # it wants) arrives with its first reply after it: part of the upgrade.
                    await smtp.ehlo()
                except (ssl.SSLError, aiosmtplib.SMTPException, OSError) as exc:
                    raise _StartTLSFailed() from exc
            elif target.tls is not NextHopTLS.OPPORTUNISTIC:
                raise TLSPolicyError(f"tls: {target.tls} but the server offers no STARTTLS")
    except BaseException:
        smtp.close()
        raise
    return NextHopSession(smtp, label, target.timeout)


class NextHopPool:
    """Idle next-hop sessions for reuse. A session comes back after its transaction; one that
    is not known to be clean is reset (RSET) when taken, and one idle for longer than
    `idle_ttl` is closed, well before a typical server's own idle timeout."""

    def __init__(
        self,
        target: SmtpTarget,
        local_hostname: str,
        max_idle: int = 16,
        idle_ttl: float = 30.0,
    ) -> None:
        self.target = target
        self.local_hostname = local_hostname
        self.max_idle = max_idle
        self.idle_ttl = idle_ttl
        self._idle: list[NextHopSession] = []
        self._closing: set[asyncio.Task[None]] = set()
        self._reaper: asyncio.TimerHandle | None = None

    async def acquire(self) -> tuple[NextHopSession, bool]:
        """A session ready for MAIL, and whether it came from the pool (so a failure on its
        first command may just mean the next hop closed it while idle)."""
        while self._idle:
            session = self._idle.pop()
            if time.monotonic() - session.idle_since > self.idle_ttl:
                self._quit_later(session)
                continue
            if session.clean or await session.rset():
                return session, True
            session.close()
        return await open_session(self.target, self.local_hostname), False

    async def open(self) -> NextHopSession:
        return await open_session(self.target, self.local_hostname)

    def release(self, session: NextHopSession) -> None:
        if not session.usable or not session.smtp.is_connected:
            session.close()
            return
        self._drop_expired()
        if len(self._idle) >= self.max_idle:
            self._quit_later(session)
            return
        session.idle_since = time.monotonic()
        self._idle.append(session)
        if self._reaper is None:
            self._reaper = asyncio.get_running_loop().call_later(self.idle_ttl, self._reap)

    def _reap(self) -> None:
        # Without traffic nothing else would close idle sessions before the next hop does.
        self._reaper = None
        self._drop_expired()
        if self._idle:
            self._reaper = asyncio.get_running_loop().call_later(self.idle_ttl, self._reap)

    def _drop_expired(self) -> None:
        now = time.monotonic()
        keep = []
        for session in self._idle:
            if now - session.idle_since > self.idle_ttl:
                self._quit_later(session)
            else:
                keep.append(session)
        self._idle = keep

    def _quit_later(self, session: NextHopSession) -> None:
        task = asyncio.ensure_future(session.quit())
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    async def close(self) -> None:
        if self._reaper is not None:
            self._reaper.cancel()
            self._reaper = None
        idle, self._idle = self._idle, []
        await asyncio.gather(*(s.quit() for s in idle), *self._closing, return_exceptions=True)

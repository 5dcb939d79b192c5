"""The test SMTP sink: aiosmtpd on 127.0.0.1 recording every message it accepts, as a relay's
next hop or Postfix's relayhost; with fault modes (4xx/5xx per recipient, refusing MAIL or
DATA, slow, dropping or stalling mid-DATA), optional STARTTLS with a given certificate, and
extensions turned off on request.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
import threading
from dataclasses import dataclass, field
from email import message_from_bytes, policy
from email.message import EmailMessage
from pathlib import Path
from typing import Any

from aiosmtpd.smtp import SMTP, Envelope, Session

from tests.support.background_loop import BackgroundLoop
from tests.support.waiting import wait_until


@dataclass(frozen=True)
class Received:
    mail_from: str
    rcpt_tos: tuple[str, ...]
    content: bytes
    tls: bool = False  # the session was encrypted (STARTTLS)
    options: tuple[str, ...] = ()  # MAIL parameters

    @property
    def message(self) -> EmailMessage:
        return message_from_bytes(self.content, policy=policy.default)  # type: ignore[return-value]


@dataclass
class Faults:
    rcpt: dict[str, str] = field(default_factory=dict)  # recipient -> reply, e.g. "550 5.1.1 no"
    mail: str | None = None  # reply to every MAIL
    data: str | None = None  # final reply after the message
    delay: float = 0.0  # seconds before every reply, banner included
    drop_mid_data: bool = False  # close the connection after 354 and some of the message
    # After 354 and some of the message, read nothing more until SmtpSink.resume(); what came,
    # up to the connection's end, is in SmtpSink.unfinished, never in `received`.
    stall_mid_data: bool = False


class _SinkSMTP(SMTP):
    def __init__(self, sink: SmtpSink, **kwargs: Any) -> None:
        self.sink = sink
        self.unfinished: bytearray | None = None  # a stalled DATA, as far as it came
        super().__init__(sink, **kwargs)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if self.transport is None:
            self.sink.connections += 1
            self.sink.open.add(self)
        super().connection_made(transport)

    def connection_lost(self, error: Exception | None) -> None:
        self.sink.open.discard(self)
        super().connection_lost(error)

    async def push(self, status: str | bytes) -> None:
        if self.sink.faults.delay:
            await asyncio.sleep(self.sink.faults.delay)
        await super().push(status)

    async def smtp_DATA(self, arg: str) -> None:
        assert self.envelope is not None
        if self.sink.faults.drop_mid_data and self.envelope.rcpt_tos:
            await self.push("354 End data with <CR><LF>.<CR><LF>")
            await self._reader.read(1)
            assert self.transport is not None
            self.transport.close()
            return
        if self.sink.faults.stall_mid_data and self.envelope.rcpt_tos:
            await self._stall_mid_data()
            return
        await super().smtp_DATA(arg)

    async def _stall_mid_data(self) -> None:
        assert self.transport is not None
        # A small receive buffer: what the sender cannot get rid of stays in its own buffers.
        self.transport.get_extra_info("socket").setsockopt(
            socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 16
        )
        # Kept as it arrives (data_received): aiosmtpd cancels this handler when the
        # connection ends, taking whatever it had not read yet with it.
        self.unfinished = bytearray()
        self.sink.unfinished.append(self.unfinished)
        await self.push("354 End data with <CR><LF>.<CR><LF>")
        await self._reader.read(1)  # some of the message has come
        resume = asyncio.Event()
        self.sink.stalls.append(resume)
        self.sink.stalled.set()
        await resume.wait()
        with contextlib.suppress(ConnectionError):
            while await self._reader.read(1 << 16):  # to the end of the connection
                pass
        self.transport.close()

    def data_received(self, data: bytes) -> None:
        if self.unfinished is not None:
            self.unfinished.extend(data)
        super().data_received(data)


class SmtpSink:
    """On the given background loop, or on one of its own (closed by stop())."""

    def __init__(
        self,
        loop: BackgroundLoop | None = None,
        tls: tuple[Path, Path] | None = None,
        extensions_off: tuple[str, ...] = (),
    ) -> None:
        self._own_loop = loop is None
        self.loop = loop or BackgroundLoop()
        self.faults = Faults()
        self.received: list[Received] = []
        # Every MAIL FROM given to the sink, refused ones too, and whether its session was
        # encrypted: what a next hop learned of a transaction, even one that never got to DATA.
        self.mails: list[tuple[str, bool]] = []
        self.stalled = threading.Event()  # a session is stalled mid-DATA (Faults.stall_mid_data)
        self.stalls: list[asyncio.Event] = []
        self.unfinished: list[bytearray] = []  # DATA of stalled sessions, as far as it came
        self.connections = 0
        self.open: set[_SinkSMTP] = set()
        self.extensions_off = extensions_off
        self._tls: ssl.SSLContext | None = None
        if tls is not None:
            self._tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            self._tls.load_cert_chain(*tls)
        self._server: asyncio.Server | None = None

    def _protocol(self) -> _SinkSMTP:
        return _SinkSMTP(
            self,
            hostname="sink.example.test",
            tls_context=self._tls,
            enable_SMTPUTF8="SMTPUTF8" not in self.extensions_off,
        )

    def start(self) -> SmtpSink:
        async def start() -> asyncio.Server:
            return await asyncio.get_running_loop().create_server(self._protocol, "127.0.0.1", 0)

        self._server = self.loop.run(start())
        return self

    @property
    def port(self) -> int:
        assert self._server is not None
        return self._server.sockets[0].getsockname()[1]

    def stop(self) -> None:
        async def stop() -> None:
            assert self._server is not None
            self._server.close()

        self.loop.run(stop())
        if self._own_loop:
            self.loop.close()

    def resume(self) -> None:
        """Let every stalled session read on."""
        for stall in self.stalls:
            self.loop.loop.call_soon_threadsafe(stall.set)

    def drop_connections(self) -> None:
        """Close every open session, as a next hop does with connections idle too long."""

        async def drop() -> None:
            for protocol in list(self.open):
                if protocol.transport is not None:
                    protocol.transport.close()
            await asyncio.sleep(0.1)  # let the closes reach the clients

        self.loop.run(drop())

    def wait_for(self, count: int, timeout: float = 10.0) -> list[Received]:
        """Every message received, once there are at least `count`."""
        wait_until(lambda: len(self.received) >= count, timeout, f"{count} message(s)")
        return list(self.received)

    def with_header(self, name: str, value_part: str) -> list[Received]:
        return [r for r in self.received if value_part in str(r.message.get(name, ""))]

    def wait_for_header(self, name: str, value_part: str, timeout: float) -> Received:
        """The first message whose header `name` contains `value_part`."""
        wait_until(
            lambda: self.with_header(name, value_part), timeout, f"{name} with {value_part!r}"
        )
        return self.with_header(name, value_part)[0]

    # --- aiosmtpd hooks ----------------------------------------------------------------------

    async def handle_EHLO(
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        hostname: str,
        responses: list[str],
    ) -> list[str]:
        session.host_name = hostname
        return [r for r in responses if r[4:].split(" ")[0] not in self.extensions_off]

    async def handle_MAIL(
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        address: str,
        options: list[str],
    ) -> str:
        self.mails.append((address, session.ssl is not None))
        if self.faults.mail:
            return self.faults.mail
        envelope.mail_from = address
        envelope.mail_options.extend(options)
        return "250 2.1.0 sink: sender ok"

    async def handle_RCPT(
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        address: str,
        options: list[str],
    ) -> str:
        reply = self.faults.rcpt.get(address)
        if reply:
            return reply
        envelope.rcpt_tos.append(address)
        return f"250 2.1.5 sink: <{address}> ok"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        if self.faults.data:
            return self.faults.data
        content = envelope.original_content or b""
        mail_from = "" if envelope.mail_from == "<>" else envelope.mail_from or ""
        self.received.append(
            Received(
                mail_from,
                tuple(envelope.rcpt_tos),
                bytes(content),
                tls=session.ssl is not None,
                options=tuple(envelope.mail_options),
            )
        )
        return f"250 2.0.0 sink: queued as S{len(self.received)}"

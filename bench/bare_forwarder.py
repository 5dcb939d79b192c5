"""The baseline relay for bench/relay.py: stock aiosmtpd that parses each message (stdlib email,
compat32: parse, walk every part, decode every payload) and passes it on with a pooled
aiosmtplib client. No rules, no engine, no policy checks: what any Python relay pays at least.

    .venv/bin/python -m bench.bare_forwarder LISTEN_PORT NEXT_HOP_PORT [--processes N]

--processes N: N processes sharing the port (SO_REUSEPORT), the kernel spreading connections.
SIGTERM or SIGINT stops it (and its sibling processes).
"""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import os
import signal
import socket
import sys
from email.parser import BytesParser
from email.policy import compat32

import aiosmtplib
from aiosmtpd.smtp import SMTP, Envelope, Session

PARSER = BytesParser(policy=compat32)
POOL_SIZE = 32  # idle next-hop connections kept; above the bench's 20 sessions


class Forwarder:
    """aiosmtpd handler: parse, then send on over a pooled next-hop connection; the client
    gets the next hop's answer."""

    def __init__(self, next_hop_port: int) -> None:
        self.next_hop_port = next_hop_port
        self.idle: list[aiosmtplib.SMTP] = []

    async def _acquire(self) -> aiosmtplib.SMTP:
        while self.idle:
            client = self.idle.pop()
            if client.is_connected:
                return client
        client = aiosmtplib.SMTP(
            hostname="127.0.0.1", port=self.next_hop_port, local_hostname="bare.bench.test"
        )
        await client.connect()
        return client

    def _release(self, client: aiosmtplib.SMTP) -> None:
        if len(self.idle) < POOL_SIZE and client.is_connected:
            self.idle.append(client)
        else:
            client.close()

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        content = envelope.original_content or b""
        message = PARSER.parsebytes(content)
        for part in message.walk():
            if not part.is_multipart():
                part.get_payload(decode=True)
        client = await self._acquire()
        try:
            await client.sendmail(envelope.mail_from, envelope.rcpt_tos, content)
        except aiosmtplib.SMTPException as exc:
            client.close()
            return f"451 4.4.0 Next hop failed: {exc}"
        self._release(client)
        return "250 2.0.0 OK"


async def serve(sock: socket.socket, next_hop_port: int) -> None:
    loop = asyncio.get_running_loop()
    handler = Forwarder(next_hop_port)
    server = await loop.create_server(
        lambda: SMTP(handler, hostname="bare.bench.test", ident="bare"), sock=sock
    )
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await stop.wait()
    server.close()
    for client in handler.idle:
        client.close()


def listening_socket(port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind(("127.0.0.1", port))
    sock.listen(1024)
    sock.setblocking(False)
    return sock


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("port", type=int)
    parser.add_argument("next_hop_port", type=int)
    parser.add_argument("--processes", type=int, default=1)
    args = parser.parse_args()
    children = []
    for _ in range(args.processes - 1):
        pid = os.fork()
        if pid == 0:
            # PR_SET_PDEATHSIG: a sibling must not outlive the process the bench stops.
            ctypes.CDLL(None).prctl(1, signal.SIGTERM)
            children = []
            break
        children.append(pid)
    # Each process its own socket on the same port: SO_REUSEPORT balances between them.
    asyncio.run(serve(listening_socket(args.port), args.next_hop_port))
    for pid in children:
        os.kill(pid, signal.SIGTERM)
        os.waitpid(pid, 0)
    sys.exit(0)


if __name__ == "__main__":
    main()

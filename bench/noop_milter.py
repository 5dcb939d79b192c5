"""The baseline milter for bench/milter.py: pymilter, collects the message like mailgate's door
and at end of message only parses it (stdlib email, compat32: parse, walk every part, decode
every payload), then accepts. No rules, no verdict, no logging.

    .venv/bin/python -m bench.noop_milter unix:/path/noop.sock   (or inet:PORT@127.0.0.1)

Stops on SIGTERM or SIGINT (libmilter's own signal handling).
"""

from __future__ import annotations

import argparse
import os
from email.parser import BytesParser
from email.policy import compat32

import Milter

PARSER = BytesParser(policy=compat32)


@Milter.header_leading_space
class NoopMilter(Milter.Base):
    def __init__(self) -> None:
        self.chunks: list[bytes] = []

    @Milter.noreply
    def envfrom(self, mail_from: str, *params: str) -> int:
        self.chunks = []
        return Milter.CONTINUE

    @Milter.noreply
    @Milter.decode("bytes")
    def header(self, name: str, value: bytes) -> int:
        self.chunks.append(name.encode("ascii", "surrogateescape") + b":" + value + b"\r\n")
        return Milter.CONTINUE

    @Milter.noreply
    def eoh(self) -> int:
        self.chunks.append(b"\r\n")
        return Milter.CONTINUE

    @Milter.noreply
    def body(self, chunk: bytes) -> int:
        self.chunks.append(chunk)
        return Milter.CONTINUE

    def eom(self) -> int:
        message = PARSER.parsebytes(b"".join(self.chunks))
        self.chunks = []
        for part in message.walk():
            if not part.is_multipart():
                part.get_payload(decode=True)
        return Milter.ACCEPT


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("socket", help="libmilter socket spec: unix:/path or inet:PORT@HOST")
    args = parser.parse_args()
    # Postfix's smtpd (user postfix) must be able to connect to the unix socket.
    os.umask(0)
    Milter.factory = NoopMilter
    Milter.runmilter("noop", args.socket, timeout=60)


if __name__ == "__main__":
    main()

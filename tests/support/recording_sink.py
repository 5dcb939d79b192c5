"""An SMTP sink on loopback that records every message it accepts (aiosmtpd, in a thread)."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from email import message_from_bytes, policy
from email.message import EmailMessage

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session


@dataclass(frozen=True)
class Received:
    mail_from: str
    rcpt_tos: tuple[str, ...]
    content: bytes

    @property
    def message(self) -> EmailMessage:
        return message_from_bytes(self.content, policy=policy.default)  # type: ignore[return-value]


class RecordingSink:
    def __init__(self, port: int) -> None:
        self.port = port
        self.received: list[Received] = []
        self._changed = threading.Condition()
        self._controller = Controller(self, hostname="127.0.0.1", port=port)

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        content = envelope.original_content or envelope.content or b""
        with self._changed:
            self.received.append(
                Received(envelope.mail_from or "", tuple(envelope.rcpt_tos), bytes(content))
            )
            self._changed.notify_all()
        return "250 2.0.0 recorded"

    def start(self) -> None:
        self._controller.start()

    def stop(self) -> None:
        self._controller.stop()

    def with_header(self, name: str, value_part: str) -> list[Received]:
        return [r for r in self.received if value_part in str(r.message.get(name, ""))]

    def wait_for(self, name: str, value_part: str, timeout: float) -> Received:
        """The first message whose header `name` contains `value_part`; AssertionError if
        none arrives within `timeout` seconds."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while not (found := self.with_header(name, value_part)):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise AssertionError(f"no message with {name} containing {value_part!r}")
                self._changed.wait(remaining)
        return found[0]

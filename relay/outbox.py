"""Delivery into a folder, one .eml per message, for a relay with no next hop.

A message is on stable storage before `deliver` returns: written under `.tmp/`, fsynced,
renamed into the folder (atomic on one filesystem), and the folder fsynced. A reader of the
folder therefore sees whole messages only; a crash leaves at most a file in `.tmp/`, which a
later start removes once it is an hour old (its sender never got a 250, so it sends again).
Younger files are left alone: several processes write here at once (every front end of
`relay.processes`, and each `quarantine release`), and one's start must not take another's
write in flight.

The envelope goes into the file as `Return-Path:` and one `X-Envelope-To:` per recipient,
as a delivery agent writes them, since a file has no envelope of its own.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

from mailgate.filter.store.durable import new_id, remove_older, write_durably

# A write takes seconds at most; a temporary file this old was left by a crash.
STALE_AFTER = timedelta(hours=1)


class Outbox:
    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.tmp = self.path / ".tmp"
        self.tmp.mkdir(mode=0o750, parents=True, exist_ok=True)
        remove_older(self.tmp, datetime.now(UTC) - STALE_AFTER)

    def deliver(self, raw: bytes, sender: str, recipients: tuple[str, ...] | list[str]) -> str:
        """Store the message durably; returns its id (the file is `<id>.eml`)."""
        delivery_id = new_id()
        envelope = f"Return-Path: <{sender}>\r\n".encode()
        envelope += b"".join(f"X-Envelope-To: <{r}>\r\n".encode() for r in recipients)
        write_durably(self.path / f"{delivery_id}.eml", self.tmp, [envelope, raw])
        return delivery_id

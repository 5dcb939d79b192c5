"""Delivery into a folder, one .eml per message, for a relay with no next hop.

A message is on stable storage before `deliver` returns: written under `.tmp/`, fsynced,
renamed into the folder (atomic on one filesystem), and the folder fsynced. A reader of the
folder therefore sees whole messages only; a crash leaves at most a file in `.tmp/`, which the
next start removes (its sender never got a 250, so it sends again).

The envelope goes into the file as `Return-Path:` and one `X-Envelope-To:` per recipient,
as a delivery agent writes them, since a file has no envelope of its own.
"""

from __future__ import annotations

import os
import secrets
import time
from pathlib import Path


class Outbox:
    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.tmp = self.path / ".tmp"
        self.tmp.mkdir(mode=0o750, parents=True, exist_ok=True)
        for leftover in self.tmp.iterdir():
            leftover.unlink(missing_ok=True)

    def deliver(self, raw: bytes, sender: str, recipients: tuple[str, ...] | list[str]) -> str:
        """Store the message durably; returns its id (the file is `<id>.eml`)."""
        delivery_id = f"{time.time_ns()}-{secrets.token_hex(4)}"
        envelope = f"Return-Path: <{sender}>\r\n".encode()
        envelope += b"".join(f"X-Envelope-To: <{r}>\r\n".encode() for r in recipients)
        tmp = self.tmp / f"{delivery_id}.eml"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640)
        try:
            with os.fdopen(fd, "wb") as out:
                out.write(envelope)
                out.write(raw)
                out.flush()
                os.fsync(out.fileno())
            os.rename(tmp, self.path / f"{delivery_id}.eml")
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        _fsync_dir(self.path)
        return delivery_id


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)

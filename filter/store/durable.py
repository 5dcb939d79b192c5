"""Writing a file so that it survives a crash the moment the call returns.

Written under a temporary name in `tmp_dir` (same filesystem), fsynced, renamed into place
(atomic), and the folder fsynced: a reader sees whole files only, and a crash leaves at most
a temporary file. Both the quarantine and the relay's outbox store messages this way before
anyone is told 250.
"""

from __future__ import annotations

import base64
import os
import secrets
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path


def write_durably(final: Path, tmp_dir: Path, chunks: Iterable[bytes], mode: int = 0o640) -> None:
    tmp = tmp_dir / final.name
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        with os.fdopen(fd, "wb") as out:
            for chunk in chunks:
                out.write(chunk)
            out.flush()
            os.fsync(out.fileno())
        os.rename(tmp, final)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(final.parent)


def remove_older(folder: Path, cutoff: datetime) -> None:
    """Remove the files in `folder` last written before `cutoff`: leftovers of writes that a
    crash interrupted. A younger file may be another process's write in flight."""
    for path in folder.iterdir():
        try:
            if datetime.fromtimestamp(path.stat().st_mtime, UTC) < cutoff:
                path.unlink()
        except FileNotFoundError:  # finished (renamed) or removed meanwhile
            continue


def fsync_dir(path: Path) -> None:
    """Make a rename or unlink in `path` durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def new_id(now: datetime | None = None) -> str:
    """Sortable and unguessable: UTC time to the millisecond, then 80 random bits.
    The T and Z split the digits: a 17-digit run would pass Luhn one time in ten and read
    as a card number to any DLP scanner of our logs (ours included)."""
    now = now or datetime.now(UTC)
    stamp = now.strftime("%Y%m%dT%H%M%S") + f"{now.microsecond // 1000:03d}Z"
    token = base64.b32encode(secrets.token_bytes(10)).decode().lower()
    return f"{stamp}-{token}"

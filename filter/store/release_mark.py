"""The release mark: lets mailgate's milter recognise mail it has itself released.

A message released from the quarantine through a Postfix that runs mailgate's milter would be
held again. The release adds `X-Mailgate-Released: v1; id=<qid>; t=<unix time>; mac=<hex>`,
an HMAC-SHA256 under a secret kept beside the quarantine (mode 0600). The MAC binds the
quarantine id, the time and a SHA-256 of the BODY (everything after the first blank line,
line ends normalised to CRLF): Postfix adds headers on the way, but a mark copied onto other
content does not verify, and a forged one needs the secret.

`released_id` is the one check both doors make: the mark works once, for the held message's
own envelope, while its release is in flight; the doors also remove the header.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import os
import re
import secrets
import stat
import time
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING

from mailgate.filter.store.quarantine import QuarantineError

if TYPE_CHECKING:
    from mailgate.filter.policy.envelope import Envelope
    from mailgate.filter.store.quarantine import QuarantineStore

RELEASE_HEADER = "X-Mailgate-Released"
SECRET_FILE = "release.key"
# Long enough for a message to sit in a deferred queue (Postfix maximal_queue_lifetime: 5d).
DEFAULT_MAX_AGE = timedelta(days=7)

_MARK_RE = re.compile(r"^\s*v1;\s*id=([\w-]{1,64});\s*t=(\d{1,12});\s*mac=([0-9a-f]{64})\s*$")


class ReleaseSecretError(Exception):
    """The release secret cannot be read, or others could read it."""


def load_or_create_secret(quarantine_path: Path) -> bytes:
    """The 32-byte secret in quarantine_path/release.key, created 0600 on first use.

    Several processes may start at once: the secret is written to a private temporary file and
    linked into place, so a reader never sees a half-written file and exactly one wins.
    """
    folder = Path(quarantine_path)
    folder.mkdir(mode=0o750, parents=True, exist_ok=True)
    path = folder / SECRET_FILE
    if not path.exists():
        tmp = folder / f".{SECRET_FILE}.{os.getpid()}.{secrets.token_hex(4)}"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, secrets.token_hex(32).encode() + b"\n")
            os.fsync(fd)
            os.close(fd)
            # FileExistsError: another process won the race; use its secret.
            with contextlib.suppress(FileExistsError):
                os.link(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
    mode = path.stat().st_mode
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise ReleaseSecretError(
            f"{path} is readable by others (mode {stat.S_IMODE(mode):o}); "
            f"anyone who reads it can bypass the quarantine: chmod 600 {path}"
        )
    try:
        secret = bytes.fromhex(path.read_text().strip())
    except (OSError, ValueError) as exc:
        raise ReleaseSecretError(f"{path}: not a usable release secret: {exc}") from None
    if len(secret) < 16:
        raise ReleaseSecretError(f"{path}: secret too short")
    return secret


def body_digest(raw: bytes) -> bytes:
    """SHA-256 of the body with CRLF line ends and one final CRLF (SMTP adds it anyway)."""
    normalised = re.sub(rb"\r\n|\r|\n", b"\r\n", raw)
    end = normalised.find(b"\r\n\r\n")
    body = normalised[end + 4 :] if end >= 0 else b""
    if body and not body.endswith(b"\r\n"):
        body += b"\r\n"
    return hashlib.sha256(body).digest()


def _mac(secret: bytes, qid: str, issued: int, raw: bytes) -> str:
    message = b"mailgate-release-v1\0%s\0%d\0%s" % (qid.encode(), issued, body_digest(raw))
    return hmac.new(secret, message, hashlib.sha256).hexdigest()


def make_mark(secret: bytes, qid: str, raw: bytes, now: float | None = None) -> str:
    """The header value to add to a released message."""
    issued = int(time.time() if now is None else now)
    return f"v1; id={qid}; t={issued}; mac={_mac(secret, qid, issued, raw)}"


def mark_id(header_value: str) -> str | None:
    """The quarantine id a mark claims (unverified); None if it is not a mark."""
    match = _MARK_RE.match(header_value)
    return match.group(1) if match else None


def verify_mark(
    secret: bytes,
    header_value: str,
    raw: bytes,
    max_age: timedelta | None = DEFAULT_MAX_AGE,
    now: float | None = None,
) -> bool:
    """True if the mark was made with this secret for this body and is not older than
    max_age. Compared in constant time."""
    match = _MARK_RE.match(header_value)
    if not match:
        return False
    qid, issued, mac = match.group(1), int(match.group(2)), match.group(3)
    if max_age is not None:
        age = (time.time() if now is None else now) - issued
        if age > max_age.total_seconds() or age < -300:  # 5 minutes of clock skew allowed
            return False
    return hmac.compare_digest(_mac(secret, qid, issued, raw), mac)


def released_id(
    secret: bytes | None, store: QuarantineStore, mark: str, raw: bytes, envelope: Envelope
) -> str | None:
    """The quarantine id when this message is mailgate's own release of a held message, in
    flight: the mark verifies (this quarantine's secret, this body, recent), the message is
    still "held" (the releaser records "released" once the next hop has said 250, so the hop
    that checks sees "held"; after that a copied mark is void, a mark works once), and the
    envelope is the held message's own (same sender, recipients among its recipients), so a
    mark cannot carry other mail past the rules or to anyone else. None otherwise: the
    message is scanned like any other."""
    qid = mark_id(mark)
    if secret is None or qid is None or not verify_mark(secret, mark, raw):
        return None
    try:
        record = store.get(qid)
    except QuarantineError:
        return None
    held_for = {r.lower() for r in record.recipients}
    if (
        record.state != "held"
        or envelope.mail_from.lower() != record.sender.lower()
        or not {r.lower() for r in envelope.rcpt_tos} <= held_for
    ):
        return None
    return qid

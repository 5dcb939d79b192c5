"""The release mark: lets mailgate's doors recognise mail it is itself releasing.

A message released from the quarantine through a Postfix that runs mailgate's milter (or
through another mailgate relay) would be held again. The release adds, as the message's first
header, `X-Mailgate-Released: v2; id=<qid>; n=<nonce>; t=<unix time>; mac=<hex>`: an
HMAC-SHA256 under a secret (`release.key` beside a local quarantine, mode 0600; in the
database for a fleet) of the id, the nonce, the time and a digest of the message as released:
every header after the mark (relaxed: names in lower case, values unfolded, runs of white space
as one space) except the trace headers an MTA adds in transit (Received, Return-Path,
Delivered-To, X-Original-To, and Date and Message-ID, which Postfix adds where they are
missing), and the body (line ends as CRLF). A hop may put headers before the mark; a changed
Subject, an added header or other content after it does not verify, and a forged mark needs
the secret.

The nonce is the release's claim in the store (see lifecycle): `released_id`, the one check
both doors make, spends it at the first verification, whatever follows, and only while that
release is in flight. A copied mark, a replay after the release ended (sent, failed or
unknown), or a second use of the same mark is just a header: the message is scanned.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import logging
import os
import re
import secrets
import stat
import time
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from mailgate.filter.policy.envelope import Envelope
    from mailgate.filter.store.quarantine import QuarantineStore

log = logging.getLogger("mailgate.release")

RELEASE_HEADER = "X-Mailgate-Released"
SECRET_FILE = "release.key"
# Long enough for a message to sit in a deferred queue (Postfix maximal_queue_lifetime: 5d).
DEFAULT_MAX_AGE = timedelta(days=7)

_MARK_RE = re.compile(
    r"^\s*v2;\s*id=([\w-]{1,64});\s*n=([0-9a-f]{16});\s*t=(\d{1,12});\s*mac=([0-9a-f]{64})\s*$"
)
# Added or rewritten by MTAs on the way, so not covered (see the module doc).
_IN_TRANSIT = frozenset(
    {"received", "return-path", "delivered-to", "x-original-to", "date", "message-id"}
)


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


def released_digest(message: bytes) -> bytes:
    """SHA-256 of what the mark covers in `message` (the part after the mark header)."""
    normalised = re.sub(rb"\r\n|\r|\n", b"\r\n", message)
    if normalised.startswith(b"\r\n"):
        head, body = b"", normalised[2:]
    else:
        head, _, body = normalised.partition(b"\r\n\r\n")
    if body and not body.endswith(b"\r\n"):
        body += b"\r\n"  # SMTP adds the final line end anyway
    digest = hashlib.sha256()
    for field in re.split(rb"\r\n(?![ \t])", head):
        name, colon, value = field.partition(b":")
        name = name.strip().lower()
        if not colon or name.decode("ascii", "replace") in _IN_TRANSIT:
            continue
        value = re.sub(rb"[ \t]+", b" ", value.replace(b"\r\n", b"")).strip()
        digest.update(name + b":" + value + b"\r\n")
    digest.update(b"\r\n" + body)
    return digest.digest()


def _mac(secret: bytes, qid: str, nonce: str, issued: int, message: bytes) -> str:
    text = b"mailgate-release-v2\0%s\0%s\0%d\0%s" % (
        qid.encode(),
        nonce.encode(),
        issued,
        released_digest(message),
    )
    return hmac.new(secret, text, hashlib.sha256).hexdigest()


def make_mark(secret: bytes, qid: str, nonce: str, raw: bytes, now: float | None = None) -> str:
    """The header value to put in front of `raw` (the held message) when releasing it."""
    issued = int(time.time() if now is None else now)
    return f"v2; id={qid}; n={nonce}; t={issued}; mac={_mac(secret, qid, nonce, issued, raw)}"


def marked(secret: bytes, qid: str, nonce: str, raw: bytes) -> bytes:
    """The held message as released: the mark first, then the message as held."""
    return f"{RELEASE_HEADER}: {make_mark(secret, qid, nonce, raw)}\r\n".encode() + raw


@dataclass(frozen=True)
class Mark:
    qid: str
    nonce: str
    issued: int
    mac: str


def parse_mark(header_value: str) -> Mark | None:
    """The mark's fields (unverified); None if it is not a mark."""
    match = _MARK_RE.match(header_value)
    if not match:
        return None
    return Mark(match.group(1), match.group(2), int(match.group(3)), match.group(4))


def find_mark(message: bytes) -> tuple[str, int, int] | None:
    """The first release mark among the message's headers: (value unfolded, start, end), the
    header's byte span. None when there is none."""
    end = _header_end(message)
    pattern = re.compile(
        rb"^" + RELEASE_HEADER.encode() + rb"[ \t]*:(.*(?:\r?\n[ \t].*)*)\r?\n", re.I | re.M
    )
    found = pattern.search(message, 0, end)
    if found is None:
        return None
    value = re.sub(rb"\r?\n", b"", found.group(1)).decode("ascii", "replace").strip()
    return value, found.start(), found.end()


def _header_end(message: bytes) -> int:
    for separator in (b"\r\n\r\n", b"\n\n"):
        position = message.find(separator)
        if position >= 0:
            return position + len(separator)
    return len(message)


def verify_mark(
    secret: bytes,
    header_value: str,
    covered: bytes,
    max_age: timedelta | None = DEFAULT_MAX_AGE,
    now: float | None = None,
) -> bool:
    """True if the mark was made with this secret for this content (`covered`: the message
    after the mark's header) and is not older than max_age. Compared in constant time."""
    mark = parse_mark(header_value)
    if mark is None:
        return False
    if max_age is not None:
        age = (time.time() if now is None else now) - mark.issued
        if age > max_age.total_seconds() or age < -300:  # 5 minutes of clock skew allowed
            return False
    expected = _mac(secret, mark.qid, mark.nonce, mark.issued, covered)
    return hmac.compare_digest(expected, mark.mac)


def released_id(
    secret: bytes | None, store: QuarantineStore, message: bytes, envelope: Envelope
) -> tuple[str, bytes] | None:
    """(the quarantine id, the message without its mark) when this message is mailgate's own
    release of a held message, in flight: the mark verifies (this store's secret, this
    content, recent), its nonce is the claim of the release now running and is spent here,
    once (a second look finds it spent, whatever the first one decided), and the envelope is
    the held message's own (same sender, recipients among its recipients), so a mark cannot
    carry other mail past the rules or to anyone else. None otherwise: the message is
    scanned like any other."""
    found = find_mark(message)
    if secret is None or found is None:
        return None
    value, start, end = found
    mark = parse_mark(value)
    if mark is None or not verify_mark(secret, value, message[end:]):
        return None
    try:
        held = store.consume_mark(mark.qid, mark.nonce)
    except Exception as exc:  # the store cannot answer now (its database away)
        log.warning("release mark for %s not checked (%s): scanned as usual", mark.qid, exc)
        return None
    if held is None:
        return None
    sender, recipients = held
    held_for = {r.lower() for r in recipients}
    if (
        envelope.mail_from.lower() != sender.lower()
        or not {r.lower() for r in envelope.rcpt_tos} <= held_for
    ):
        return None
    return mark.qid, message[:start] + message[end:]

"""The release mark survives what Postfix does to a message and nothing else."""

from __future__ import annotations

import multiprocessing
import os
import stat
import time
from datetime import timedelta
from pathlib import Path

import pytest

from mailgate.filter.store.release_mark import (
    RELEASE_HEADER,
    SECRET_FILE,
    ReleaseSecretError,
    find_mark,
    load_or_create_secret,
    make_mark,
    marked,
    parse_mark,
    verify_mark,
)

QID = "20240601T120000123Z-abcdefghijklmnop"
NONCE = "0123456789abcdef"
RAW = (
    b"From: alice@example.com\r\nTo: bob@example.net\r\nSubject: held\r\n"
    b"Message-ID: <m1@example.com>\r\n\r\nline one\r\nline two\r\n"
)


@pytest.fixture
def secret(tmp_path: Path) -> bytes:
    return load_or_create_secret(tmp_path)


def covered(message: bytes) -> tuple[str, bytes]:
    """The mark in a message and what it covers, as a door reads them."""
    found = find_mark(message)
    assert found is not None
    value, _, end = found
    return value, message[end:]


def test_round_trip(secret: bytes) -> None:
    assert RELEASE_HEADER == "X-Mailgate-Released"
    mark = make_mark(secret, QID, NONCE, RAW)
    parsed = parse_mark(mark)
    assert parsed is not None and (parsed.qid, parsed.nonce) == (QID, NONCE)
    value, rest = covered(marked(secret, QID, NONCE, RAW))
    assert value == mark and rest == RAW
    assert verify_mark(secret, mark, RAW)


def test_survives_what_hops_do(secret: bytes) -> None:
    released = marked(secret, QID, NONCE, RAW)
    via_postfix = (
        b"Received: from localhost by mx.example.com (Postfix) with ESMTP id 4QxYz1\r\n"
        + released.replace(b"Subject: held", b"Subject:\r\n\theld").replace(  # refolded
            b"\r\n\r\n", b"\r\nDate: Mon, 3 Jun 2024 12:00:00 +0000\r\n\r\n"
        )
    )
    value, rest = covered(via_postfix)
    assert verify_mark(secret, value, rest)
    value, rest = covered(via_postfix.replace(b"\r\n", b"\n"))
    assert verify_mark(secret, value, rest)
    assert verify_mark(secret, value, RAW.rstrip(b"\r\n"))  # SMTP adds the final line end


def test_refuses_other_content_headers_included_and_forgeries(
    secret: bytes, tmp_path: Path
) -> None:
    mark = make_mark(secret, QID, NONCE, RAW)
    assert not verify_mark(secret, mark, RAW.replace(b"line two", b"line 2"))
    assert not verify_mark(secret, mark, RAW + b"appended\r\n")
    # Issue 10 #4: headers carry content too: a new Subject, an added header.
    card = b"4111 1111 1111 1111"
    assert not verify_mark(secret, mark, RAW.replace(b"Subject: held", b"Subject: " + card))
    assert not verify_mark(
        secret, mark, RAW.replace(b"\r\n\r\n", b"\r\nX-Note: " + card + b"\r\n\r\n")
    )
    assert not verify_mark(secret, mark, RAW.replace(b"To: bob", b"To: eve"))
    other_secret = load_or_create_secret(tmp_path / "other")
    assert other_secret != secret
    assert not verify_mark(other_secret, mark, RAW)
    other_id = mark.replace(QID, "20240601T120000123Z-zzzzzzzzzzzzzzzz")
    assert not verify_mark(secret, other_id, RAW)
    assert not verify_mark(secret, mark.replace(NONCE, "f" * 16), RAW)
    later = mark.replace(f"t={mark.split('t=')[1].split(';')[0]}", f"t={int(time.time()) + 1}")
    assert not verify_mark(secret, later, RAW)
    version1 = f"v1; id={QID}; t={int(time.time())}; mac={'0' * 64}"
    for garbage in ("", "yes", "v2; id=x; n=1; t=1; mac=00", version1, mark.replace("v2", "v3")):
        assert not verify_mark(secret, garbage, RAW)
        assert parse_mark(garbage) is None


def test_expires(secret: bytes) -> None:
    issued = time.time() - timedelta(days=8).total_seconds()
    old = make_mark(secret, QID, NONCE, RAW, now=issued)
    assert not verify_mark(secret, old, RAW)
    assert verify_mark(secret, old, RAW, max_age=timedelta(days=9))
    assert verify_mark(secret, old, RAW, max_age=None)


def test_only_the_header_section_is_searched() -> None:
    in_body = RAW + f"{RELEASE_HEADER}: v2; id={QID}\r\n".encode()
    assert find_mark(in_body) is None
    folded = f"Received: x\r\n{RELEASE_HEADER}: v2; id={QID};\r\n n={NONCE}\r\n".encode() + RAW
    found = find_mark(folded)
    assert found is not None and found[0] == f"v2; id={QID}; n={NONCE}"
    assert folded[found[2] :] == RAW


def test_secret_file(tmp_path: Path) -> None:
    first = load_or_create_secret(tmp_path)
    path = tmp_path / SECRET_FILE
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert len(first) == 32 and load_or_create_secret(tmp_path) == first
    os.chmod(path, 0o644)
    with pytest.raises(ReleaseSecretError, match="chmod 600"):
        load_or_create_secret(tmp_path)
    os.chmod(path, 0o600)
    path.write_text("not hex\n")
    with pytest.raises(ReleaseSecretError):
        load_or_create_secret(tmp_path)


def _load(path: Path, queue: multiprocessing.Queue) -> None:
    queue.put(load_or_create_secret(path))


def test_processes_starting_together_share_one_secret(tmp_path: Path) -> None:
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_load, args=(tmp_path, queue)) for _ in range(6)]
    for p in procs:
        p.start()
    secrets = {queue.get(timeout=30) for _ in procs}
    for p in procs:
        p.join(30)
    assert len(secrets) == 1
    assert [p.name for p in tmp_path.iterdir()] == [SECRET_FILE]  # no temporary left behind

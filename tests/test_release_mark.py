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
    load_or_create_secret,
    make_mark,
    mark_id,
    verify_mark,
)

QID = "20240601T120000123Z-abcdefghijklmnop"
RAW = (
    b"From: alice@example.com\r\nTo: bob@example.net\r\nSubject: held\r\n\r\n"
    b"line one\r\nline two\r\n"
)


@pytest.fixture
def secret(tmp_path: Path) -> bytes:
    return load_or_create_secret(tmp_path)


def test_round_trip(secret: bytes) -> None:
    assert RELEASE_HEADER == "X-Mailgate-Released"
    mark = make_mark(secret, QID, RAW)
    assert mark_id(mark) == QID
    assert verify_mark(secret, mark, RAW)


def test_survives_added_headers_and_line_ends(secret: bytes) -> None:
    mark = make_mark(secret, QID, RAW)
    via_postfix = (
        f"{RELEASE_HEADER}: {mark}\r\n".encode()
        + b"Received: from localhost by mx.example.com (Postfix) with ESMTP id 4QxYz1\r\n"
        + RAW
    )
    assert verify_mark(secret, mark, via_postfix)
    assert verify_mark(secret, mark, via_postfix.replace(b"\r\n", b"\n"))
    assert verify_mark(secret, mark, RAW.rstrip(b"\r\n"))  # SMTP adds the final line end


def test_refuses_other_content_and_forgeries(secret: bytes, tmp_path: Path) -> None:
    mark = make_mark(secret, QID, RAW)
    assert not verify_mark(secret, mark, RAW.replace(b"line two", b"line 2"))
    assert not verify_mark(secret, mark, RAW + b"appended\r\n")
    other_secret = load_or_create_secret(tmp_path / "other")
    assert other_secret != secret
    assert not verify_mark(other_secret, mark, RAW)
    other_id = mark.replace(QID, "20240601T120000123Z-zzzzzzzzzzzzzzzz")
    assert not verify_mark(secret, other_id, RAW)
    later = mark.replace(f"t={mark.split('t=')[1].split(';')[0]}", f"t={int(time.time()) + 1}")
    assert not verify_mark(secret, later, RAW)
    for garbage in ("", "yes", "v1; id=x; t=1; mac=00", mark.replace("v1", "v2")):
        assert not verify_mark(secret, garbage, RAW)
        assert mark_id(garbage) is None


def test_expires(secret: bytes) -> None:
    issued = time.time() - timedelta(days=8).total_seconds()
    old = make_mark(secret, QID, RAW, now=issued)
    assert not verify_mark(secret, old, RAW)
    assert verify_mark(secret, old, RAW, max_age=timedelta(days=9))
    assert verify_mark(secret, old, RAW, max_age=None)


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

"""Scan workers are confined: a parser exploit in a worker cannot read the release key.

The confinement is tried for real: in a forked child (the worker's own `confine`) and in the
pool's workers, whose /proc status the test reads. Needs root (to drop to `nobody`) or a
kernel with Landlock; the README (Testing) names this skip reason.
"""

from __future__ import annotations

import asyncio
import codecs
import multiprocessing
import os
from pathlib import Path

import pytest

from mailgate.filter import Action, Engine, Envelope, ScanPool
from mailgate.filter.scan.confine import Confinement, confine, landlock_available
from mailgate.filter.scan.engine import envelope_from_headers

ROOT = Path(__file__).resolve().parent.parent
CAN_CONFINE = os.geteuid() == 0 or landlock_available()
needs_confinement = pytest.mark.skipif(
    not CAN_CONFINE, reason="needs root or Landlock to confine workers (see README: Testing)"
)


def _try_after_confine(secret: str, conn: multiprocessing.connection.Connection) -> None:
    applied = confine(Confinement())
    outcome = {"applied": applied}
    try:
        with open(secret, "rb") as f:
            outcome["read"] = f.read()
    except OSError as exc:
        outcome["error"] = type(exc).__name__
    try:
        with open(secret + ".new", "wb") as f:
            f.write(b"x")
        outcome["wrote"] = True
    except OSError:
        outcome["wrote"] = False
    # a codec never used before still loads: a rare charset must not crash the worker
    outcome["codec"] = codecs.decode(b"\xa4", "cp1006")
    conn.send(outcome)


@needs_confinement
def test_a_confined_process_cannot_read_or_write_the_release_key(tmp_path: Path) -> None:
    secret = tmp_path / "release.key"
    secret.write_bytes(b"top secret")
    secret.chmod(0o600)
    parent, child = multiprocessing.get_context("fork").Pipe()
    process = multiprocessing.get_context("fork").Process(
        target=_try_after_confine, args=(str(secret), child)
    )
    process.start()
    assert parent.poll(30)
    outcome = parent.recv()
    process.join(10)
    assert "read" not in outcome, outcome
    assert outcome["error"] == "PermissionError"
    assert outcome["wrote"] is False
    assert not (tmp_path / "release.key.new").exists()
    assert outcome["codec"] == codecs.decode(b"\xa4", "cp1006")
    assert "no_new_privs" in outcome["applied"]


def _status(pid: int) -> dict[str, str]:
    lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    return dict(line.split(":\t", 1) for line in lines if ":\t" in line)


@needs_confinement
def test_pool_workers_run_confined_and_still_judge(tmp_path: Path) -> None:
    async def run() -> None:
        pool = ScanPool(ROOT / "rules", workers=1)
        await pool.start()
        try:
            (worker,) = pool._all
            status = _status(worker.process.pid)
            assert status["NoNewPrivs"].strip() == "1"
            if os.geteuid() == 0:
                assert status["Uid"].split()[0] == str(65534)  # nobody
            raw = (
                b"Subject: =?koi8-r?B?9MXT1A==?=\r\nContent-Type: text/plain; charset=cp1006\r\n"
                b"\r\nCard 4111 1111 1111 1111\r\n"
            )
            verdict = await pool.scan(raw, Envelope("a@example.com", ("b@example.net",)))
            assert verdict.action is Action.QUARANTINE
            assert "card-number" in verdict.rules
        finally:
            await pool.close()

    asyncio.run(run())


def test_an_unknown_worker_user_stops_the_pool_from_starting() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root to switch users (see README: Testing)")

    async def run() -> None:
        pool = ScanPool(ROOT / "rules", workers=1, confinement=Confinement(user="no-such-user"))
        with pytest.raises(OSError, match="cannot confine the worker"):
            await pool.start()
        await pool.close()

    asyncio.run(run())


@needs_confinement
def test_confined_workers_judge_every_golden_example_as_the_engine_does() -> None:
    """Confinement must change nothing a worker sees: libmagic, PDFium, archives and the
    codecs all work the same behind Landlock and as `nobody` (libmagic denied its database
    once called every file `data`, so executables went unrecognised)."""
    examples = sorted((ROOT / "rules" / "examples").glob("*.eml"))
    engine = Engine.load(ROOT / "rules")

    async def run() -> None:
        pool = ScanPool(ROOT / "rules", workers=2)
        await pool.start()
        try:
            for path in examples:
                raw = path.read_bytes()
                envelope = envelope_from_headers(raw)
                confined = await pool.scan(raw, envelope)
                direct = engine.scan(raw, envelope)
                assert (confined.action, confined.rules, confined.unscannable) == (
                    direct.action,
                    direct.rules,
                    direct.unscannable,
                ), path.name
        finally:
            await pool.close()

    assert len(examples) > 40
    asyncio.run(run())

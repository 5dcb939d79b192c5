"""The worker pool: real worker processes, a time and memory budget per message, pack swaps."""

from __future__ import annotations

import asyncio
import os
import signal
import threading
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from mailgate.filter.policy.envelope import Envelope
from mailgate.filter.policy.pack import PackError, PackSource
from mailgate.filter.policy.verdict import Action
from mailgate.filter.scan.pool import ScanPool
from tests.support.packs import BLOCK_WORD, write_pack
from tests.support.samples import message

ENV = Envelope("alice@corp.example", ("bob@partner.example",), door="relay")
PACK = (
    "rules:\n"
    + BLOCK_WORD
    + """\
  - id: unscannable
    when: [{unscannable: [timeout, over_budget, malformed]}]
    action: quarantine
    reason: Could not be scanned
"""
)


def run(coro_fn: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(asyncio.wait_for(coro_fn(), 120))


def test_workers_judge_messages_concurrently(tmp_path: Path) -> None:
    async def go() -> None:
        pool = ScanPool(write_pack(tmp_path / "rules", PACK), workers=2)
        await pool.start()
        try:
            verdicts = await asyncio.gather(
                *(pool.scan(message("reject-me" if i % 2 else "fine"), ENV) for i in range(20))
            )
            actions = [v.action for v in verdicts]
            assert actions == [Action.REJECT if i % 2 else Action.ACCEPT for i in range(20)]
            assert all(v.pack_version == pool.pack_version for v in verdicts)
        finally:
            await pool.close()

    run(go)


def test_overrun_is_judged_as_timeout_and_the_worker_replaced(tmp_path: Path) -> None:
    async def go() -> None:
        pool = ScanPool(write_pack(tmp_path / "rules", PACK), workers=1, time_budget=0.05)
        await pool.start()
        try:
            # Megabytes of HTML to render take far longer than 50 ms.
            slow = message("big", b"<p>" + b"<b>x</b> 1234 " * 600_000 + b"</p>\r\n")
            slow = slow.replace(b"\r\n\r\n", b"\r\nContent-Type: text/html\r\n\r\n", 1)
            verdict = await pool.scan(slow, ENV)
            assert verdict.unscannable == ["timeout"]
            assert verdict.action is Action.QUARANTINE and verdict.rules == ["unscannable"]
            assert verdict.engine_error is None
            pool.time_budget = 30
            after = await pool.scan(message("reject-me"), ENV)
            assert after.action is Action.REJECT  # a fresh worker took over
        finally:
            await pool.close()

    run(go)


def test_message_over_the_memory_budget_is_judged_over_budget(tmp_path: Path) -> None:
    async def go() -> None:
        pool = ScanPool(write_pack(tmp_path / "rules", PACK), workers=1, memory_budget=8 << 20)
        await pool.start()
        try:
            huge = message("huge", b"A" * (64 << 20))
            verdict = await pool.scan(huge, ENV)
            assert verdict.unscannable == ["over_budget"]
            assert verdict.action is Action.QUARANTINE
            assert (await pool.scan(message("reject-me"), ENV)).action is Action.REJECT
        finally:
            await pool.close()

    run(go)


def test_pack_swap_is_atomic_and_a_broken_pack_keeps_the_old_one(tmp_path: Path) -> None:
    async def go() -> None:
        rules = write_pack(tmp_path / "rules", PACK)
        pool = ScanPool(rules, workers=2)
        await pool.start()
        try:
            old_version = pool.pack_version
            write_pack(rules, PACK.replace("reject-me", "refuse-me"))
            assert await pool.reload() != old_version
            assert (await pool.scan(message("reject-me"), ENV)).action is Action.ACCEPT
            verdict = await pool.scan(message("refuse-me"), ENV)
            assert verdict.action is Action.REJECT and verdict.pack_version == pool.pack_version
            new_version = pool.pack_version
            write_pack(rules, "rules:\n  - id: x\n    when: [{nope: 1}]\n")
            with pytest.raises(PackError):
                await pool.reload()
            assert pool.pack_version == new_version
            assert (await pool.scan(message("refuse-me"), ENV)).action is Action.REJECT
        finally:
            await pool.close()

    run(go)


def test_in_flight_message_finishes_on_the_pack_it_started_with(tmp_path: Path) -> None:
    async def go() -> None:
        pool = ScanPool(write_pack(tmp_path / "rules", PACK), workers=1)
        await pool.start()
        try:
            old_version = pool.pack_version
            slow = message("reject-me", b"1234 word " * 400_000)
            in_flight = asyncio.ensure_future(pool.scan(slow, ENV))
            while pool._idle._workers:  # in flight once the only worker has taken it
                await asyncio.sleep(0)
            await pool.replace(PackSource({"policy.yaml": b"rules: []\n"}))
            verdict = await in_flight
            assert verdict.pack_version == old_version and verdict.action is Action.REJECT
            after = await pool.scan(message("reject-me"), ENV)
            assert after.action is Action.ACCEPT and after.pack_version == pool.pack_version
        finally:
            await pool.close()

    run(go)


def test_pool_that_cannot_answer_says_so(tmp_path: Path) -> None:
    async def go() -> None:
        pool = ScanPool(write_pack(tmp_path / "rules", PACK), workers=1)
        verdict = await pool.scan(message("x"), ENV)  # never started
        assert verdict.action is Action.TEMPFAIL and verdict.engine_error
        assert (verdict.smtp_code, verdict.smtp_status) == (451, "4.3.0")
        with pytest.raises(PackError):
            await ScanPool(tmp_path / "missing", workers=1).start()

    run(go)


def test_hostile_messages_all_get_a_verdict_within_the_budget(tmp_path: Path) -> None:
    """Every hostile message of the parser's corpus, through real workers and the shipped pack:
    a verdict for each, none an engine failure, and the pool still serving afterwards."""
    from tests.support import samples
    from tests.support.hostile import HOSTILE

    corpus = dict(HOSTILE)
    corpus["zip-bomb"] = samples.mime_message(
        samples.attachment_part(samples.zip_bomb(), "zeros.zip", "application/zip")
    )
    corpus["lying-zip"] = samples.mime_message(
        samples.attachment_part(samples.lying_size_zip(), "l.zip", "application/zip")
    )
    shipped = Path(__file__).resolve().parent.parent / "rules"

    async def go() -> None:
        pool = ScanPool(shipped, workers=2, time_budget=10)
        await pool.start()
        try:
            names = list(corpus)
            verdicts = await asyncio.gather(*(pool.scan(corpus[n], ENV) for n in names))
            for name, verdict in zip(names, verdicts, strict=True):
                assert verdict.engine_error is None, name
                assert verdict.pack_version == pool.pack_version, name
            assert (await pool.scan(message("fine"), ENV)).action is Action.ACCEPT
        finally:
            await pool.close()

    run(go)


def test_blocking_scans_from_many_threads_share_the_workers(tmp_path: Path) -> None:
    """The milter's path: libmilter threads talk to the workers themselves while the pool is
    managed on its own loop in another thread."""
    import threading
    from concurrent.futures import ThreadPoolExecutor

    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()

    def on_loop(coro: Awaitable[object]) -> object:
        return asyncio.run_coroutine_threadsafe(coro, loop).result(60)  # type: ignore[arg-type]

    # A generous budget while verdicts are compared: a busy machine must not turn them into
    # timeouts. The overrun below sets its own.
    pool = ScanPool(write_pack(tmp_path / "rules", PACK), workers=2, time_budget=30)
    on_loop(pool.start())
    try:
        subjects = ["reject-me" if i % 3 == 0 else "fine" for i in range(30)]
        with ThreadPoolExecutor(max_workers=8) as threads:
            verdicts = list(
                threads.map(lambda s: pool.scan_blocking(message(s), ENV, 30), subjects)
            )
        assert [v.action for v in verdicts] == [
            Action.REJECT if s == "reject-me" else Action.ACCEPT for s in subjects
        ]
        slow = message("big", b"<p>" + b"<b>x</b> 1234 " * 600_000 + b"</p>\r\n")
        slow = slow.replace(b"\r\n\r\n", b"\r\nContent-Type: text/html\r\n\r\n", 1)
        pool.time_budget = 0.05
        overrun = pool.scan_blocking(slow, ENV, 30)  # the pool's budget: judged by the pack
        assert overrun.unscannable == ["timeout"] and overrun.action is Action.QUARANTINE
        cut = pool.scan_blocking(slow, ENV, 0.01)  # the caller's budget: no verdict
        assert cut.engine_error and cut.action is Action.TEMPFAIL
        pool.time_budget = 30
        assert pool.scan_blocking(message("reject-me"), ENV, 30).action is Action.REJECT
    finally:
        on_loop(pool.close())
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)


def test_worker_killed_mid_scan_gives_a_verdict_and_a_replacement(tmp_path: Path) -> None:
    """A worker that dies under a message (a parser crash, the OOM killer) costs that message
    an `unscannable: [malformed]` verdict from the parent, and the pool a fresh worker."""

    async def go() -> None:
        pool = ScanPool(write_pack(tmp_path / "rules", PACK), workers=1, time_budget=60)
        await pool.start()
        try:
            slow = message("big", b"<p>" + b"<b>x</b> 1234 " * 600_000 + b"</p>\r\n")
            slow = slow.replace(b"\r\n\r\n", b"\r\nContent-Type: text/html\r\n\r\n", 1)
            in_flight = asyncio.ensure_future(pool.scan(slow, ENV))
            while pool._idle._workers:  # in flight once the only worker has taken it
                await asyncio.sleep(0)
            (victim,) = pool._all
            os.kill(victim.process.pid, signal.SIGKILL)
            verdict = await in_flight
            assert verdict.unscannable == ["malformed"]
            assert verdict.action is Action.QUARANTINE and verdict.rules == ["unscannable"]
            after = await pool.scan(message("reject-me"), ENV)
            assert after.action is Action.REJECT
            (replacement,) = pool._all
            assert replacement is not victim and replacement.process.is_alive()
        finally:
            await pool.close()

    run(go)


def test_a_worker_that_does_not_read_never_stalls_the_event_loop(tmp_path: Path) -> None:
    """The message goes to the worker in a memfd, only a small frame through the socket: a
    worker that takes nothing in (stopped here) leaves the door's event loop running. A
    message this size used to be written into the pipe on the loop, which then waited for
    the worker to read it. The worker is confined (the tests run as root), and still reads
    the message it was handed."""

    async def go() -> None:
        pool = ScanPool(write_pack(tmp_path / "rules", PACK), workers=1, time_budget=60)
        await pool.start()
        (worker,) = pool._all
        os.kill(worker.process.pid, signal.SIGSTOP)
        # A watchdog, so the test fails instead of hanging if the loop is stuck in a write.
        resume = threading.Timer(10, os.kill, (worker.process.pid, signal.SIGCONT))
        resume.start()
        try:
            body = b"a line of the quarterly report\r\n" * 30_000  # ~900 KB
            in_flight = asyncio.ensure_future(pool.scan(message("reject-me", body), ENV))
            started = time.monotonic()
            ticks = 0
            while time.monotonic() - started < 0.5:
                await asyncio.sleep(0.01)
                ticks += 1
            assert not in_flight.done()
            assert ticks >= 10 and time.monotonic() - started < 5  # the loop ran on
            resume.cancel()
            os.kill(worker.process.pid, signal.SIGCONT)
            verdict = await in_flight
            assert verdict.action is Action.REJECT and verdict.rules == ["block-word"]
        finally:
            resume.cancel()
            os.kill(worker.process.pid, signal.SIGCONT)
            await pool.close()

    run(go)


def test_a_free_worker_goes_to_the_caller_that_has_waited_longest(tmp_path: Path) -> None:
    """First come, first served: when every worker is busy, the callers get one in the order
    they asked, so under load no session waits while later ones are served (the relay's p99
    reply latency). Before, every waiter was woken and the same ones kept winning."""

    async def go() -> None:
        pool = ScanPool(write_pack(tmp_path / "rules", PACK), workers=1, time_budget=60)
        await pool.start()
        try:
            slow = message("big", b"<p>" + b"<b>x</b> 1234 " * 100_000 + b"</p>\r\n")
            slow = slow.replace(b"\r\n\r\n", b"\r\nContent-Type: text/html\r\n\r\n", 1)
            first = asyncio.ensure_future(pool.scan(slow, ENV))
            while pool._idle._workers:  # in flight once the only worker has taken it
                await asyncio.sleep(0)
            finished: list[int] = []
            queued = []
            for n in range(8):
                task = asyncio.ensure_future(pool.scan(message(f"fine {n}"), ENV))
                task.add_done_callback(lambda _, n=n: finished.append(n))
                queued.append(task)
                await asyncio.sleep(0.01)  # each in line before the next asks
            await asyncio.gather(first, *queued)
            assert finished == list(range(8))
        finally:
            await pool.close()

    run(go)

"""How a message reaches a scan worker and how a dead one is noticed: a small message in the
request itself, a larger one in its memfd, each whole; a worker that died while idle costs no
message its verdict and is replaced, on the milter's blocking path and the relay's loop."""

from __future__ import annotations

import asyncio
import os
import signal
import threading
import time
from collections.abc import Awaitable, Iterator
from pathlib import Path

import pytest

from mailgate.filter.policy.envelope import Envelope
from mailgate.filter.policy.verdict import Action
from mailgate.filter.scan.pool import INLINE_MESSAGE, ScanPool
from tests.support.packs import BLOCK_WORD, write_pack
from tests.support.samples import message

pytestmark = pytest.mark.timeout(120)

ENV = Envelope("alice@corp.example", ("bob@partner.example",), door="milter")
PACK = (
    "rules:\n"
    + BLOCK_WORD
    + """\
  - id: card-at-the-end
    when: [{dlp: credit_card}]
    action: quarantine
"""
)


class LoopThread:
    """The pool managed on its own event loop in another thread, as the milter runs it."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, coro: Awaitable[object]) -> object:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(60)  # type: ignore[arg-type]

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


@pytest.fixture(name="managed")
def managed_pool(tmp_path: Path) -> Iterator[tuple[ScanPool, LoopThread]]:
    looper = LoopThread()
    pool = ScanPool(write_pack(tmp_path / "rules", PACK), workers=1, time_budget=30)
    looper.run(pool.start())
    try:
        yield pool, looper
    finally:
        looper.run(pool.close())
        looper.stop()


def with_card_at_the_end(size: int, card: bool) -> bytes:
    """A message of `size` bytes whose last line holds a card number (or as many letters)."""
    last = b"Card 4111 1111 1111 1111\r\n" if card else b"Card xxxx xxxx xxxx xxxx\r\n"
    head = message("fine", b"")
    filler = b"a line of the quarterly report\r\n" * ((size - len(head) - len(last)) // 32)
    raw = message("fine", filler + last)
    return raw + b"." * (size - len(raw)) if len(raw) < size else raw


def test_a_message_reaches_the_worker_whole_in_the_request_or_in_its_memfd(managed) -> None:
    pool, _ = managed
    (worker,) = pool._all
    for size in (1000, worker.inline - 200, worker.inline + 200, 3 * INLINE_MESSAGE):
        for card in (True, False):
            raw = with_card_at_the_end(size, card)
            verdict = pool.scan_blocking(raw, ENV, 30)
            assert verdict.action is (Action.QUARANTINE if card else Action.ACCEPT), size
            assert verdict.rules == (["card-at-the-end"] if card else []), size


def kill_idle_worker(pool: ScanPool) -> None:
    (worker,) = pool._all
    os.kill(worker.process.pid, signal.SIGKILL)
    worker.process.join(10)
    assert not worker.process.is_alive()


def test_a_worker_dead_while_idle_costs_no_verdict_on_the_blocking_path(managed) -> None:
    """Before, it was retired and never replaced: the one-worker pool had none left, and the
    message waited its whole budget for a worker."""
    pool, _ = managed
    (dead,) = pool._all
    kill_idle_worker(pool)
    started = time.monotonic()
    verdict = pool.scan_blocking(message("reject-me"), ENV, 30)
    assert verdict.action is Action.REJECT and verdict.rules == ["block-word"]
    assert verdict.engine_error is None and not verdict.unscannable
    assert time.monotonic() - started < 25  # served by the replacement, not timed out
    (replacement,) = pool._all
    assert replacement is not dead and replacement.process.is_alive()


def test_a_worker_dead_while_idle_costs_no_verdict_on_the_loop(managed) -> None:
    pool, looper = managed
    kill_idle_worker(pool)
    verdict = looper.run(pool.scan(message("reject-me"), ENV))
    assert verdict.action is Action.REJECT and verdict.rules == ["block-word"]  # type: ignore[attr-defined]

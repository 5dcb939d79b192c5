"""Worker processes that run the engine, so no door's event loop ever does.

Each message gets a time budget and each worker a memory budget. A worker that overruns is
killed and replaced; its message is judged by the pack's `unscannable: [timeout]` rules in
the parent, which holds the same pack. A new pack is validated in the parent first and then
served by a fresh generation of workers; messages in flight finish on the pack they began with.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing
import os
import resource
from concurrent.futures import ThreadPoolExecutor
from multiprocessing.connection import Connection
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .engine import Engine
from .envelope import Envelope
from .message import ScanLimits
from .rules import PackSource
from .verdict import Action, Verdict

if TYPE_CHECKING:
    from .config import Config

log = logging.getLogger("mailgate.pool")

WARM_UP = b"Subject: warm-up\r\n\r\nCard 4111 1111 1111 1111, SSN 536-90-4187\r\n"
OUT_OF_MEMORY = 3  # a worker's exit code when a message does not fit its memory budget
_context = multiprocessing.get_context("forkserver")
_context.set_forkserver_preload(["mailgate.filter.engine"])


def _worker_main(conn: Connection, source: PackSource, limits: ScanLimits, memory: int) -> None:
    """Runs in the worker process: load the pack, then judge messages until told to stop."""
    engine = Engine.from_source(source, limits)
    engine.scan(WARM_UP, Envelope("", ()))  # compile lazily built detectors before real mail
    if memory:
        with open("/proc/self/statm") as statm:
            current = int(statm.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
        resource.setrlimit(resource.RLIMIT_AS, (current + memory, current + memory))
    conn.send(("ready", engine.version))
    while True:
        try:
            request = conn.recv()
            if request is None:
                return
            raw, envelope = request
            verdict = engine.scan(raw, envelope)
            del raw, request
            conn.send(verdict)
        except (EOFError, OSError):
            return
        except MemoryError:
            # Not even the message fits in the budget; the exit code tells the parent why.
            os._exit(OUT_OF_MEMORY)


class _Worker:
    def __init__(self, source: PackSource, limits: ScanLimits, memory: int, generation: int):
        self.generation = generation
        self.conn, child = _context.Pipe()
        self.process = _context.Process(
            target=_worker_main, args=(child, source, limits, memory), daemon=True
        )
        self.process.start()
        child.close()
        # One thread per worker does the blocking pipe I/O, off the event loop.
        self.io = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mailgate-worker-io")

    async def ready(self, timeout: float) -> None:
        loop = asyncio.get_running_loop()
        reply = await asyncio.wait_for(loop.run_in_executor(self.io, self.conn.recv), timeout)
        if reply[0] != "ready":
            raise RuntimeError(f"worker failed to start: {reply!r}")

    async def scan(self, raw: bytes, envelope: Envelope) -> Verdict:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.io, self._roundtrip, (raw, envelope))

    def _roundtrip(self, request: Any) -> Verdict:
        self.conn.send(request)
        return self.conn.recv()

    def stop(self, kill: bool = False) -> None:
        if kill:
            self.process.kill()
        else:
            with contextlib.suppress(OSError):
                self.conn.send(None)
        self.conn.close()
        self.io.shutdown(wait=False)
        self.process.join(timeout=0 if kill else 2)
        if self.process.is_alive():
            self.process.kill()


class ScanPool:
    def __init__(
        self,
        rules_dir: Path,
        workers: int | None = None,
        time_budget: float = 10.0,
        memory_budget: int = 512 << 20,
        limits: ScanLimits | None = None,
        start_timeout: float = 60.0,
    ) -> None:
        self.rules_dir = Path(rules_dir)
        self.size = workers or os.cpu_count() or 2
        self.time_budget = time_budget
        self.memory_budget = memory_budget
        self.limits = limits or ScanLimits()
        self.start_timeout = start_timeout
        self._engine: Engine | None = None  # the parent's copy, for verdicts without a worker
        self._source: PackSource | None = None
        self._generation = 0
        self._idle: asyncio.Queue[_Worker] = asyncio.Queue()
        self._all: set[_Worker] = set()
        self._closed = False
        self._tasks: set[asyncio.Future[None]] = set()

    @classmethod
    def from_config(cls, config: Config) -> ScanPool:
        return cls(
            config.rules,
            workers=config.engine.workers,
            time_budget=config.engine.time_budget,
            memory_budget=config.engine.memory_budget,
        )

    @property
    def pack_version(self) -> str:
        return self._engine.version if self._engine else ""

    @property
    def engine(self) -> Engine | None:
        return self._engine

    async def start(self) -> None:
        """Load the pack (raising PackError if it is broken) and start every worker."""
        await self.replace(PackSource.read(self.rules_dir))

    async def reload(self, rules_dir: Path | None = None) -> str:
        """Serve a new pack from the folder; the old one keeps serving if it does not load."""
        if rules_dir is not None:
            self.rules_dir = Path(rules_dir)
        await self.replace(PackSource.read(self.rules_dir))
        return self.pack_version

    async def replace(self, source: PackSource, engine: Engine | None = None) -> None:
        """Start a new generation of workers on `source`; retire the old one as it goes idle.
        `engine`: the parent's copy, when the caller already built it from `source`."""
        if engine is None:
            loop = asyncio.get_running_loop()
            engine = await loop.run_in_executor(None, Engine.from_source, source, self.limits)
        generation = self._generation + 1
        workers = [self._spawn(source, generation) for _ in range(self.size)]
        try:
            await asyncio.gather(*(w.ready(self.start_timeout) for w in workers))
        except BaseException:
            for w in workers:
                self._retire(w, kill=True)
            raise
        self._engine, self._source, self._generation = engine, source, generation
        for w in workers:
            self._idle.put_nowait(w)

    def _spawn(self, source: PackSource, generation: int) -> _Worker:
        worker = _Worker(source, self.limits, self.memory_budget, generation)
        self._all.add(worker)
        return worker

    def _retire(self, worker: _Worker, kill: bool = False) -> None:
        self._all.discard(worker)
        worker.stop(kill=kill)

    async def _acquire(self) -> _Worker:
        while True:
            worker = await self._idle.get()
            if worker.generation == self._generation and worker.process.is_alive():
                return worker
            self._retire(worker, kill=not worker.process.is_alive())

    def _release(self, worker: _Worker) -> None:
        if self._closed or worker.generation != self._generation:
            self._retire(worker)
        else:
            self._idle.put_nowait(worker)

    def _spawn_replacement(self, dead: _Worker) -> None:
        task = asyncio.ensure_future(self._replace_worker(dead))
        self._tasks.add(task)  # keep a reference until done, or the task may vanish
        task.add_done_callback(self._tasks.discard)

    async def _replace_worker(self, dead: _Worker) -> None:
        self._retire(dead, kill=True)
        if self._closed or self._source is None or dead.generation != self._generation:
            return
        worker = self._spawn(self._source, self._generation)
        try:
            await worker.ready(self.start_timeout)
        except Exception:
            log.exception("replacement worker failed to start")
            self._retire(worker, kill=True)
            return
        self._release(worker)

    async def scan(self, raw: bytes, envelope: Envelope) -> Verdict:
        """Judge one message; never raises. If no verdict can be had at all, the answer is
        TEMPFAIL with `engine_error` set, and the door decides whether to fail open."""
        if self._engine is None or self._closed:
            return _engine_failure("the rules engine is not running")
        try:
            worker = await asyncio.wait_for(self._acquire(), self.start_timeout)
        except TimeoutError:
            return _engine_failure("no engine worker became free in time")
        try:
            verdict = await asyncio.wait_for(worker.scan(raw, envelope), self.time_budget)
        except TimeoutError:
            log.warning("scan overran its %.1fs budget; worker replaced", self.time_budget)
            self._spawn_replacement(worker)
            return self._judge_unscannable(raw, envelope, "timeout")
        except (EOFError, OSError):
            worker.process.join(timeout=1)
            if worker.process.exitcode == OUT_OF_MEMORY:
                reason = "over_budget"
                log.warning("a message did not fit the worker's memory budget; worker replaced")
            else:
                reason = "malformed"
                log.error(
                    "engine worker died (exit %s) during a scan; worker replaced",
                    worker.process.exitcode,
                )
            self._spawn_replacement(worker)
            return self._judge_unscannable(raw, envelope, reason)
        self._release(worker)
        return verdict

    def _judge_unscannable(self, raw: bytes, envelope: Envelope, reason: str) -> Verdict:
        assert self._engine is not None
        try:
            verdict = self._engine.judge_unscannable(raw, envelope, reason)
        except Exception as exc:  # the parent's own evaluation failing is an engine failure
            log.exception("could not judge an unscannable message")
            return _engine_failure(f"engine failure: {exc}")
        verdict.timings = {"total": self.time_budget} if reason == "timeout" else {}
        return verdict

    async def close(self) -> None:
        self._closed = True
        for worker in list(self._all):
            self._retire(worker)


def _engine_failure(why: str) -> Verdict:
    return Verdict(
        action=Action.TEMPFAIL, reason=why, engine_error=why, smtp_code=451, smtp_status="4.7.1"
    )

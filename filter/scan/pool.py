"""Worker processes that run the engine, so no door's event loop ever does.

Each message gets a time budget and each worker a memory budget. A worker that overruns is
killed and replaced; its message is judged by the pack's `unscannable: [timeout]` rules in
the parent, which holds the same pack. A new pack is validated in the parent first and then
served by a fresh generation of workers; messages in flight finish on the pack they began with.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import math
import multiprocessing
import os
import pickle
import resource
import select
import socket
import struct
import threading
import time
from collections import deque
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from mailgate.filter.message.model import ScanLimits
from mailgate.filter.policy.envelope import Envelope
from mailgate.filter.policy.pack import PackSource
from mailgate.filter.policy.replies import NOT_SCANNED
from mailgate.filter.policy.verdict import Action, Verdict
from mailgate.filter.scan.confine import Confinement, confine
from mailgate.filter.scan.engine import Engine

log = logging.getLogger("mailgate.pool")

WARM_UP = b"Subject: warm-up\r\n\r\nCard 4111 1111 1111 1111, SSN 536-90-4187\r\n"
ANSWER_AT_ONCE = 16 << 10  # bytes read at once for a worker's answer (a verdict: about 1 KB)
LARGE_MESSAGE = 1 << 20  # larger messages are copied into their memfd in a thread
# Smaller messages go in the request itself: one send instead of a memfd's create, write,
# seal and close (17 us of the caller's CPU at 10 KB). Bounded by the socket's buffer too.
INLINE_MESSAGE = 48 << 10
_POLL_FOREVER = 2**31 - 1  # milliseconds: poll(2)'s longest wait, 24 days
# A worker cannot change the message it is handed, nor the parent after handing it over.
_SEALS = fcntl.F_SEAL_SEAL | fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_WRITE
OUT_OF_MEMORY = 3  # a worker's exit code when a message does not fit its memory budget
_context = multiprocessing.get_context("forkserver")
_context.set_forkserver_preload(["mailgate.filter.scan.engine"])


def _send(conn: Connection, obj: Any) -> None:
    # The C pickler straight into one write: Connection.send's ForkingPickler is needlessly
    # slow for what crosses here (an Envelope, a Verdict: plain data only).
    conn.send_bytes(pickle.dumps(obj, pickle.HIGHEST_PROTOCOL))


def _receive(sock: socket.socket) -> Any:
    """One answer `_send` wrote (a 4-byte length, then the pickle), read in one call when it
    fits: a worker has at most one answer outstanding, so nothing after it is read."""
    data = sock.recv(ANSWER_AT_ONCE)
    if len(data) < 4:
        data += _read_exactly(sock, 4 - len(data))  # EOFError if the worker is gone
    size = struct.unpack_from("!i", data)[0]
    if size < 0:  # Connection's header for 2 GiB and more: not a verdict
        raise EOFError("an answer too large to be a verdict")
    body = memoryview(data)[4:]
    if len(body) < size:
        return pickle.loads(bytes(body) + _read_exactly(sock, size - len(body)))
    return pickle.loads(body)


def _message_fd(raw: bytes) -> int:
    """The message in an anonymous memory file (memfd), sealed against change: what goes to
    a worker instead of the bytes themselves. A copy in memory, never a wait for a reader."""
    fd = os.memfd_create("mailgate-message", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
    try:
        view = memoryview(raw)
        while view:
            view = view[os.write(fd, view) :]
        fcntl.fcntl(fd, fcntl.F_ADD_SEALS, _SEALS)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _send_message(sock: socket.socket, raw: bytes, fd: int | None, envelope: Envelope) -> None:
    """A scan request: a small frame (Connection's: a 4-byte length, then the pickled size
    and envelope) carrying the message's memfd (SCM_RIGHTS), or with `fd` None followed by
    the message itself (INLINE_MESSAGE at most). Sent only to an idle worker, whose socket
    buffer is empty, so this never waits for the worker to read."""
    payload = pickle.dumps((len(raw), envelope), pickle.HIGHEST_PROTOCOL)
    frame = struct.pack("!i", len(payload)) + payload
    if fd is None:
        sock.sendall(frame + raw)
        return
    sent = socket.send_fds(sock, [frame], [fd])
    if sent < len(frame):  # not expected for a few hundred bytes; finished blocking if so
        sock.sendall(frame[sent:])


def _receive_message(sock: socket.socket) -> tuple[bytes, Envelope] | None:
    """The worker's side of `_send_message`: the message and its envelope; None: stop.
    Reading a received descriptor needs no path, so it works under Landlock."""
    header, fds, _, _ = socket.recv_fds(sock, 4, 1)
    try:
        if len(header) < 4:
            header += _read_exactly(sock, 4 - len(header))  # EOFError if the parent is gone
        request = pickle.loads(_read_exactly(sock, struct.unpack("!i", header)[0]))
        if request is None:
            return None
        size, envelope = request
        raw = os.pread(fds[0], size, 0) if fds else _read_exactly(sock, size)
    finally:
        for fd in fds:
            os.close(fd)
    return raw, envelope


def _read_exactly(sock: socket.socket, size: int) -> bytes:
    chunks, remaining = [], size
    while remaining:
        chunk = sock.recv(remaining)
        if not chunk:
            raise EOFError("the other side has gone")
        chunks.append(chunk)
        remaining -= len(chunk)
    return b"".join(chunks)


def _worker_main(
    conn: Connection,
    source: PackSource,
    limits: ScanLimits,
    memory: int,
    confinement: Confinement,
) -> None:
    """Runs in the worker process: load the pack, confine itself, then judge messages until
    told to stop."""
    engine = Engine.from_source(source, limits)
    engine.scan(WARM_UP, Envelope("", ()))  # compile lazily built detectors before real mail
    if memory:
        with open("/proc/self/statm") as statm:
            current = int(statm.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
        resource.setrlimit(resource.RLIMIT_AS, (current + memory, current + memory))
    try:
        applied = confine(confinement)
    except (OSError, KeyError) as exc:
        _send(conn, ("failed", f"cannot confine the worker: {exc}"))
        return
    _send(conn, ("ready", engine.version, applied))
    requests = socket.socket(fileno=os.dup(conn.fileno()))
    while True:
        try:
            request = _receive_message(requests)
            if request is None:
                return
            raw, envelope = request
            verdict = engine.scan(raw, envelope)
            del raw, request
            _send(conn, verdict)
        except (EOFError, OSError):
            return
        except MemoryError:
            # Not even the message fits in the budget; the exit code tells the parent why.
            os._exit(OUT_OF_MEMORY)


class _Worker:
    """One worker process and its socket pair: scan requests go one way with the message's
    memfd, verdicts come back. The event loop waits on the socket itself (add_reader): no
    thread sits between a door and its verdict."""

    def __init__(
        self,
        source: PackSource,
        limits: ScanLimits,
        memory: int,
        generation: int,
        confinement: Confinement,
    ):
        self.generation = generation
        self.conn, child = _context.Pipe()
        self.process = _context.Process(
            target=_worker_main, args=(child, source, limits, memory, confinement), daemon=True
        )
        self.process.start()
        child.close()
        # The same socket as `conn`, for the requests (sent with socket calls: a descriptor,
        # or the message after the frame in one send).
        self.requests = socket.socket(fileno=os.dup(self.conn.fileno()))
        # A request with the message in it must fit the (empty) socket buffer at once.
        buffer = self.requests.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF)
        self.inline = min(INLINE_MESSAGE, buffer // 4)
        # Whether an answer (or the end of the worker) is there: one poll(2), no selector
        # made per call as Connection.poll and Process.is_alive make. Only the caller that
        # took the worker uses it.
        self._answer = select.poll()
        self._answer.register(self.conn.fileno(), select.POLLIN)

    async def ready(self, timeout: float) -> None:
        reply = await asyncio.wait_for(self._receive(), timeout)
        if reply[0] != "ready":
            # OSError: the doors report it like any other failure to start the pack
            raise OSError(f"worker failed to start: {reply[1]}")
        self.confined: list[str] = reply[2]

    def send(self, raw: bytes, envelope: Envelope) -> None:
        """Hand the message over: in its memfd with a small frame on the socket, or in the
        frame when it is small."""
        if len(raw) <= self.inline:
            _send_message(self.requests, raw, None, envelope)
            return
        fd = _message_fd(raw)
        try:
            _send_message(self.requests, raw, fd, envelope)
        finally:
            os.close(fd)

    def answered(self, timeout: float) -> bool:
        """Whether the worker's answer can be read (or it has died: reading says EOFError),
        waiting up to `timeout` seconds for it."""
        return bool(self._answer.poll(min(math.ceil(timeout * 1000), _POLL_FOREVER)))

    async def scan(self, raw: bytes, envelope: Envelope) -> Verdict:
        if len(raw) > LARGE_MESSAGE:
            # Copying megabytes takes a while: not on the event loop. A caller cancelled
            # meanwhile leaves the thread to finish (and close the memfd); the pool then
            # replaces the worker, whose answer nobody reads.
            await asyncio.get_running_loop().run_in_executor(None, self.send, raw, envelope)
        else:
            self.send(raw, envelope)
        return await self._receive()

    async def _receive(self) -> Any:
        """The worker's next answer; EOFError if it died."""
        loop = asyncio.get_running_loop()
        answer: asyncio.Future[Any] = loop.create_future()
        fd = self.conn.fileno()

        def readable() -> None:
            loop.remove_reader(fd)
            if answer.done():
                return
            try:
                # The worker writes each answer whole, so it can be read without blocking.
                answer.set_result(_receive(self.requests))
            except (EOFError, OSError) as exc:
                answer.set_exception(EOFError(str(exc)))

        loop.add_reader(fd, readable)
        try:
            return await answer
        finally:
            loop.remove_reader(fd)

    def stop(self, kill: bool = False) -> None:
        if kill:
            self.process.kill()
        else:
            with contextlib.suppress(OSError):
                _send(self.conn, None)  # a frame without a descriptor: stop
        self.requests.close()
        self.conn.close()
        self.process.join(timeout=0 if kill else 2)
        if self.process.is_alive():
            self.process.kill()


class _Waiter:
    """One caller waiting for a worker: a coroutine (its future, on its loop) or a thread
    (a lock held until it is handed one: a plain lock, not an Event's Condition, as this
    is made per wait); `worker` is what it was handed."""

    def __init__(self, loop: asyncio.AbstractEventLoop | None = None) -> None:
        self.loop = loop
        self.future: asyncio.Future[None] | None = None
        self.handed: threading.Lock | None = None
        if loop is None:
            self.handed = threading.Lock()
            self.handed.acquire()
        else:
            self.future = loop.create_future()
        self.worker: _Worker | None = None
        self.gone = False  # stopped waiting (timed out, cancelled): hand it nothing


class _IdleWorkers:
    """Idle workers, taken by coroutines on the pool's event loop and by other threads (the
    milter's libmilter threads) alike; whoever takes one does the socket I/O itself. A worker
    that comes back goes to the longest waiting caller: first come, first served, so under
    load no session waits while later ones are served (its reply latency stays bounded)."""

    def __init__(self) -> None:
        self._workers: deque[_Worker] = deque()
        self._waiters: deque[_Waiter] = deque()
        self._lock = threading.Lock()

    def put(self, worker: _Worker) -> None:
        with self._lock:
            while self._waiters:
                waiter = self._waiters.popleft()
                if not waiter.gone:
                    waiter.worker = worker
                    break
            else:
                self._workers.append(worker)
                return
        if waiter.handed is not None:
            waiter.handed.release()
        else:
            assert waiter.loop is not None
            waiter.loop.call_soon_threadsafe(_wake, waiter)

    def _wait(self, loop: asyncio.AbstractEventLoop | None) -> _Waiter | _Worker:
        """An idle worker at once when one is free and nobody waits, else a place in line."""
        with self._lock:
            if self._workers and not self._waiters:
                return self._workers.popleft()
            waiter = _Waiter(loop)
            self._waiters.append(waiter)
            return waiter

    def _leave(self, waiter: _Waiter) -> _Worker | None:
        """Stop waiting; the worker it was handed meanwhile, if any."""
        with self._lock:
            waiter.gone = True
            return waiter.worker

    def take_blocking(self, timeout: float) -> _Worker | None:
        place = self._wait(None)
        if isinstance(place, _Worker):
            return place
        assert place.handed is not None
        place.handed.acquire(timeout=timeout)
        return self._leave(place)

    async def take(self) -> _Worker:
        """Cancellation-safe: a worker is only ever taken by a caller that gets it; one handed
        to a caller that has gone goes back."""
        place = self._wait(asyncio.get_running_loop())
        if isinstance(place, _Worker):
            return place
        assert place.future is not None
        try:
            await place.future
        except BaseException:
            if (worker := self._leave(place)) is not None:
                self.put(worker)  # handed one just as it was cancelled: it goes back
            raise
        worker = self._leave(place)  # handed before the future was resolved
        assert worker is not None
        return worker


def _wake(waiter: _Waiter) -> None:
    assert waiter.future is not None
    if not waiter.future.done():
        waiter.future.set_result(None)


class ScanPool:
    def __init__(
        self,
        rules_dir: Path,
        workers: int | None = None,
        time_budget: float = 10.0,
        memory_budget: int = 512 << 20,
        limits: ScanLimits | None = None,
        start_timeout: float = 60.0,
        confinement: Confinement | None = None,
    ) -> None:
        self.rules_dir = Path(rules_dir)
        self.size = workers or os.cpu_count() or 2
        self.time_budget = time_budget
        self.memory_budget = memory_budget
        self.limits = limits or ScanLimits()
        self.start_timeout = start_timeout
        self.confinement = confinement or Confinement()
        self._engine: Engine | None = None  # the parent's copy, for verdicts without a worker
        self._source: PackSource | None = None
        self._generation = 0
        self._idle = _IdleWorkers()
        self._loop: asyncio.AbstractEventLoop | None = None  # the loop that manages workers
        self._all: set[_Worker] = set()
        self._closed = False
        self._tasks: set[asyncio.Future[None]] = set()

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
        self._loop = asyncio.get_running_loop()
        log.info("scan workers confined: %s", ", ".join(workers[0].confined) or "nothing")
        for w in workers:
            self._idle.put(w)

    def _spawn(self, source: PackSource, generation: int) -> _Worker:
        worker = _Worker(source, self.limits, self.memory_budget, generation, self.confinement)
        self._all.add(worker)
        return worker

    def _retire(self, worker: _Worker, kill: bool = False) -> None:
        self._all.discard(worker)
        worker.stop(kill=kill)

    def _current(self, worker: _Worker) -> bool:
        """Whether a worker just taken may serve. One of an older pack is retired; one that
        died while idle (its socket readable: an idle worker has nothing to say, so that is
        the end of file) is replaced, as one that dies under a message is."""
        if worker.generation != self._generation:
            self._retire(worker, kill=not worker.process.is_alive())
            return False
        if not worker.answered(0):
            return True
        log.error("an idle engine worker died; worker replaced")
        assert self._loop is not None  # set by the start that made the worker
        self._loop.call_soon_threadsafe(self._spawn_replacement, worker)
        return False

    async def _acquire(self) -> _Worker:
        while True:  # stale or dead workers are retired by _current and skipped
            worker = await self._idle.take()
            if self._current(worker):
                return worker

    def _release(self, worker: _Worker) -> None:
        if self._closed or worker.generation != self._generation:
            self._retire(worker)
        else:
            self._idle.put(worker)

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
            async with asyncio.timeout(self.start_timeout):
                worker = await self._acquire()
        except TimeoutError:
            return _engine_failure("no engine worker became free in time")
        try:
            # A deadline on this task, not wait_for's task per message.
            async with asyncio.timeout(self.time_budget):
                verdict = await worker.scan(raw, envelope)
        except TimeoutError:
            log.warning("scan overran its %.1fs budget; worker replaced", self.time_budget)
            self._spawn_replacement(worker)
            return self._judge_unscannable(raw, envelope, "timeout")
        except (EOFError, OSError):
            # Reap it off the loop: its exit code says whether memory ran out.
            await asyncio.get_running_loop().run_in_executor(None, worker.process.join, 1)
            return self._worker_died(worker, raw, envelope)
        except BaseException:
            # Cancelled mid-scan (the client left, the relay stops): the worker may still
            # be busy with the message, so it is replaced rather than reused.
            self._spawn_replacement(worker)
            raise
        self._release(worker)
        return verdict

    def scan_blocking(
        self, raw: bytes, envelope: Envelope, timeout: float | None = None
    ) -> Verdict:
        """`scan` for a door that serves each connection in its own thread (the milter):
        the calling thread talks to the worker itself, so no event loop is woken per
        message. Never raises; the same outcomes as `scan`. `timeout` caps the whole call
        (waiting for a free worker, then scanning) below the pool's own budgets."""
        if self._engine is None or self._closed or self._loop is None:
            return _engine_failure("the rules engine is not running")
        start = time.monotonic()
        limit = self.start_timeout if timeout is None else min(timeout, self.start_timeout)
        while True:
            worker = self._idle.take_blocking(max(0.0, start + limit - time.monotonic()))
            if worker is None:
                return _engine_failure("no engine worker became free in time")
            if self._current(worker):
                break
        budget, callers = self.time_budget, False
        if timeout is not None and start + timeout - time.monotonic() < budget:
            budget, callers = max(0.0, start + timeout - time.monotonic()), True
        try:
            worker.send(raw, envelope)
            if not worker.answered(budget):
                log.warning("scan overran its %.1fs budget; worker replaced", budget)
                self._loop.call_soon_threadsafe(self._spawn_replacement, worker)
                if callers:  # the door's deadline, not the engine's: the door decides
                    return _engine_failure(f"no verdict within the door's {timeout:g}s budget")
                return self._judge_unscannable(raw, envelope, "timeout")
            verdict = _receive(worker.requests)
        except (EOFError, OSError):
            worker.process.join(timeout=1)
            return self._worker_died(worker, raw, envelope)
        self._release(worker)
        return verdict

    def _worker_died(self, worker: _Worker, raw: bytes, envelope: Envelope) -> Verdict:
        """The verdict when a worker died mid-scan (reaped by the caller)."""
        if worker.process.exitcode == OUT_OF_MEMORY:
            reason = "over_budget"
            log.warning("a message did not fit the worker's memory budget; worker replaced")
        else:
            reason = "malformed"
            log.error(
                "engine worker died (exit %s) during a scan; worker replaced",
                worker.process.exitcode,
            )
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._spawn_replacement, worker)
        return self._judge_unscannable(raw, envelope, reason)

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
        for task in list(self._tasks):
            task.cancel()  # a replacement worker still starting is not wanted any more
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for worker in list(self._all):
            self._retire(worker)


def _engine_failure(why: str) -> Verdict:
    return Verdict(
        action=Action.TEMPFAIL,
        reason=why,
        engine_error=why,
        smtp_code=NOT_SCANNED.code,
        smtp_status=NOT_SCANNED.status,
    )

"""Several SMTP front-end processes on one listening socket (relay.processes > 1).

One relay process handles SMTP on one core, however many scan workers it has. With several,
the parent binds `relay.listen` once and starts the front ends, each `mailgate relay` again in a
fresh interpreter, handed the socket and a pipe back; all accept on that socket, each with its
own scan workers. The parent keeps what must be one: it writes the audit log and serves
/metrics, /healthz and /readyz from what the front ends send it (ForwardingReporter). It runs on
the runner both doors use (ops.service): SIGHUP reopens the audit file and is passed on, SIGTERM
is passed on and the parent waits for the front ends' transactions.

A front end that dies is started again, as Postfix's master restarts its processes, while the
others keep serving. The pause before a restart doubles while restarts keep failing (1 s up to
a minute) and is 1 s again once a front end has served a minute. Only while the relay starts
does a front end that exits stop it: a relay that cannot start says so and exits.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing
import signal
import socket
import subprocess
import sys
from contextlib import AsyncExitStack
from dataclasses import dataclass
from multiprocessing.connection import Connection

from mailgate.filter.ops.config import Config
from mailgate.filter.ops.fleet import start_fleet
from mailgate.filter.ops.report import Reporter, apply_forwarded
from mailgate.filter.ops.service import (
    Serving,
    StartError,
    open_quarantine,
    reporter_for,
    run_service,
    serve_metrics,
)

log = logging.getLogger("mailgate.relay")

RESTART_DELAY = 1.0  # seconds before a dead front end is started again
MAX_RESTART_DELAY = 60.0  # the pause doubles up to this while restarts keep failing
STABLE_AFTER = 60.0  # seconds a front end must serve for the pause to start again at 1 s
STOP_GRACE = 30.0  # seconds the front ends get to finish their transactions
_POLL = 0.2


def supervise(config: Config) -> int:
    """Run `relay.processes` front ends until SIGTERM/SIGINT; the exit status for the CLI."""
    return asyncio.run(run_service("relay", config, FrontEnds(config).start))


@dataclass
class FrontEnd:
    """One front-end slot and the process in it, if any."""

    slot: int
    process: subprocess.Popen[bytes] | None = None
    events: Connection | None = None  # what it reports, until it exits
    since: float = 0.0  # event-loop time it was started
    started: bool = False  # its pack loaded and its socket listening
    ready: bool = False  # its next hop answered
    delay: float = RESTART_DELAY  # the pause before its next restart
    restart_at: float = 0.0


class FrontEnds:
    def __init__(self, config: Config) -> None:
        self.config = config
        self.slots = [FrontEnd(n) for n in range(config.relay.processes)]
        self._sock: socket.socket | None = None
        self._reporter: Reporter | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def ready(self) -> bool:
        """For /readyz: every front end is running and ready."""
        return all(front_end.ready for front_end in self.slots)

    async def start(self, stack: AsyncExitStack) -> Serving:
        """Bind, start every front end and wait until each serves; StartError if one exits
        first. The runner's `start` for the parent process."""
        listen = self.config.relay.listen
        try:
            self._sock = socket.create_server((listen.host, listen.port), backlog=512)
        except OSError as exc:
            raise StartError(f"cannot start: relay.listen {listen}: {exc.strerror}") from exc
        stack.callback(self._sock.close)
        store, _ = open_quarantine(self.config)
        self._reporter = reporter = reporter_for(self.config, store)
        if reporter.audit is not None:
            stack.callback(reporter.audit.close)  # last: the front ends' final records first
        start_fleet(self.config, "relay", reporter, store, stack)
        serve_metrics(self.config, self.ready, reporter.metrics, stack)
        self._loop = asyncio.get_running_loop()
        stack.push_async_callback(self._stop_all)
        for front_end in self.slots:
            self._spawn(front_end)
        while not all(front_end.started for front_end in self.slots):
            for front_end in self.slots:
                assert front_end.process is not None
                if (code := front_end.process.poll()) is not None:
                    raise StartError(
                        f"front end {front_end.process.pid} {_exit(code)} while starting"
                    )
            await asyncio.sleep(_POLL)
        supervisor = asyncio.ensure_future(self._supervise())
        stack.callback(supervisor.cancel)
        log.info("%d front ends on %s:%d", len(self.slots), listen.host, listen.port)
        return Serving(reporter=reporter, on_hangup=self._hangup)

    def _spawn(self, front_end: FrontEnd) -> None:
        assert self._sock is not None and self._loop is not None
        events, child_end = multiprocessing.Pipe(duplex=False)
        handed = (self._sock.fileno(), child_end.fileno())
        # A fresh interpreter, not a fork: this process runs threads (metrics) by now.
        argv = [sys.executable, "-m", "mailgate.filter.cli", "relay"]
        if self.config.source is not None:
            argv += ["--config", str(self.config.source)]
        argv += ["--front-end", ",".join(map(str, handed))]
        front_end.process = subprocess.Popen(argv, pass_fds=handed)
        child_end.close()
        front_end.events = events
        front_end.since = self._loop.time()
        front_end.started = front_end.ready = False
        self._loop.add_reader(events.fileno(), self._receive, front_end, events)

    def _receive(self, front_end: FrontEnd, events: Connection) -> None:
        """What a front end reports; its pipe ends when it exits."""
        assert self._reporter is not None and self._loop is not None
        current = front_end.events is events  # not a restarted slot's old pipe
        try:
            while events.poll():
                event = events.recv()
                if event[0] == "started":
                    front_end.started = front_end.started or current
                elif event[0] == "ready":
                    front_end.ready = front_end.ready or current
                else:
                    apply_forwarded(self._reporter, event)
        except (EOFError, OSError):
            self._loop.remove_reader(events.fileno())
            events.close()
            if current:
                front_end.events = None

    async def _supervise(self) -> None:
        """Restart front ends that died, each after its pause."""
        assert self._loop is not None
        while True:
            await asyncio.sleep(_POLL)
            now = self._loop.time()
            for front_end in self.slots:
                process = front_end.process
                if process is not None and (code := process.poll()) is not None:
                    served = now - front_end.since
                    if served >= STABLE_AFTER:
                        front_end.delay = RESTART_DELAY
                    front_end.restart_at = now + front_end.delay
                    log.error(
                        "front end %d %s after %.0fs; starting another in %gs",
                        process.pid,
                        _exit(code),
                        served,
                        front_end.delay,
                    )
                    front_end.delay = min(front_end.delay * 2, MAX_RESTART_DELAY)
                    front_end.process = None
                    front_end.started = front_end.ready = False
                if front_end.process is None and now >= front_end.restart_at:
                    self._spawn(front_end)

    def _hangup(self) -> None:
        # Not to one still starting: it reads everything fresh, and until its handlers are in
        # place a SIGHUP would end it.
        for front_end in self.slots:
            if front_end.started and front_end.process is not None:
                front_end.process.send_signal(signal.SIGHUP)

    def _running(self) -> list[subprocess.Popen[bytes]]:
        return [f.process for f in self.slots if f.process is not None and f.process.poll() is None]

    async def _stop_all(self) -> None:
        """SIGTERM to every front end, STOP_GRACE seconds for their transactions, then
        SIGKILL; what they reported last is read before the audit log closes."""
        assert self._loop is not None
        running = self._running()
        for process in running:
            process.send_signal(signal.SIGTERM)
        deadline = self._loop.time() + STOP_GRACE
        while any(p.poll() is None for p in running) and self._loop.time() < deadline:
            await asyncio.sleep(0.1)
        for process in running:
            if process.poll() is None:
                log.error("front end %d did not stop in %.0fs; killed", process.pid, STOP_GRACE)
                process.kill()
                await asyncio.to_thread(process.wait)
        for front_end in self.slots:
            if front_end.events is not None:
                self._receive(front_end, front_end.events)  # up to its end: the process is gone


def _exit(code: int) -> str:
    if code < 0:
        with contextlib.suppress(ValueError):
            return f"was killed by {signal.Signals(-code).name}"
    return f"exited with status {code}"

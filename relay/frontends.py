"""Several SMTP front-end processes on one listening socket (relay.processes > 1).

One relay process handles SMTP on one core, however many scan workers it has. With several,
the parent binds `relay.listen` once and forks front ends that all accept on that socket, each
with its own scan workers. The parent keeps what must be one: it writes the audit log and
serves /metrics, /healthz and /readyz from what the front ends send it (ForwardingReporter),
passes SIGHUP on (reload) and SIGTERM (stop), and stops them all if one dies, so a service
manager restarts a whole relay rather than running a partial one.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import signal
import socket
import threading
import time
from collections.abc import Callable
from multiprocessing.connection import Connection

from mailgate.filter.ops.config import Config
from mailgate.filter.ops.metrics import MetricsServer
from mailgate.filter.ops.report import Reporter, apply_forwarded
from mailgate.filter.store.quarantine import LocalQuarantine

log = logging.getLogger("mailgate.relay")

FrontEnd = Callable[[Config, socket.socket, Connection], int]
STOP_GRACE = 30.0  # seconds the front ends get to finish their transactions


def supervise(config: Config, front_end: FrontEnd) -> int:
    """Run `relay.processes` front ends until SIGTERM/SIGINT; the exit status for the CLI."""
    listen = config.relay.listen
    sock = socket.create_server((listen.host, listen.port), backlog=512)
    sock.set_inheritable(True)
    store = LocalQuarantine(config.quarantine.path)
    reporter = Reporter.from_config(config, store)
    children: dict[int, Connection] = {}
    for _ in range(config.relay.processes):
        events, child_end = multiprocessing.Pipe(duplex=False)
        # Forked before this process starts any thread or event loop.
        pid = os.fork()
        if pid == 0:
            events.close()
            for other in children.values():
                other.close()
            code = 1
            try:
                code = front_end(config, sock, child_end)
            finally:
                os._exit(code)
        child_end.close()
        children[pid] = events
    sock.close()
    ready: set[int] = set()
    readers = [
        threading.Thread(
            target=_read_events, args=(conn, pid, reporter, ready), daemon=True,
            name=f"mailgate-frontend-{pid}",
        )
        for pid, conn in children.items()
    ]  # fmt: skip
    for reader in readers:
        reader.start()
    metrics_server = None
    if config.metrics.listen is not None:
        metrics_server = MetricsServer(
            config.metrics.listen, lambda: len(ready) == len(children), reporter.metrics
        )
        metrics_server.start()
    log.info("%d front ends on %s:%d", len(children), listen.host, listen.port)
    status = _wait(children, reporter)
    for reader in readers:
        reader.join(timeout=5)
    if metrics_server is not None:
        metrics_server.stop()
    if reporter.audit is not None:
        reporter.audit.close()
    return status


def _read_events(conn: Connection, pid: int, reporter: Reporter, ready: set[int]) -> None:
    """What one front end reports, until it exits."""
    while True:
        try:
            event = conn.recv()
        except (EOFError, OSError):
            return
        if event[0] == "ready":
            ready.add(pid)
        else:
            apply_forwarded(reporter, event)


def _wait(children: dict[int, Connection], reporter: Reporter) -> int:
    """Pass signals on until told to stop or a front end dies; then stop them all."""
    stopping = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopping.set())
    signal.signal(signal.SIGINT, lambda *_: stopping.set())

    def hangup(*_: object) -> None:
        if reporter.audit is not None:
            reporter.audit.reopen()
        _signal_all(children, signal.SIGHUP)

    signal.signal(signal.SIGHUP, hangup)
    status = 0
    alive = set(children)
    while not stopping.is_set():
        pid, code = os.waitpid(-1, os.WNOHANG)
        if pid in alive:
            alive.discard(pid)
            log.error("front end %d exited (status %d); stopping the relay", pid, code)
            status = 1
            break
        stopping.wait(0.2)
    _signal_all({p: children[p] for p in alive}, signal.SIGTERM)
    deadline = time.monotonic() + STOP_GRACE
    while alive and time.monotonic() < deadline:
        pid, _ = os.waitpid(-1, os.WNOHANG)
        if pid in alive:
            alive.discard(pid)
        else:
            time.sleep(0.1)
    for pid in alive:
        log.error("front end %d did not stop in %.0fs; killed", pid, STOP_GRACE)
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
    return status


def _signal_all(children: dict[int, Connection], signum: int) -> None:
    for pid in children:
        with contextlib.suppress(ProcessLookupError):  # already gone
            os.kill(pid, signum)

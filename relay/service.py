"""`mailgate relay`'s process on the runner both doors share (ops.service): the whole relay, or
one front end of several (relay.processes, frontends.py), which serves the socket its parent
bound and reports to its parent over a pipe."""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import socket
from contextlib import AsyncExitStack
from multiprocessing.connection import Connection

from mailgate.filter.ops.config import Config
from mailgate.filter.ops.fleet import start_fleet
from mailgate.filter.ops.report import ForwardingReporter
from mailgate.filter.ops.service import Serving, StartError, Stopped, run_service, start_scanning
from mailgate.filter.store.release_mark import ReleaseSecretError
from mailgate.relay.loop import loop_name
from mailgate.relay.release import send_notice
from mailgate.relay.server import Relay

log = logging.getLogger("mailgate.relay")

_POLL = 0.2  # seconds between looks at readiness and at the parent process


async def serve(
    config: Config, sock: socket.socket | None = None, parent: Connection | None = None
) -> int:
    """Run one relay process until SIGTERM; the exit status. With `parent`, a front end: it
    serves `sock`, and its audit records and metrics go to the parent process."""
    return await run_service("relay", config, functools.partial(_start, config, sock, parent))


async def _start(
    config: Config, sock: socket.socket | None, parent: Connection | None, stack: AsyncExitStack
) -> Serving:
    # The front ends share the machine's workers (engine.workers auto).
    workers = config.engine.workers_per_process(config.relay.processes)
    send = functools.partial(send_notice, config)
    scanning = await start_scanning(config, stack, parent, workers, send_notice=send)
    if parent is None:  # a front end's records and pack go to its parent, which runs this
        start_fleet(config, "relay", scanning.reporter, scanning.store, stack)
    try:
        relay = Relay.from_config(
            config, scanning.pool, scanning.store, scanning.reporter, scanning.notices
        )
        await relay.start(sock=sock, serve_metrics=parent is None)
    except (OSError, ReleaseSecretError) as exc:
        # Binding relay.listen or metrics.listen, the outbox folder: exc names which.
        raise StartError(f"cannot start: {exc}") from exc
    stack.push_async_callback(relay.stop)
    host, port = relay.address
    target = config.relay.next_hop
    where = f"next hop {target.host}:{target.port}"
    if not target.host:
        where = f"outbox {config.relay.outbox}"
    loop = loop_name(asyncio.get_running_loop())
    log.info(
        "listening on %s:%d, pack %s, %s, %s loop",
        host,
        port,
        scanning.pool.pack_version,
        where,
        loop,
    )
    stopped = None
    if parent is not None:
        assert isinstance(scanning.reporter, ForwardingReporter)
        scanning.reporter.started()
        ready = asyncio.ensure_future(_tell_when_ready(relay, scanning.reporter))
        stack.callback(ready.cancel)
        stopped = asyncio.ensure_future(_parent_gone(os.getppid()))
        stack.callback(stopped.cancel)
    return Serving(
        reporter=scanning.reporter,
        reloader=scanning.reloader,
        reconfigure=relay.reconfigure,
        stopped=stopped,
    )


async def _tell_when_ready(relay: Relay, reporter: ForwardingReporter) -> None:
    while not relay.ready():
        await asyncio.sleep(_POLL)
    reporter.ready()


async def _parent_gone(parent: int) -> None:
    """A front end whose parent died (SIGKILL) would serve with no one writing its audit
    records: it stops instead."""
    while os.getppid() == parent:
        await asyncio.sleep(_POLL * 5)
    raise Stopped(f"the parent process {parent} is gone")

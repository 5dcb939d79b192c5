"""`mailgate milter`'s process: the milter door on the runner both doors share (ops.service).

libmilter's main loop blocks until `libmilter.stop()`, so it runs in a thread of its own and
calls the door from its connection threads; the main thread runs the event loop on which the
runner takes the signals (Python runs signal handlers only there) and the scan pool is managed
(started, reloaded, workers replaced). No message waits on that loop: each connection thread
talks to a scan worker itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import threading
from contextlib import AsyncExitStack

from mailgate.filter.milter.door import MilterDoor, libmilter, serve, unix_socket_path
from mailgate.filter.ops.config import Config, MilterConfig
from mailgate.filter.ops.fleet import start_fleet
from mailgate.filter.ops.notices import Send
from mailgate.filter.ops.service import (
    Serving,
    Stopped,
    run_service,
    serve_metrics,
    start_scanning,
)

log = logging.getLogger("mailgate.milter")

LIBMILTER_STOP_GRACE = 10.0  # seconds for libmilter's connections to finish at a stop


def run(config: Config, send_notice: Send | None = None) -> int:
    """Serve Postfix until SIGTERM; the exit status. `send_notice` sends the sender notices
    (the relay's, handed in by the command: a door imports no other door)."""
    start = functools.partial(_start, config, send_notice)
    return asyncio.run(run_service("milter", config, start))


async def _start(config: Config, send_notice: Send | None, stack: AsyncExitStack) -> Serving:
    scanning = await start_scanning(config, stack, send_notice=send_notice)
    pool, reporter = scanning.pool, scanning.reporter
    start_fleet(config, "milter", reporter, scanning.store, stack)
    serve_metrics(config, lambda: pool.engine is not None, reporter.metrics, stack)
    door = MilterDoor(
        scanner=pool,
        store=scanning.store,
        release_secret=scanning.release_secret,
        reporter=reporter,
        notices=scanning.notices,
    )
    door.apply(config.milter)
    socket_path = unix_socket_path(config.milter.socket)
    if socket_path is not None:
        socket_path.parent.mkdir(parents=True, exist_ok=True)
        stack.callback(socket_path.unlink, missing_ok=True)
    log.info(
        "pack %s, %d workers, fail_mode %s, time budget %gs",
        pool.pack_version,
        pool.size,
        door.fail_mode,
        door.time_budget,
    )
    loop = asyncio.get_running_loop()
    stopped: asyncio.Future[None] = loop.create_future()
    thread = threading.Thread(
        target=_serve, args=(door, config.milter, loop, stopped), name="libmilter", daemon=True
    )
    thread.start()
    stack.push_async_callback(_stop_libmilter, thread, stopped)
    return Serving(
        reporter=reporter,
        reloader=scanning.reloader,
        reconfigure=lambda fresh: door.apply(fresh.milter),
        stopped=stopped,
    )


def _serve(
    door: MilterDoor,
    settings: MilterConfig,
    loop: asyncio.AbstractEventLoop,
    stopped: asyncio.Future[None],
) -> None:
    """libmilter's thread: serve until stopped; tell the loop how it ended."""
    failure: Exception | None = None
    try:
        serve(door, settings.socket, settings.socket_mode)
    except Exception as exc:  # e.g. the socket cannot be opened: the runner reports it
        failure = exc
    with contextlib.suppress(RuntimeError):  # the loop is gone: the process is exiting
        loop.call_soon_threadsafe(_settle, stopped, failure)


def _settle(stopped: asyncio.Future[None], failure: Exception | None) -> None:
    if not stopped.done():  # cancelled when the runner stops it
        stopped.set_exception(failure or Stopped("libmilter stopped on its own"))


async def _stop_libmilter(thread: threading.Thread, stopped: asyncio.Future[None]) -> None:
    stopped.cancel()
    libmilter.stop()
    # Off the loop: connection threads still finishing a message may need the pool.
    await asyncio.to_thread(thread.join, LIBMILTER_STOP_GRACE)

"""`mailgate console`'s process on the runner every door shares (ops.service): the store from
the one factory (the local folder, or the fleet's PostgreSQL with `database`), the sender
notices, the scan pool "Try a message" judges in with its pack reloader, and uvicorn serving
the application on console.listen.

  SIGTERM, SIGINT  stop taking connections, let requests in progress finish, exit 0
  SIGHUP           reload the rule pack (the Rules page, Try a message) and re-read
                   console.trusted_proxy and console.session_timeout; the users file is read
                   at every sign-in anyway; listen, tls and the store need a restart
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import socket
from collections.abc import Callable, Iterator
from contextlib import AsyncExitStack
from typing import Any

import uvicorn

from mailgate.filter.console.app import ReleaseOutcome, create_app
from mailgate.filter.ops.config import Config
from mailgate.filter.ops.notices import Send
from mailgate.filter.ops.service import (
    Serving,
    StartError,
    Stopped,
    notices_for,
    open_quarantine,
    run_service,
    start_pool,
    start_reloader,
)

log = logging.getLogger("mailgate.console")

STARTING = 30.0  # seconds for uvicorn to listen, once the socket is bound
# relay.release.release_message, handed in by the command (a door imports no other door).
Release = Callable[..., ReleaseOutcome]


def run(config: Config, release: Release, send_notice: Send) -> int:
    """Serve the console until SIGTERM; the exit status."""
    start = functools.partial(_start, config, release, send_notice)
    return asyncio.run(run_service("console", config, start))


class _Server(uvicorn.Server):
    """uvicorn without signal handlers of its own: the runner takes the signals."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


async def _start(
    config: Config, release: Release, send_notice: Send, stack: AsyncExitStack
) -> Serving:
    store, _ = open_quarantine(config)
    notices = notices_for(config, store, send_notice)
    stack.push_async_callback(asyncio.to_thread, notices.close)
    pool = await start_pool(config, stack, workers=1)  # Try a message only: one will do
    reloader = await start_reloader(config, pool, stack)
    listen = config.console.listen
    try:
        family = socket.AF_INET6 if ":" in listen.host else socket.AF_INET
        sock = socket.create_server((listen.host, listen.port), family=family)
    except OSError as exc:
        raise StartError(f"cannot listen on {listen}: {exc}") from exc
    stack.callback(sock.close)
    app = create_app(
        config, store, functools.partial(release, config, store, notices=notices), pool, notices
    )
    tls = config.console.tls
    server = _Server(
        uvicorn.Config(
            app,
            ssl_certfile=str(tls.cert) if tls else None,
            ssl_keyfile=str(tls.key) if tls else None,
            lifespan="off",
            log_level="warning",
            server_header=False,
            # The client address comes from the socket; the trusted proxy's headers are read
            # by the console itself, only from the networks it lists.
            proxy_headers=False,
        )
    )
    serving = asyncio.ensure_future(_serve(server, sock))
    stack.push_async_callback(_stop, server, serving)
    await _started(server, serving)
    log.info("on %s://%s/, pack %s", "https" if tls else "http", listen, pool.pack_version)
    return Serving(
        reporter=None,
        reloader=reloader,
        reconfigure=app.state.console.reconfigure,
        stopped=serving,
    )


async def _serve(server: uvicorn.Server, sock: socket.socket) -> None:
    try:
        await server.serve(sockets=[sock])
    except SystemExit as exc:  # uvicorn's word for "could not start" (a TLS key, say)
        raise Stopped(f"the web server could not start (status {exc.code})") from None
    if not server.should_exit:
        raise Stopped("the web server stopped on its own")


async def _started(server: uvicorn.Server, serving: asyncio.Future[Any]) -> None:
    """Return once uvicorn serves; StartError if it stops first."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + STARTING
    while not server.started:
        if serving.done():
            raise StartError(str(serving.exception() or "the web server stopped"))
        if loop.time() > deadline:
            raise StartError(f"the web server did not start within {STARTING:g} s")
        await asyncio.sleep(0.05)


async def _stop(server: uvicorn.Server, serving: asyncio.Future[None]) -> None:
    """Requests in progress finish; new connections are refused."""
    server.should_exit = True
    with contextlib.suppress(Stopped, asyncio.CancelledError):
        await serving

"""How a mailgate process runs: what both doors build from the configuration (the quarantine
store, the scan pool, the reporter, the pack reloader) and the one runner of their life cycle,
so signals and failures mean the same in the relay and the milter.

  SIGTERM, SIGINT  stop taking connections, let transactions in progress finish, exit 0
  SIGHUP           reopen the audit file (after logrotate), reload the rule pack (a broken one
                   is logged with file and line and the running one stays), and re-read the
                   configuration for what a door applies live (its fail mode); a configuration
                   that does not load is logged and the running settings stay
A process that cannot start says why on stderr and exits 2; a door that stops by itself (the
milter's libmilter, a relay front end whose parent is gone) exits 1. Whatever was started is
stopped in reverse order on every way out (an AsyncExitStack).
"""

from __future__ import annotations

import asyncio
import logging
import signal
import sqlite3
import sys
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass
from multiprocessing.connection import Connection

from mailgate.filter import PackError, PackReloader, QuarantineStore, ScanPool
from mailgate.filter.ops.config import Config, ConfigError, load_config
from mailgate.filter.ops.metrics import Metrics, MetricsServer
from mailgate.filter.ops.notices import NoticeError, Send, SenderNotices
from mailgate.filter.ops.report import ForwardingReporter, Reporter
from mailgate.filter.ops.stores import store_for
from mailgate.filter.scan.confine import Confinement
from mailgate.filter.scan.reload import ReloadResult
from mailgate.filter.store.quarantine import QuarantineError
from mailgate.filter.store.release_mark import ReleaseSecretError


def scan_pool_for(config: Config, workers: int | None = None) -> ScanPool:
    """The worker pool `engine:` describes, for the pack in `rules`; `workers` overrides
    `engine.workers` for a process that scans only now and then (the review console)."""
    return ScanPool(
        config.rules,
        workers=workers or config.engine.workers,
        time_budget=config.engine.time_budget,
        memory_budget=config.engine.memory_budget,
        confinement=Confinement(user=config.engine.user, landlock=config.engine.confine),
    )


log = logging.getLogger("mailgate.service")

EXIT_STOPPED_BY_ITSELF = 1
EXIT_CANNOT_START = 2


class StartError(Exception):
    """The process cannot start; the message says what and where."""


class Stopped(Exception):
    """A door stopped by itself; the message says why."""


def quarantine_for(config: Config) -> QuarantineStore:
    """The quarantine store `quarantine:` (or `database:`) names: the one place a process
    opens it (ops/stores.py)."""
    return store_for(config)


def open_quarantine(config: Config) -> tuple[QuarantineStore, bytes]:
    """The store and its release secret, for a process that starts; StartError if either
    cannot be opened."""
    try:
        store = quarantine_for(config)
        return store, store.release_secret()
    except (OSError, sqlite3.Error, QuarantineError, ReleaseSecretError) as exc:
        # A database's errors name it (host, port, name) already, without the password.
        where = "" if config.database else f"quarantine {config.quarantine.path}: "
        raise StartError(f"{where}{exc}") from exc


def reporter_for(config: Config, store: QuarantineStore, pool: ScanPool | None = None) -> Reporter:
    """The audit log and metrics of a process that writes them; StartError if the audit file
    cannot be opened."""
    try:
        return Reporter.from_config(config, store, engine=(lambda: pool.engine) if pool else None)
    except OSError as exc:
        raise StartError(f"audit log {config.audit.path}: {exc}") from exc


def serve_metrics(
    config: Config, ready: Callable[[], bool], metrics: Metrics, stack: AsyncExitStack
) -> None:
    """/metrics and the health checks, when `metrics.listen` asks for them, until `stack`
    closes; StartError if the port cannot be bound."""
    try:
        server = MetricsServer.for_config(config, ready, metrics)
    except OSError as exc:
        raise StartError(str(exc)) from exc
    if server is not None:
        stack.callback(server.stop)


@dataclass
class Scanning:
    """What every door serves with, started."""

    store: QuarantineStore
    release_secret: bytes
    pool: ScanPool
    reporter: Reporter
    reloader: PackReloader
    notices: SenderNotices


def notices_for(config: Config, store: QuarantineStore, send: Send | None) -> SenderNotices:
    """The sender notices `quarantine.notify_sender` asks for, sent with `send` (the relay's
    `send_notice`, handed in by the caller: a door imports no other door); StartError if a
    template cannot be used."""
    try:
        return SenderNotices(config, store, send)
    except NoticeError as exc:
        raise StartError(f"sender notices: {exc}") from exc


async def start_scanning(
    config: Config,
    stack: AsyncExitStack,
    parent: Connection | None = None,
    workers: int | None = None,
    send_notice: Send | None = None,
) -> Scanning:
    """The quarantine, the scan pool on the pack (`workers` of them, else engine.workers),
    the reporter (the audit log and metrics, or with `parent` a relay front end's forwarding
    to its parent), the pack reloader and the sender notices (sent with `send_notice`), each
    stopped by `stack`."""
    store, secret = open_quarantine(config)
    notices = notices_for(config, store, send_notice)
    stack.push_async_callback(asyncio.to_thread, notices.close)
    pool = await start_pool(config, stack, workers)
    if parent is not None:
        reporter: Reporter = ForwardingReporter(parent, lambda: pool.engine)
    else:
        reporter = reporter_for(config, store, pool)
        if reporter.audit is not None:
            stack.callback(reporter.audit.close)
    reporter.set_pack(pool.pack_version)
    reloader = await start_reloader(config, pool, stack, reporter.observe_reload)
    return Scanning(store, secret, pool, reporter, reloader, notices)


async def start_pool(config: Config, stack: AsyncExitStack, workers: int | None = None) -> ScanPool:
    """The scan pool on the pack, started (StartError if the pack does not load), closed by
    `stack`."""
    pool = scan_pool_for(config, workers)
    stack.push_async_callback(pool.close)
    try:
        await pool.start()
    except (PackError, OSError) as exc:
        raise StartError(f"rule pack {config.rules}:\n{exc}") from exc
    return pool


async def start_reloader(
    config: Config,
    pool: ScanPool,
    stack: AsyncExitStack,
    on_result: Callable[[ReloadResult], None] | None = None,
) -> PackReloader:
    """The pack reloader of `pool` (SIGHUP and changes to the rules folder), stopped by
    `stack`."""
    reloader = PackReloader(pool, config.rules, on_result=on_result)
    await reloader.start()
    stack.push_async_callback(reloader.stop)
    return reloader


@dataclass
class Serving:
    """What a started door gives the runner."""

    reporter: Reporter | None  # its audit file is reopened on SIGHUP
    reloader: PackReloader | None = None  # asked to reload on SIGHUP
    on_hangup: Callable[[], None] | None = None  # what else SIGHUP does (pass it on)
    reconfigure: Callable[[Config], None] | None = None  # apply the re-read configuration
    stopped: asyncio.Future[None] | None = None  # raises Stopped (or why) if the door stops


Start = Callable[[AsyncExitStack], Awaitable[Serving]]


async def run_service(name: str, config: Config, start: Start) -> int:
    """Start a door with `start`, serve until SIGTERM or SIGINT (or until it stops by itself),
    then stop whatever it started; the exit status. Call it in the main thread, where Python
    runs signal handlers."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    serving: Serving | None = None

    def stop_on(signum: int) -> None:
        if not stop.is_set():
            log.info("stopping on %s", signal.Signals(signum).name)
            stop.set()

    def hangup() -> None:
        if serving is None or stop.is_set():
            return  # starting (the pack and audit file are fresh) or stopping
        _hangup(serving, config)

    async with AsyncExitStack() as stack:
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop_on, signum)
            stack.callback(loop.remove_signal_handler, signum)
        loop.add_signal_handler(signal.SIGHUP, hangup)
        stack.callback(loop.remove_signal_handler, signal.SIGHUP)
        starting = asyncio.ensure_future(start(stack))
        stopping = asyncio.ensure_future(stop.wait())
        stack.callback(stopping.cancel)
        await asyncio.wait((starting, stopping), return_when=asyncio.FIRST_COMPLETED)
        if not starting.done():  # stopped while starting: what has started is stopped
            starting.cancel()
            await asyncio.gather(starting, return_exceptions=True)
            return 0
        try:
            serving = starting.result()
        except StartError as exc:
            print(f"mailgate {name}: {exc}", file=sys.stderr)
            return EXIT_CANNOT_START
        waiting: set[asyncio.Future[object]] = {stopping}
        if serving.stopped is not None:
            waiting.add(serving.stopped)
        await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
        status = 0
        if not stop.is_set():
            assert serving.stopped is not None
            print(f"mailgate {name}: {serving.stopped.exception()}", file=sys.stderr)
            status = EXIT_STOPPED_BY_ITSELF
    log.info("stopped")
    return status


def _hangup(serving: Serving, config: Config) -> None:
    log.info("SIGHUP: reopening the audit file, reloading the rule pack and the configuration")
    if serving.reporter is not None and serving.reporter.audit is not None:
        serving.reporter.audit.reopen()
    if serving.reloader is not None:
        serving.reloader.request("signal")
    if serving.on_hangup is not None:
        serving.on_hangup()
    try:
        fresh = load_config(config.source)
    except ConfigError as exc:
        log.error("configuration reload failed, keeping the running settings: %s", exc)
        return
    if serving.reconfigure is not None:
        serving.reconfigure(fresh)

"""`mailgate relay [--config FILE] [--check-next-hop]`: run the smart host, or test its next hop.

Signals: TERM and INT stop accepting connections and let transactions in progress finish;
HUP reopens the audit file and reloads the rule pack through the shared `PackReloader`, which
also reloads when the rules folder changes (a broken pack is logged with file and line, and the
old one keeps serving).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import socket
import sqlite3
import sys
from multiprocessing.connection import Connection

from mailgate.filter import PackError, PackReloader
from mailgate.filter.ops.config import Config, ConfigError, add_config_argument, load_config
from mailgate.filter.ops.logs import setup_logging
from mailgate.filter.ops.report import ForwardingReporter
from mailgate.filter.ops.service import scan_pool_for
from mailgate.filter.store.quarantine import LocalQuarantine, QuarantineError
from mailgate.filter.store.release_mark import ReleaseSecretError
from mailgate.relay.check import check_next_hop
from mailgate.relay.frontends import supervise
from mailgate.relay.server import Relay

log = logging.getLogger("mailgate.relay")


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "relay",
        help="run the compliance SMTP smart host",
        description="Run the compliance SMTP smart host (relay.* in the configuration).",
    )
    add_config_argument(parser)
    parser.add_argument(
        "--check-next-hop",
        action="store_true",
        help="connect to the configured next hop, show its banner, capabilities, TLS and "
        "certificate, and say whether the configured TLS check passes",
    )
    parser.set_defaults(func=run)


async def _tell_when_ready(relay: Relay, reporter: ForwardingReporter) -> None:
    while not relay.ready():
        await asyncio.sleep(0.2)
    reporter.ready()


def run(args: argparse.Namespace) -> int:
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        print(f"mailgate relay: {exc}", file=sys.stderr)
        return 2
    if args.check_next_hop:
        return check_next_hop(config)
    setup_logging()  # remote strings (command words, replies) masked and escaped
    # aiosmtpd logs every command at INFO: too much for a busy relay, and not free.
    logging.getLogger("mail.log").setLevel(logging.WARNING)
    if config.relay.processes > 1:
        return supervise(config, lambda *front_end: asyncio.run(serve(*front_end)))
    return asyncio.run(serve(config))


async def serve(
    config: Config, sock: socket.socket | None = None, parent: Connection | None = None
) -> int:
    """One relay process. With `parent`, a front end of several (relay.processes): it serves
    `sock`, and its audit records and metrics go to the parent process (frontends.py)."""
    pool = scan_pool_for(config)
    try:
        await pool.start()
    except PackError as exc:
        print(f"mailgate relay: rule pack {config.rules}:\n{exc}", file=sys.stderr)
        return 2
    forwarding = ForwardingReporter(parent, lambda: pool.engine) if parent else None
    try:
        store = LocalQuarantine(config.quarantine.path)
        relay = Relay.from_config(config, pool, store, reporter=forwarding)
        await relay.start(sock=sock, serve_metrics=forwarding is None)
    except (OSError, sqlite3.Error, QuarantineError, ReleaseSecretError) as exc:
        # Binding relay.listen or metrics.listen, opening audit.path or the quarantine (its
        # index, its release secret): exc names which.
        print(f"mailgate relay: cannot start: {exc}", file=sys.stderr)
        await pool.close()
        return 2
    assert relay.reporter is not None
    reporter = relay.reporter
    reporter.set_pack(pool.pack_version)
    reloader = PackReloader(pool, config.rules, on_result=reporter.observe_reload)
    await reloader.start()
    if forwarding is not None:
        ready = asyncio.ensure_future(_tell_when_ready(relay, forwarding))
    host, port = relay.address
    target = config.relay.next_hop
    if target.host:
        where = f"next hop {target.host}:{target.port}"
    else:
        where = f"outbox {config.relay.outbox}"
    log.info("listening on %s:%d, pack %s, %s", host, port, pool.pack_version, where)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)

    def hangup() -> None:
        if relay.reporter is not None and relay.reporter.audit is not None:
            relay.reporter.audit.reopen()
        reloader.request("signal")

    loop.add_signal_handler(signal.SIGHUP, hangup)
    await stop.wait()
    log.info("stopping")
    if forwarding is not None:
        ready.cancel()
    await reloader.stop()
    await relay.stop()
    await pool.close()
    return 0

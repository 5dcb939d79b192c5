"""`mailgate milter`: run the milter door for Postfix until SIGTERM.

SIGHUP re-reads the milter settings (fail_mode, time_budget) and asks the shared
`PackReloader` for the rule pack, which also reloads by itself when the rules folder changes.
"""

from __future__ import annotations

import argparse
import logging
import queue
import signal
import sqlite3
import sys
import threading
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING

from mailgate.filter.ops.config import Config, ConfigError, add_config_argument, load_config
from mailgate.filter.ops.logs import setup_logging

if TYPE_CHECKING:
    from mailgate.filter.milter.door import MilterDoor
    from mailgate.filter.ops.report import Reporter
    from mailgate.filter.scan.reload import PackReloader

log = logging.getLogger("mailgate.milter")

MISSING_PYMILTER = """\
mailgate milter needs pymilter, which is built against libmilter ({error}).
Install the C library and its headers, then the milter extra:
    apt-get install libmilter-dev     (Debian, Ubuntu)
    dnf install sendmail-milter-devel (Fedora, RHEL)
    pip install 'mailgate[milter]'
A relay-only install (`mailgate relay`) needs neither."""

EXIT_CONFIG = 2
EXIT_UNAVAILABLE = 69  # EX_UNAVAILABLE from sysexits.h: a needed component is missing


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "milter",
        help="run the milter for Postfix (pymilter)",
        description="Serve the rules engine to Postfix over the milter protocol. "
        "SIGTERM stops it cleanly; SIGHUP reloads the rule pack.",
    )
    add_config_argument(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    # journald adds the time; remote strings (Message-IDs, replies) masked and escaped
    setup_logging(fmt="%(levelname)s %(name)s: %(message)s")
    try:
        import Milter  # noqa: F401  (pymilter: only checked here, used by .milter)
    except ImportError as exc:
        print(MISSING_PYMILTER.format(error=exc), file=sys.stderr)
        return EXIT_UNAVAILABLE
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        print(f"mailgate milter: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    return MilterService(config, args.config).run()


class MilterService:
    """The process: engine loop thread, libmilter thread, and the main thread waiting on
    signals (Python runs signal handlers only in the main thread)."""

    def __init__(self, config: Config, config_path: Path | None) -> None:
        self.config = config
        self.config_path = config_path
        self.events: queue.SimpleQueue[int | str] = queue.SimpleQueue()

    def run(self) -> int:
        from mailgate.filter.milter import door as milter
        from mailgate.filter.ops.metrics import MetricsServer
        from mailgate.filter.ops.report import Reporter
        from mailgate.filter.ops.service import scan_pool_for
        from mailgate.filter.policy.pack import PackError
        from mailgate.filter.scan.reload import PackReloader
        from mailgate.filter.store.quarantine import LocalQuarantine, QuarantineError
        from mailgate.filter.store.release_mark import ReleaseSecretError, load_or_create_secret

        config = self.config
        try:
            store = LocalQuarantine(config.quarantine.path)
            secret = load_or_create_secret(config.quarantine.path)
        except (OSError, sqlite3.Error, QuarantineError, ReleaseSecretError) as exc:
            print(f"mailgate milter: quarantine {config.quarantine.path}: {exc}", file=sys.stderr)
            return EXIT_CONFIG
        engine = milter.EngineThread()
        engine.start()
        pool = scan_pool_for(config)
        try:
            engine.run(pool.start())
        except (PackError, OSError) as exc:
            print(
                f"mailgate milter: cannot load the rule pack {config.rules}: {exc}", file=sys.stderr
            )
            engine.run(pool.close())
            engine.stop()
            return EXIT_CONFIG
        try:
            reporter = Reporter.from_config(config, store, engine=lambda: pool.engine)
        except OSError as exc:
            print(f"mailgate milter: audit log {config.audit.path}: {exc}", file=sys.stderr)
            engine.run(pool.close())
            engine.stop()
            return EXIT_CONFIG
        reporter.metrics.set_pack(pool.pack_version)
        metrics_server = None
        if config.metrics.listen is not None:
            metrics_server = MetricsServer(
                config.metrics.listen, lambda: pool.engine is not None, reporter.metrics
            )
            try:
                metrics_server.start()
            except OSError as exc:
                print(f"mailgate milter: {exc}", file=sys.stderr)
                engine.run(pool.close())
                engine.stop()
                return EXIT_CONFIG
        reloader = PackReloader(pool, config.rules, on_result=reporter.metrics.observe_reload)
        engine.run(reloader.start())
        door = milter.MilterDoor(
            scanner=pool,
            store=store,
            release_secret=secret,
            fail_mode=str(config.milter.fail_mode),
            time_budget=config.milter.time_budget,
            reporter=reporter,
        )
        socket_path = milter.unix_socket_path(config.milter.socket)
        if socket_path is not None:
            socket_path.parent.mkdir(parents=True, exist_ok=True)
        log.info(
            "pack %s, %d workers, fail_mode %s, time budget %gs",
            pool.pack_version,
            pool.size,
            door.fail_mode,
            door.time_budget,
        )
        failure: list[BaseException] = []
        thread = threading.Thread(
            target=self._serve, args=(door, failure), name="libmilter", daemon=True
        )
        previous = {
            signum: signal.signal(signum, self._on_signal)
            for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
        }
        stop_requested = False
        try:
            thread.start()
            while True:
                event = self.events.get()
                if event == "stopped":
                    break
                if event == signal.SIGHUP:
                    self._reload(door, reloader, reporter)
                elif not stop_requested:
                    log.info("stopping on signal %s", signal.Signals(event).name)
                    stop_requested = True
                    milter.libmilter.stop()
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)
            thread.join(timeout=10)
            engine.run(reloader.stop())
            if metrics_server is not None:
                metrics_server.stop()
            engine.run(pool.close())
            engine.stop()
            if socket_path is not None:
                socket_path.unlink(missing_ok=True)
            if reporter.audit is not None:
                reporter.audit.close()
        if failure:
            print(f"mailgate milter: {failure[0]}", file=sys.stderr)
            return 1
        if not stop_requested:
            log.error("libmilter stopped on its own")
            return 1
        log.info("stopped")
        return 0

    def _serve(self, door: MilterDoor, failure: list[BaseException]) -> None:
        from mailgate.filter.milter.door import serve

        try:
            serve(door, self.config.milter.socket, self.config.milter.socket_mode)
        except Exception as exc:  # e.g. the socket cannot be opened: reported by run()
            failure.append(exc)
        finally:
            self.events.put("stopped")

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self.events.put(signum)

    def _reload(self, door: MilterDoor, reloader: PackReloader, reporter: Reporter) -> None:
        """The milter settings from the config file, a fresh audit file (after logrotate),
        and the rule pack; whatever does not load, the running one stays."""
        if reporter.audit is not None:
            reporter.audit.reopen()
        reloader.request("signal")
        try:
            config = load_config(self.config_path)
        except ConfigError as exc:
            log.error("configuration reload failed, keeping the running settings: %s", exc)
            return
        door.fail_mode = str(config.milter.fail_mode)
        door.time_budget = config.milter.time_budget

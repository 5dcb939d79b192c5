"""`mailgate milter [--config FILE]`: run the milter door for Postfix until SIGTERM.

The process itself is `filter/milter/service.py`, on the runner both doors share: SIGHUP
reopens the audit file, reloads the rule pack and re-reads the milter settings (fail_mode,
time_budget); SIGTERM stops it cleanly.
"""

from __future__ import annotations

import argparse
import functools
import sys

from mailgate.filter.ops.config import ConfigError, add_config_argument, load_config
from mailgate.filter.ops.logs import setup_logging
from mailgate.filter.ops.service import EXIT_CANNOT_START
from mailgate.filter.ops.stores import add_wait_argument, check_database

MISSING_PYMILTER = """\
mailgate milter needs pymilter, which is built against libmilter ({error}).
Install the C library and its headers, then the milter extra:
    apt-get install libmilter-dev     (Debian, Ubuntu)
    dnf install sendmail-milter-devel (Fedora, RHEL)
    pip install 'mailgate[milter]'
A relay-only install (`mailgate relay`) needs neither."""

EXIT_UNAVAILABLE = 69  # EX_UNAVAILABLE from sysexits.h: a needed component is missing


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "milter",
        help="run the milter for Postfix (pymilter)",
        description="Serve the rules engine to Postfix over the milter protocol. "
        "SIGTERM stops it cleanly; SIGHUP reloads the rule pack.",
    )
    add_config_argument(parser)
    add_wait_argument(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    # journald adds the time; remote strings (Message-IDs, replies) masked and escaped
    setup_logging(fmt="%(levelname)s %(name)s: %(message)s")
    try:
        import Milter  # noqa: F401  (pymilter: only checked here, used by the door)
    except ImportError as exc:
        print(MISSING_PYMILTER.format(error=exc), file=sys.stderr)
        return EXIT_UNAVAILABLE
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        print(f"mailgate milter: {exc}", file=sys.stderr)
        return EXIT_CANNOT_START
    refused = check_database(config, "milter", wait=args.wait_for_database)
    if refused:
        print(f"mailgate milter: {refused}", file=sys.stderr)
        return EXIT_CANNOT_START
    from mailgate.filter.milter import service  # imports pymilter, found above
    from mailgate.relay.release import send_notice

    return service.run(config, functools.partial(send_notice, config))

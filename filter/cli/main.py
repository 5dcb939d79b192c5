"""`mailgate` command line: one entry point; each concern registers its own subcommands."""

from __future__ import annotations

import argparse
import importlib
import sys

# Each module defines register(subparsers) and sets `func` on its parsers.
COMMAND_MODULES = (
    "mailgate.filter.cli.check",  # check, rules lint/test/stats/diff
    "mailgate.filter.cli.edm",  # edm build
    "mailgate.filter.cli.quarantine",  # quarantine list/show/release/delete/purge/import
    "mailgate.filter.cli.db",  # db status
    "mailgate.filter.cli.relay",  # relay
    "mailgate.filter.cli.milter",  # milter
    "mailgate.filter.cli.console",  # console, console adduser/deluser/token
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mailgate", description="Compliance filter for outgoing email."
    )
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    sys.exit(args.func(args) or 0)

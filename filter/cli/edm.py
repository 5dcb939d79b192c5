"""`mailgate edm build NAME FILE.csv --columns a,b,c`: an Exact Data Match index for the pack.

Writes `edm/NAME.edm` into the rule pack (`--rules`, else the pack the relay and milter use),
which an `edm: {index: NAME, ...}` condition then searches. The index holds salted hashes of
the values only; keep the CSV where it was. A running door picks the new index up like any
change to the pack (after lint and the rules' examples pass).

Exit codes: 0 built; 1 the CSV cannot be indexed (the error says where); 2 usage.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from mailgate.filter.cli import FAILED, OK, USAGE
from mailgate.filter.cli.check import RULES_HELP, rules_dir
from mailgate.filter.detect.edm.build import build_index
from mailgate.filter.detect.edm.index import NAME, EdmError
from mailgate.filter.detect.edm.words import MAX_WORDS
from mailgate.filter.ops.config import add_config_argument, packaged_rules_dir
from mailgate.filter.ops.logs import printable


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "edm",
        help="Exact Data Match indexes of the organisation's records",
        description="Exact Data Match: find the organisation's own records (a customer's "
        "account and name from the same row) in mail, from salted hashes of them.",
    )
    commands = parser.add_subparsers(dest="edm_command", required=True, metavar="ACTION")
    build = commands.add_parser(
        "build",
        help="index columns of a CSV file into the pack's edm/NAME.edm",
        description="Index columns of a CSV file (UTF-8, its first line naming the columns) "
        "into edm/NAME.edm of the rule pack: per column, salted hashes of the normalised "
        "values with their row numbers; no value is stored.",
    )
    build.add_argument("name", metavar="NAME", help="the index name rules use (edm: {index: NAME})")
    build.add_argument("csv", type=Path, metavar="FILE.csv")
    build.add_argument(
        "--columns",
        required=True,
        metavar="A,B,C",
        help="the columns to index, by the names in the first line",
    )
    build.add_argument("--rules", type=Path, help=RULES_HELP)
    add_config_argument(build)
    build.set_defaults(func=_build)


def _build(args: argparse.Namespace) -> int:
    if not NAME.fullmatch(args.name):
        print(f"edm build: {args.name!r}: a name is letters, digits, '-' and '_'", file=sys.stderr)
        return USAGE
    folder = rules_dir(args)
    if folder is None:
        return USAGE
    if not folder.is_dir():
        print(f"edm build: no rule pack folder {folder}", file=sys.stderr)
        return USAGE
    if folder.resolve() == packaged_rules_dir().resolve():
        print(
            "edm build: the pack shipped with mailgate is no place for your records: "
            "give --rules DIR (or keep a rules folder beside mailgate.yaml)",
            file=sys.stderr,
        )
        return USAGE
    columns = [c.strip() for c in args.columns.split(",") if c.strip()]
    try:
        report = build_index(args.csv, columns, folder / "edm" / f"{args.name}.edm")
    except EdmError as exc:
        print(f"edm build: {printable(str(exc))}", file=sys.stderr)
        return FAILED
    described = ", ".join(f"{c.name} ({c.kind}, {c.values} values)" for c in report.columns)
    print(
        printable(
            f"{report.path}: {report.rows} rows, {report.entries} values: {described}; "
            f"{report.seconds:.1f} s"
        )
    )
    if report.too_long:
        print(
            f"{report.too_long} values of more than {MAX_WORDS} words were left out",
            file=sys.stderr,
        )
    return OK

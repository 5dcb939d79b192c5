"""`mailgate check` and `mailgate rules lint|test|stats|diff`: the compliance officer's tools."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

from mailgate.filter.ops.audit import audit_record
from mailgate.filter.ops.config import Config, ConfigError, add_config_argument, load_config
from mailgate.filter.ops.logs import json_line, printable
from mailgate.filter.ops.report import message_id_of
from mailgate.filter.ops.review import explain
from mailgate.filter.ops.rulediff import Sample, files_corpus, quarantine_corpus, replay
from mailgate.filter.ops.rulestats import Stats, collect, from_database, table
from mailgate.filter.ops.stores import store_for
from mailgate.filter.policy.envelope import Envelope
from mailgate.filter.policy.pack import Pack, PackError, PackSource, build_pack
from mailgate.filter.policy.units import argument, parse_since
from mailgate.filter.policy.verdict import Verdict
from mailgate.filter.scan.engine import Engine, envelope_from_headers
from mailgate.filter.scan.examples import run_examples
from mailgate.filter.store.quarantine import LocalQuarantine, QuarantineError, QuarantineStore

RULES_HELP = "rule pack folder (default: the configuration's rules, as the relay and milter use)"


def rules_dir(args: argparse.Namespace) -> Path | None:
    """--rules, else the pack the relay and the milter would use here (the configuration's
    `rules`, whose default is ./rules or the shipped pack): one choice for every command."""
    if args.rules is not None:
        return args.rules
    try:
        return load_config(args.config).rules
    except ConfigError as exc:
        print(f"mailgate: {exc}", file=sys.stderr)
        return None


def register(subparsers: argparse._SubParsersAction) -> None:
    check = subparsers.add_parser("check", help="judge message files and explain the verdicts")
    check.add_argument("files", nargs="+", type=Path, metavar="FILE")
    check.add_argument("--rules", type=Path, help=RULES_HELP)
    check.add_argument("--json", action="store_true", help="one JSON object per message")
    check.add_argument("--sender", help="envelope sender (default: the From header)")
    check.add_argument(
        "--recipient", action="append", help="envelope recipient (repeatable; default: To/Cc/Bcc)"
    )
    add_config_argument(check)
    check.set_defaults(func=cmd_check)

    rules = subparsers.add_parser("rules", help="lint and test the rule pack")
    rules_sub = rules.add_subparsers(dest="rules_command", required=True, metavar="SUBCOMMAND")
    lint = rules_sub.add_parser("lint", help="check every rule and YARA file")
    lint.add_argument("--rules", type=Path, help=RULES_HELP)
    add_config_argument(lint)
    lint.set_defaults(func=cmd_lint)
    test = rules_sub.add_parser("test", help="run every rule's hit and miss examples")
    test.add_argument("--rules", type=Path, help=RULES_HELP)
    add_config_argument(test)
    test.set_defaults(func=cmd_test)
    stats = rules_sub.add_parser(
        "stats",
        help="hits per rule and mode from the audit log, and what monitor rules would have done",
    )
    stats.add_argument(
        "--since",
        type=argument(parse_since),
        metavar="WHEN",
        help="age such as 1d or 12h, or an ISO date/time",
    )
    stats.add_argument(
        "--audit",
        metavar="FILE",
        help="audit log to read, '-' for stdin (default: with `database` set, the whole "
        "fleet's records in the database; else audit.path of the configuration, else stdin, "
        "e.g. journalctl -u mailgate-relay -o cat | mailgate rules stats)",
    )
    stats.add_argument(
        "--rules", type=Path, help="pack to look up rule actions that the log does not record"
    )
    stats.add_argument("--json", action="store_true", help="one JSON object")
    add_config_argument(stats)
    stats.set_defaults(func=cmd_stats)
    diff = rules_sub.add_parser(
        "diff",
        help="replay messages through two packs and show every verdict that changes",
        description="Replay messages through the OLD and the NEW pack and print every verdict "
        "that changes (action, or the rules that hit), with the rules responsible. "
        "Exit status: 0 nothing changes, 1 some verdict changes, 2 a pack or corpus is unusable.",
    )
    diff.add_argument("old", type=Path, metavar="OLD_DIR", help="the pack serving now")
    diff.add_argument("new", type=Path, metavar="NEW_DIR", help="the pack to review")
    diff.add_argument(
        "corpus", nargs="*", type=Path, metavar="CORPUS", help=".eml files or folders of them"
    )
    diff.add_argument(
        "--quarantine",
        nargs="?",
        const="",
        metavar="PATH",
        help="also replay the held messages of the configured quarantine (the fleet's, with "
        "`database`), or of the local quarantine folder PATH",
    )
    diff.add_argument("--json", action="store_true", help="one JSON object")
    add_config_argument(diff)
    diff.set_defaults(func=cmd_diff)


def _load(folder: Path | None) -> Engine | None:
    if folder is None:
        return None
    try:
        return Engine(Pack.load(folder))
    except PackError as exc:
        print(f"mailgate: the rule pack does not load:\n{exc}", file=sys.stderr)
        return None


def cmd_check(args: argparse.Namespace) -> int:
    engine = _load(rules_dir(args))
    if engine is None:
        return 2
    missing = [f for f in args.files if not f.is_file()]
    if missing:
        print(f"mailgate: no such file: {missing[0]}", file=sys.stderr)
        return 2
    for path in args.files:
        raw = path.read_bytes()
        envelope = envelope_from_headers(raw)
        if args.sender is not None or args.recipient:
            envelope = Envelope(
                mail_from=args.sender if args.sender is not None else envelope.mail_from,
                rcpt_tos=tuple(args.recipient) if args.recipient else envelope.rcpt_tos,
            )
        verdict = engine.scan(raw, envelope)
        if args.json:
            record = check_record(str(path), raw, envelope, verdict, engine)
            print(json_line(record))
        else:  # evidence names attachments: a sender's words, escaped for the terminal
            print("\n".join(map(printable, explain(str(path), verdict, engine).splitlines())))
    return 0


def check_record(
    file: str, raw: bytes, envelope: Envelope, verdict: Verdict, engine: Engine
) -> dict[str, Any]:
    """The audit record the doors write (door 'check'), with the file it is about."""
    actions = {rule.id: str(rule.action) for rule in engine.pack.rules}
    record = audit_record("check", envelope, message_id_of(raw), len(raw), verdict, {}, actions)
    return {"file": file, **record}


def cmd_lint(args: argparse.Namespace) -> int:
    folder = rules_dir(args)
    if folder is None:
        return 2
    try:
        pack = build_pack(PackSource.read(folder))
    except PackError as exc:
        for problem in exc.problems:
            print(problem)
        print(f"{len(exc.problems)} problem(s) in {folder}", file=sys.stderr)
        return 1
    for name, index in pack.edm.items():
        print(f"EDM index {name}: {index.describe()}")
    print(
        f"{folder}: {len(pack.rules)} rules, {len(pack.yara.files)} YARA files, "
        f"{len(pack.edm)} EDM indexes, pack version {pack.version}: OK"
    )
    return 0


def cmd_test(args: argparse.Namespace) -> int:
    folder = rules_dir(args)
    if folder is None:
        return 2
    engine = _load(folder)
    if engine is None:
        return 1
    ran, failures = run_examples(engine, folder)
    for failure in failures:
        print(f"FAIL {failure}")
    print(f"{ran - len(failures)} of {ran} examples passed")
    return 1 if failures else 0


def cmd_stats(args: argparse.Namespace) -> int:
    source = args.audit
    fleet: Config | None = None  # with `database` set: the fleet's records, not one file
    if source is None:
        try:
            config = load_config(args.config)
        except ConfigError as exc:
            print(f"mailgate rules stats: {exc}", file=sys.stderr)
            return 2
        fleet = config if config.database is not None else None
        source = str(config.audit.path) if config.audit.path is not None else "-"
    actions = {}
    if args.rules is not None:
        engine = _load(args.rules)
        if engine is None:
            return 2
        actions = {rule.id: str(rule.action) for rule in engine.pack.rules}
    if fleet is not None:
        stats = _fleet_stats(fleet, args.since, actions)
        if stats is None:
            return 1
    elif source == "-" and sys.stdin.isatty():
        print(
            "mailgate rules stats: no audit log: give --audit FILE, set audit.path, "
            "or pipe the log in (journalctl -u mailgate-relay -o cat | mailgate rules stats)",
            file=sys.stderr,
        )
        return 2
    else:
        try:
            if source == "-":
                stats = collect(sys.stdin, args.since, actions)
            else:
                with open(source, encoding="utf-8", errors="replace") as lines:
                    stats = collect(lines, args.since, actions)
        except OSError as exc:
            print(f"mailgate rules stats: cannot read {source}: {exc.strerror}", file=sys.stderr)
            return 2
    if args.json:
        print(json.dumps(stats.to_dict(), ensure_ascii=False))
    else:
        print(table(stats))
    return 0


def _fleet_stats(config: Config, since: datetime | None, actions: dict[str, str]) -> Stats | None:
    """Every node's audit records, counted in the fleet's database; None (said on stderr)
    when it cannot be read."""
    # Imported here: psycopg is only needed with a database.
    from mailgate.filter.store.database import Database, DatabaseError
    from mailgate.filter.store.fleet import audit_counts

    assert config.database is not None
    database = Database(config.database, config.node)
    try:
        database.prepare()  # a command brings the schema up to date like any process
        return from_database(audit_counts(database, since), actions)
    except DatabaseError as exc:
        print(f"mailgate rules stats: {exc}", file=sys.stderr)
        return None
    finally:
        database.close()


def cmd_diff(args: argparse.Namespace) -> int:
    old, new = _load(args.old), _load(args.new)
    if old is None or new is None:
        return 2
    if not args.corpus and args.quarantine is None:
        print("mailgate rules diff: give message files, folders or --quarantine", file=sys.stderr)
        return 2
    missing = [p for p in args.corpus if not p.exists()]
    if args.quarantine and not Path(args.quarantine).is_dir():
        missing.append(args.quarantine)
    if missing:
        print(f"mailgate rules diff: no such file or folder: {missing[0]}", file=sys.stderr)
        return 2
    store: QuarantineStore | None = None
    if args.quarantine is not None:
        try:
            store = (
                LocalQuarantine(Path(args.quarantine))
                if args.quarantine
                else store_for(load_config(args.config), command=True)
            )
        except (ConfigError, QuarantineError, OSError) as exc:  # DatabaseError included
            print(f"mailgate rules diff: quarantine: {exc}", file=sys.stderr)
            return 2

    def corpus() -> Iterator[Sample]:
        yield from files_corpus(args.corpus)
        if store is not None:
            yield from quarantine_corpus(store)

    try:
        count, changes = replay(old, new, corpus())
    except OSError as exc:
        print(f"mailgate rules diff: {exc}", file=sys.stderr)
        return 2
    if args.json:
        result = {
            "old": old.version,
            "new": new.version,
            "messages": count,
            "changed": [c.to_dict() for c in changes],
        }
        print(json.dumps(result, ensure_ascii=False))
    else:
        for change in changes:
            print(change.describe())
        print(f"{len(changes)} of {count} verdicts change (pack {old.version} -> {new.version})")
    return 1 if changes else 0

"""`mailgate check` and `mailgate rules lint|test`: the compliance officer's tools."""

from __future__ import annotations

import argparse
import json
import sys
from importlib.resources import files
from pathlib import Path
from typing import Any

from .engine import Engine, envelope_from_headers
from .envelope import Envelope
from .examples import run_examples
from .rules import Pack, PackError, PackSource, build_pack
from .verdict import Verdict


def default_rules_dir() -> Path:
    """./rules when present, else the pack shipped with mailgate."""
    local = Path("rules")
    if local.is_dir() and any(local.glob("*.yaml")):
        return local
    return Path(str(files("mailgate.rules")))


def register(subparsers: argparse._SubParsersAction) -> None:
    check = subparsers.add_parser("check", help="judge message files and explain the verdicts")
    check.add_argument("files", nargs="+", type=Path, metavar="FILE")
    check.add_argument("--rules", type=Path, help="rule pack folder (default: ./rules or shipped)")
    check.add_argument("--json", action="store_true", help="one JSON object per message")
    check.add_argument("--sender", help="envelope sender (default: the From header)")
    check.add_argument(
        "--recipient", action="append", help="envelope recipient (repeatable; default: To/Cc/Bcc)"
    )
    check.set_defaults(func=cmd_check)

    rules = subparsers.add_parser("rules", help="lint and test the rule pack")
    rules_sub = rules.add_subparsers(dest="rules_command", required=True, metavar="SUBCOMMAND")
    lint = rules_sub.add_parser("lint", help="check every rule and YARA file")
    lint.add_argument("--rules", type=Path)
    lint.set_defaults(func=cmd_lint)
    test = rules_sub.add_parser("test", help="run every rule's hit and miss examples")
    test.add_argument("--rules", type=Path)
    test.set_defaults(func=cmd_test)


def _load(rules_dir: Path | None) -> Engine | None:
    try:
        return Engine(Pack.load(rules_dir or default_rules_dir()))
    except PackError as exc:
        print(f"mailgate: the rule pack does not load:\n{exc}", file=sys.stderr)
        return None


def cmd_check(args: argparse.Namespace) -> int:
    engine = _load(args.rules)
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
            print(json.dumps(check_record(str(path), verdict), ensure_ascii=False))
        else:
            print(explain(str(path), verdict, engine))
    return 0


def check_record(file: str, verdict: Verdict) -> dict[str, Any]:
    record = {"file": file, **verdict.to_dict()}
    record["action"] = str(verdict.action)
    return record


def explain(file: str, verdict: Verdict, engine: Engine) -> str:
    rules = {r.id: r for r in engine.pack.rules}
    lines = [f"{file}: {str(verdict.action).upper()}"]
    if verdict.unscannable:
        lines.append(f"  could not look inside: {', '.join(verdict.unscannable)}")
    if not verdict.rules and not verdict.monitor:
        lines.append("  no rule hit")
    for rule_id in verdict.rules + verdict.monitor:
        rule = rules[rule_id]
        mode = "monitor, no action taken" if rule.mode == "monitor" else "enforce"
        lines.append(f"  rule {rule_id} ({mode}) -> {rule.action}: {rule.reason}")
        for hit in verdict.hits:
            if hit.rule == rule_id:
                count = f"{hit.count} x " if hit.count > 1 else ""
                lines.append(f"    {hit.detector} in {hit.where}: {count}{hit.sample}")
    lines.append(f"  pack {verdict.pack_version}, {verdict.timings.get('total', 0) * 1000:.1f} ms")
    return "\n".join(lines)


def cmd_lint(args: argparse.Namespace) -> int:
    rules_dir = args.rules or default_rules_dir()
    try:
        pack = build_pack(PackSource.read(rules_dir))
    except PackError as exc:
        for problem in exc.problems:
            print(problem)
        print(f"{len(exc.problems)} problem(s) in {rules_dir}", file=sys.stderr)
        return 1
    print(
        f"{rules_dir}: {len(pack.rules)} rules, {len(pack.yara.files)} YARA files, "
        f"pack version {pack.version}: OK"
    )
    return 0


def cmd_test(args: argparse.Namespace) -> int:
    rules_dir = args.rules or default_rules_dir()
    engine = _load(rules_dir)
    if engine is None:
        return 1
    ran, failures = run_examples(engine, Path(rules_dir))
    for failure in failures:
        print(f"FAIL {failure}")
    print(f"{ran - len(failures)} of {ran} examples passed")
    return 1 if failures else 0

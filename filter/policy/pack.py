"""The rule pack: YAML policies plus YARA files, read into memory once and compiled.

A pack is built from a snapshot of its files (name -> bytes), so what was linted is exactly
what runs, even if someone edits the folder meanwhile; its version is a hash of that snapshot.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mailgate.filter.detect.detectors.yara_scan import YaraError, YaraScanner
from mailgate.filter.detect.patterns import PatternSet
from mailgate.filter.policy.conditions import (
    AllOf,
    AnyOf,
    Condition,
    ConditionError,
    PackCompiler,
    parse_condition,
)
from mailgate.filter.policy.verdict import Action, TagAction
from mailgate.filter.policy.yamlsource import LineDict, YamlError, line_of, load_yaml

RULE_ID = re.compile(r"^[a-z0-9][a-z0-9-]*$")
_ADDRESS = re.compile(r"[^@\s<>]+@[^@\s<>]+\.[^@\s<>]+")
RULE_KEYS = frozenset(
    {
        "id",
        "description",
        "mode",
        "when",
        "unless",
        "action",
        "reason",
        "tag",
        "reject",
        "tempfail",
        "examples",
    }
)


@dataclass(frozen=True)
class Problem:
    file: str
    line: int | None
    rule_id: str | None
    message: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else self.file
        rule = f" [{self.rule_id}]" if self.rule_id else ""
        return f"{where}:{rule} {self.message}"


class PackError(Exception):
    def __init__(self, problems: list[Problem]) -> None:
        super().__init__("\n".join(str(p) for p in problems))
        self.problems = problems


@dataclass
class Rule:
    id: str
    description: str
    mode: str  # enforce | monitor
    when: AllOf
    unless: AnyOf | None
    action: Action
    reason: str
    tag: TagAction | None
    smtp_code: int | None
    smtp_status: str | None
    examples: dict[str, list[str]]  # hit/miss -> paths relative to the rule file's folder
    file: str
    line: int


@dataclass
class PackSource:
    """The pack's files as bytes, keyed by path relative to the pack folder."""

    files: dict[str, bytes]
    root: Path | None = None  # where examples are looked up; None for in-memory packs

    @classmethod
    def read(cls, root: Path) -> PackSource:
        root = Path(root)
        if not root.is_dir():
            raise PackError([Problem(str(root), None, None, "rule pack folder not found")])
        files = {}
        for path in sorted(
            [
                *root.glob("*.yaml"),
                *root.glob("*.yml"),
                *root.glob("yara/*.yar"),
                *root.glob("yara/*.yara"),
            ]
        ):
            files[path.relative_to(root).as_posix()] = path.read_bytes()
        return cls(files, root)

    @property
    def version(self) -> str:
        digest = hashlib.sha256()
        for name, data in sorted(self.files.items()):
            digest.update(name.encode() + b"\0" + hashlib.sha256(data).digest())
        return digest.hexdigest()[:12]

    def label(self, name: str) -> str:
        return str(self.root / name) if self.root else name


@dataclass
class Pack:
    rules: list[Rule]
    patterns: PatternSet
    yara: YaraScanner
    version: str
    source: PackSource = field(repr=False)

    @classmethod
    def load(cls, root: Path) -> Pack:
        return build_pack(PackSource.read(root))


def build_pack(source: PackSource) -> Pack:
    """Compile a pack; raise PackError listing every problem found (not just the first)."""
    problems: list[Problem] = []
    compiler = PackCompiler()
    rules: list[Rule] = []
    seen: dict[str, str] = {}
    yaml_files = [n for n in source.files if n.endswith((".yaml", ".yml"))]
    if not yaml_files:
        problems.append(Problem(source.label("."), None, None, "no rule files (*.yaml) found"))
    for name in yaml_files:
        label = source.label(name)
        try:
            document = load_yaml(source.files[name])
        except YamlError as exc:
            problems.append(Problem(label, exc.line, None, f"YAML syntax error: {exc}"))
            continue
        if document is None:
            continue
        if not isinstance(document, dict) or not isinstance(document.get("rules"), list):
            problems.append(
                Problem(
                    label, line_of(document), None, "a rule file is a mapping with a 'rules:' list"
                )
            )
            continue
        for spec in document["rules"]:
            rule = _parse_rule(spec, name, label, compiler, problems)
            if rule is None:
                continue
            if rule.id in seen:
                problems.append(
                    Problem(
                        label,
                        rule.line,
                        rule.id,
                        f"duplicate rule id (first defined in {seen[rule.id]})",
                    )
                )
                continue
            seen[rule.id] = f"{label}:{rule.line}"
            rules.append(rule)
    yara_sources = {n: d for n, d in source.files.items() if n.startswith("yara/")}
    try:
        yara = YaraScanner.from_sources(
            {source.label(n): d.decode("utf-8", "replace") for n, d in yara_sources.items()}
        )
    except YaraError as exc:
        problems.append(Problem(exc.file, exc.line, None, f"YARA: {exc.reason}"))
        yara = YaraScanner.from_sources({})
    for condition, label, rule_id, line in compiler.yara_references:
        missing = condition.missing_reference(yara)
        if missing:
            problems.append(Problem(label, line, rule_id, f"yara: {missing}"))
    try:
        compiler.pattern_set.compile()
    except Exception as exc:  # a pattern that passed `add` but not the database build
        problems.append(Problem(source.label("."), None, None, f"regex database: {exc}"))
    if problems:
        raise PackError(problems)
    return Pack(rules, compiler.pattern_set, yara, source.version, source)


def _parse_rule(
    spec: Any, name: str, label: str, compiler: PackCompiler, problems: list[Problem]
) -> Rule | None:
    line = line_of(spec) or 0
    if not isinstance(spec, dict):
        problems.append(Problem(label, line, None, "each rule is a mapping"))
        return None
    rule_id = spec.get("id")

    def problem(message: str, key: str | None = None, at: int | None = None) -> None:
        problems.append(
            Problem(
                label,
                at or line_of(spec, key) or line,
                rule_id if isinstance(rule_id, str) else None,
                message,
            )
        )

    before = len(problems)
    compiler.current = (label, rule_id if isinstance(rule_id, str) else None)
    if not isinstance(rule_id, str) or not RULE_ID.match(rule_id):
        problem("rule 'id' is required: lower-case letters, digits and dashes", "id")
    for key in sorted(set(spec) - RULE_KEYS):
        problem(f"unknown rule key {key!r} (allowed: {', '.join(sorted(RULE_KEYS))})", key)
    mode = spec.get("mode", "enforce")
    if mode not in ("enforce", "monitor"):
        problem(f"mode must be 'enforce' or 'monitor', not {mode!r}", "mode")
    try:
        action = Action.parse(str(spec.get("action", "")))
    except KeyError:
        problem("action must be one of accept, tag, quarantine, reject, tempfail", "action")
        action = Action.ACCEPT

    def conditions(key: str) -> list[Condition]:
        items = spec.get(key)
        if items is None:
            return []
        if not isinstance(items, list) or not items:
            problem(f"'{key}' is a non-empty list of conditions", key)
            return []
        parsed = []
        for item in items:
            try:
                parsed.append(parse_condition(item, compiler))
            except ConditionError as exc:
                problem(str(exc), at=exc.line or line_of(spec, key))
        return parsed

    when = conditions("when")
    if "when" not in spec:
        problem("'when' is required: the conditions that make the rule hit")
    unless = conditions("unless")

    tag = None
    if "tag" in spec:
        tag = _parse_tag(spec["tag"], lambda m: problem(m, "tag"))
        if action is not Action.TAG:
            problem("'tag' options belong to rules with action: tag", "tag")
    elif action is Action.TAG:
        problem("action 'tag' needs 'tag: {subject_prefix: …, headers: {…}}'", "action")
    smtp_code, smtp_status = None, None
    for key, act, first in (("reject", Action.REJECT, "5"), ("tempfail", Action.TEMPFAIL, "4")):
        if key in spec:
            if action is not act:
                problem(f"'{key}' options belong to rules with action: {key}", key)
            smtp_code, smtp_status = _parse_reply(spec[key], first, lambda m, k=key: problem(m, k))
    reason = spec.get("reason", spec.get("description", rule_id))
    examples = _parse_examples(spec.get("examples"), lambda m: problem(m, "examples"))
    if len(problems) > before:
        return None
    return Rule(
        id=rule_id,
        description=str(spec.get("description", "")),
        mode=mode,
        when=AllOf(when),
        unless=AnyOf(unless) if unless else None,
        action=action,
        reason=str(reason),
        tag=tag,
        smtp_code=smtp_code,
        smtp_status=smtp_status,
        examples=examples,
        file=name,
        line=line,
    )


def _parse_tag(spec: Any, problem: Any) -> TagAction | None:
    keys = {"subject_prefix", "headers", "add_recipients"}
    if not isinstance(spec, dict) or not set(spec) <= keys:
        problem(
            "tag: expected {subject_prefix: '…', headers: {Name: value}, "
            "add_recipients: [archive@example.com]}"
        )
        return None
    prefix = spec.get("subject_prefix", "") or ""
    headers = spec.get("headers", {}) or {}
    recipients = spec.get("add_recipients", []) or []
    if isinstance(recipients, str):
        recipients = [recipients]
    if not isinstance(prefix, str) or not isinstance(headers, dict):
        problem("tag: subject_prefix is a string and headers a mapping")
        return None
    bad = [
        k for k, v in headers.items() if not _is_header_name(k) or "\n" in str(v) or "\r" in str(v)
    ]
    if bad:
        problem(f"tag: bad header {bad[0]!r}")
        return None
    wrong = [r for r in recipients if not isinstance(r, str) or not _ADDRESS.fullmatch(r)]
    if wrong:
        problem(f"tag: add_recipients: {wrong[0]!r} is not an address like archive@example.com")
        return None
    return TagAction(prefix, tuple((str(k), str(v)) for k, v in headers.items()), tuple(recipients))


def _is_header_name(name: Any) -> bool:
    return isinstance(name, str) and re.fullmatch(r"[!-9;-~]+", name) is not None


def _parse_reply(spec: Any, first: str, problem: Any) -> tuple[int | None, str | None]:
    if not isinstance(spec, dict) or not set(spec) <= {"code", "status"}:
        problem("expected {code: 550, status: 5.7.1}")
        return None, None
    code, status = spec.get("code"), spec.get("status")
    if code is not None and (
        not isinstance(code, int) or not str(code).startswith(first) or not 400 <= code < 600
    ):
        problem(f"code must be a {first}xx SMTP reply code")
        return None, None
    if status is not None and not re.fullmatch(rf"{first}\.\d{{1,3}}\.\d{{1,3}}", str(status)):
        problem(f"status must be an enhanced status code like {first}.7.1")
        return None, None
    return code, (str(status) if status is not None else None)


def _parse_examples(spec: Any, problem: Any) -> dict[str, list[str]]:
    if spec is None:
        return {"hit": [], "miss": []}
    if not isinstance(spec, LineDict | dict) or not set(spec) <= {"hit", "miss"}:
        problem("examples: expected {hit: [file.eml], miss: [file.eml]}")
        return {"hit": [], "miss": []}
    out = {}
    for key in ("hit", "miss"):
        value = spec.get(key, []) or []
        if isinstance(value, str):
            value = [value]
        if not all(isinstance(v, str) for v in value):
            problem(f"examples.{key}: expected a list of file paths")
            value = []
        out[key] = list(value)
    return out

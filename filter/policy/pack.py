"""The rule pack: YAML policies plus YARA files, read into memory once and compiled.

A pack is built from a snapshot of its files (name -> bytes), so what was linted is exactly
what runs, even if someone edits the folder meanwhile; its version is a hash of that snapshot.
The snapshot holds the rule files (*.yaml, *.yml), the YARA files compiled on their own
(yara/*.yar, yara/*.yara) and those below yara/ that they may include; nothing outside the
folder. A pack is bounded (LIMITS): a pack over a limit is refused before it is parsed.

EDM indexes (edm/*.edm) can be hundreds of megabytes, so the snapshot holds their path and
identity (the hash of a header that holds the digest of the rest) instead of their bytes:
whoever builds the pack (the parent, each scan worker) maps the file and checks it whole
against that identity, so a rebuilt index is a new pack version, and a file replaced between
the snapshot and a worker's start is refused, never silently used.
"""

from __future__ import annotations

import hashlib
import posixpath
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mailgate.filter.detect.detectors.yara_scan import YaraError, YaraScanner
from mailgate.filter.detect.edm.index import EdmError, EdmIndex, identity
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
from mailgate.filter.policy.yamlsource import (
    YamlError,
    control_character,
    dotted,
    line_of,
    load_yaml,
)

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
RULE_FILES = ("*.yaml", "*.yml")
# yara/*.yar(a) are compiled, each in its own namespace; those in subfolders only included.
YARA_FILES = ("yara/**/*.yar", "yara/**/*.yara")
EDM_FILES = "edm/*.edm"


@dataclass(frozen=True)
class PackLimits:
    """How large a pack may be. Parsing YAML costs about a second per megabyte, so a pack
    is refused by its size before it is parsed, and by its rule count before rules compile."""

    files: int = 1000
    rule_bytes: int = 2 << 20  # all rule files together
    yara_bytes: int = 16 << 20  # all YARA files together
    rules: int = 5000


LIMITS = PackLimits()


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


@dataclass(frozen=True)
class IndexFile:
    """An EDM index of the pack, by path and identity (see the module's docstring)."""

    path: Path
    identity: str


@dataclass
class PackSource:
    """The pack's files as bytes, keyed by path relative to the pack folder."""

    files: dict[str, bytes]
    root: Path | None = None  # where examples are looked up; None for in-memory packs
    indexes: dict[str, IndexFile] = field(default_factory=dict)  # "edm/NAME.edm" -> file

    @classmethod
    def read(cls, root: Path, limits: PackLimits = LIMITS) -> PackSource:
        root = Path(root)
        if not root.is_dir():
            raise PackError([Problem(str(root), None, None, "rule pack folder not found")])
        inside = root.resolve()
        paths = sorted({p for pattern in (*RULE_FILES, *YARA_FILES) for p in root.glob(pattern)})
        indexes = sorted(root.glob(EDM_FILES))
        sizes = {}
        for path in paths + indexes:
            name = path.relative_to(root).as_posix()
            if not path.resolve().is_relative_to(inside):
                raise PackError([Problem(str(path), None, None, "links outside the pack folder")])
            if not path.is_file():
                raise PackError([Problem(str(path), None, None, "not a regular file")])
            sizes[name] = path.stat().st_size
        problems = _over_limits(sizes, limits, root)
        if problems:
            raise PackError(problems)
        files = {name: (root / name).read_bytes() for name in sizes if not name.endswith(".edm")}
        edm = {p.relative_to(root).as_posix(): IndexFile(p.resolve(), identity(p)) for p in indexes}
        return cls(files, root, edm)

    @property
    def version(self) -> str:
        digest = hashlib.sha256()
        for name, data in sorted(self.files.items()):
            digest.update(name.encode() + b"\0" + hashlib.sha256(data).digest())
        for name, index in sorted(self.indexes.items()):
            digest.update(name.encode() + b"\0" + index.identity.encode())
        return digest.hexdigest()[:12]

    def label(self, name: str) -> str:
        return str(self.root / name) if self.root else name


def _over_limits(sizes: dict[str, int], limits: PackLimits, root: Path | None) -> list[Problem]:
    """What in a pack's files (name -> bytes) exceeds the limits."""
    where = str(root) if root else "."
    rule_bytes = sum(n for name, n in sizes.items() if name.endswith((".yaml", ".yml")))
    # EDM indexes count as files only: they are mapped, not read into memory
    yara_bytes = sum(n for name, n in sizes.items() if name.startswith("yara/"))
    problems = []
    if len(sizes) > limits.files:
        problems.append(f"{len(sizes)} files; a pack holds at most {limits.files}")
    if rule_bytes > limits.rule_bytes:
        problems.append(
            f"rule files of {rule_bytes} bytes; at most {limits.rule_bytes} bytes together"
        )
    if yara_bytes > limits.yara_bytes:
        problems.append(
            f"YARA files of {yara_bytes} bytes; at most {limits.yara_bytes} bytes together"
        )
    return [Problem(where, None, None, f"pack too large: {p}") for p in problems]


@dataclass
class Pack:
    rules: list[Rule]
    patterns: PatternSet
    yara: YaraScanner
    version: str
    source: PackSource = field(repr=False)
    edm: dict[str, EdmIndex] = field(default_factory=dict, repr=False)  # by index name

    @classmethod
    def load(cls, root: Path) -> Pack:
        return build_pack(PackSource.read(root))


def build_pack(source: PackSource, limits: PackLimits = LIMITS) -> Pack:
    """Compile a pack; raise PackError listing every problem found (not just the first)."""
    problems = _over_limits({n: len(d) for n, d in source.files.items()}, limits, source.root)
    if problems:
        raise PackError(problems)
    compiler = PackCompiler()
    rules: list[Rule] = []
    seen: dict[str, str] = {}
    yaml_files = [n for n in source.files if n.endswith((".yaml", ".yml"))]
    if not yaml_files:
        problems.append(Problem(source.label("."), None, None, "no rule files (*.yaml) found"))
    documents = []
    count = 0
    for name in yaml_files:
        label = source.label(name)
        try:
            document = load_yaml(source.files[name])
        except YamlError as exc:
            where = f"{dotted(exc.path)}: " if exc.path else ""
            problems.append(Problem(label, exc.line, None, f"{where}{exc}"))
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
        count += len(document["rules"])
        if count > limits.rules:
            message = f"pack too large: more than {limits.rules} rules"
            raise PackError([Problem(label, line_of(document, "rules"), None, message)])
        documents.append((name, label, document))
    for name, label, document in documents:
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
    yara_texts = {
        n: d.decode("utf-8", "replace") for n, d in source.files.items() if n.startswith("yara/")
    }
    try:
        yara = YaraScanner(
            {source.label(n): text for n, text in yara_texts.items() if n.count("/") == 1},
            includes={n.removeprefix("yara/"): text for n, text in yara_texts.items()},
        )
    except YaraError as exc:
        problems.append(Problem(exc.file, exc.line, None, f"YARA: {exc.reason}"))
        yara = YaraScanner.from_sources({})
    for condition, label, rule_id, line in compiler.yara_references:
        missing = condition.missing_reference(yara)
        if missing:
            problems.append(Problem(label, line, rule_id, f"yara: {missing}"))
    edm, unusable = _indexes(source, problems)
    for edm_condition, label, rule_id, line in compiler.edm_references:
        if edm_condition.index not in unusable:
            missing = edm_condition.bind(edm)
            if missing:
                problems.append(Problem(label, line, rule_id, f"edm: {missing}"))
    try:
        compiler.pattern_set.compile()
    except Exception as exc:  # a pattern that passed `add` but not the database build
        problems.append(Problem(source.label("."), None, None, f"regex database: {exc}"))
    if problems:
        raise PackError(problems)
    return Pack(rules, compiler.pattern_set, yara, source.version, source, edm)


def _indexes(source: PackSource, problems: list[Problem]) -> tuple[dict[str, EdmIndex], set[str]]:
    """The pack's EDM indexes, opened and checked, by name; and the names of those that could
    not be used (their problems added)."""
    opened, unusable = {}, set()
    for name, index in sorted(source.indexes.items()):
        stem = posixpath.basename(name).removesuffix(".edm")
        try:
            opened[stem] = EdmIndex(index.path, index.identity)
        except EdmError as exc:
            problems.append(Problem(source.label(name), None, None, f"EDM index: {exc.reason}"))
            unusable.add(stem)
    return opened, unusable


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
        problem(f"mode must be 'enforce' or 'monitor', not {_short(mode)}", "mode")
    action_name = spec.get("action", "")
    if isinstance(action_name, str) and action_name.upper() in Action.__members__:
        action = Action.parse(action_name)
    else:
        problem("action must be one of accept, tag, quarantine, reject, tempfail", "action")
        action = Action.ACCEPT
    description = _text(spec, "description", "", "\t\n", problem)
    # Without a reason, the description stands in, on one line (an SMTP reply, a log line).
    default_reason = " ".join(description.split()) or (rule_id if isinstance(rule_id, str) else "")
    reason = _text(spec, "reason", default_reason, "", problem)

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
        tag = _parse_tag(spec["tag"], lambda m, at=None: problem(m, "tag", at))
        if action is not Action.TAG:
            problem("'tag' options belong to rules with action: tag", "tag")
    if action is Action.TAG and tag in (None, TagAction()) and isinstance(rule_id, str):
        # Without options a tag still shows: the rule's id in X-Mailgate-Rules.
        tag = TagAction(listed_rule=rule_id)
    smtp_code, smtp_status = None, None
    for key, act, first in (("reject", Action.REJECT, "5"), ("tempfail", Action.TEMPFAIL, "4")):
        if key in spec:
            if action is not act:
                problem(f"'{key}' options belong to rules with action: {key}", key)
            smtp_code, smtp_status = _parse_reply(spec[key], first, lambda m, k=key: problem(m, k))
    examples = _parse_examples(spec.get("examples"), name, lambda m: problem(m, "examples"))
    if len(problems) > before:
        return None
    return Rule(
        id=rule_id,
        description=description,
        mode=mode,
        when=AllOf(when),
        unless=AnyOf(unless) if unless else None,
        action=action,
        reason=reason,
        tag=tag,
        smtp_code=smtp_code,
        smtp_status=smtp_status,
        examples=examples,
        file=name,
        line=line,
    )


def _text(spec: dict[str, Any], key: str, default: str, allowed: str, problem: Any) -> str:
    """spec[key] as a string without control characters (but those in `allowed`)."""
    value = spec.get(key, default)
    if not isinstance(value, str):
        problem(f"{key} must be a string (quote it), not {_short(value)}", key)
        return default
    bad = control_character(value, allowed)
    if bad is not None:
        problem(f"{key}: control character {bad!r} not allowed", key)
        return default
    return value


def _short(value: Any) -> str:
    """A value for an error message, bounded (repr of a big structure is itself big)."""
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _parse_tag(spec: Any, problem: Any) -> TagAction | None:
    """The tag options; a value with a control character would end the header line and
    start another (CR/LF: a Bcc: header), so lint refuses them."""
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
    if not isinstance(recipients, list):
        problem("tag: add_recipients is an address or a list of addresses")
        return None
    values = [("subject_prefix", prefix, line_of(spec, "subject_prefix"))]
    for name, value in headers.items():
        if not _is_header_name(name):
            problem(f"tag: bad header name {_short(name)}", line_of(headers, name))
            return None
        if isinstance(value, bool) or not isinstance(value, str | int):
            problem(
                f"tag: header {name}: the value is a string (quote it), not {_short(value)}",
                line_of(headers, name),
            )
            return None
        values.append((f"header {name}", str(value), line_of(headers, name)))
    for index, recipient in enumerate(recipients):
        at = line_of(recipients, index) or line_of(spec, "add_recipients")
        if not isinstance(recipient, str) or not _ADDRESS.fullmatch(recipient):
            problem(
                f"tag: add_recipients: {_short(recipient)} is not an address like "
                "archive@example.com",
                at,
            )
            return None
        values.append(("add_recipients", recipient, at))
    for what, value, at in values:
        bad = control_character(value)
        if bad is not None:
            problem(f"tag: {what}: control character {bad!r} not allowed", at)
            return None
    return TagAction(prefix, tuple((k, str(v)) for k, v in headers.items()), tuple(recipients))


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


def _parse_examples(spec: Any, rule_file: str, problem: Any) -> dict[str, list[str]]:
    """hit and miss example paths, relative to the rule file's folder and inside the pack
    (`rules test` and every reload read them)."""
    if spec is None:
        return {"hit": [], "miss": []}
    if not isinstance(spec, dict) or not set(spec) <= {"hit", "miss"}:
        problem("examples: expected {hit: [file.eml], miss: [file.eml]}")
        return {"hit": [], "miss": []}
    out = {}
    for key in ("hit", "miss"):
        value = spec.get(key, []) or []
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            problem(f"examples.{key}: expected a list of file paths")
            value = []
        for path in value:
            inside = posixpath.normpath(posixpath.join(posixpath.dirname(rule_file), path))
            if posixpath.isabs(path) or inside == ".." or inside.startswith("../"):
                problem(f"examples.{key}: {path!r} is outside the pack folder")
        out[key] = list(value)
    return out

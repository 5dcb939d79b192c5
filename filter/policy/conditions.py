"""Rule conditions: each parses its YAML spelling once and evaluates against a ScanContext.

A condition answers with its evidence when it holds, or None when it does not. Evidence never
carries a raw sensitive value: samples are masked where they are made.
"""

from __future__ import annotations

import fnmatch
import re
from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from mailgate.filter.detect.detectors import Match
from mailgate.filter.detect.detectors.registry import DLP_DETECTORS
from mailgate.filter.detect.edm.index import NAME as INDEX_NAME
from mailgate.filter.detect.edm.index import EdmIndex
from mailgate.filter.detect.edm.match import Search
from mailgate.filter.detect.masking import mask, mask_field, mask_text
from mailgate.filter.detect.patterns import (
    PatternError,
    PatternOverrun,
    bounded_search,
    check_pattern,
)
from mailgate.filter.detect.validators import VALIDATORS
from mailgate.filter.message.model import UNSCANNABLE_REASONS
from mailgate.filter.policy.envelope import domain_of
from mailgate.filter.policy.units import parse_size

if TYPE_CHECKING:
    from mailgate.filter.policy.context import ScanContext


class ConditionError(ValueError):
    """A condition that cannot be understood; `line` points into the rule file when known."""

    def __init__(self, message: str, line: int | None = None) -> None:
        super().__init__(message)
        self.line = line


@dataclass(frozen=True)
class Evidence:
    detector: str
    where: str
    count: int = 1
    sample: str = ""
    detail: dict[str, Any] = field(default_factory=dict)


Result = list[Evidence] | None


class Condition(ABC):
    spelling = ""  # the condition as written in the rule file, for explanations

    @abstractmethod
    def evaluate(self, ctx: ScanContext) -> Result:
        """The evidence when the condition holds, None when it does not."""


def _search(ctx: ScanContext, regex: re.Pattern[str], text: str) -> re.Match[str] | None:
    """A rule author's regex over a header value, on the scan's CPU budget for `re`."""
    try:
        return bounded_search(regex, text)
    except PatternOverrun:
        if ctx.content:
            raise  # the engine judges the message out of time
        # Already judging it unscannable, from its headers alone: this regex cannot hold.
        return None


def _compile_regex(pattern: Any, key: str) -> re.Pattern[str]:
    """Compile a rule author's regex for short targets (headers, subject), refusing patterns
    that could backtrack catastrophically: they would stall the mail flow."""
    if not isinstance(pattern, str) or not pattern:
        raise ConditionError(f"{key}: regex must be a non-empty string")
    try:
        compiled = re.compile(pattern)
    except re.error as exc:
        raise ConditionError(f"{key}: bad regex {pattern!r}: {exc}") from None
    problems = check_pattern(pattern)
    if problems:
        raise ConditionError(f"{key}: regex {pattern!r} refused: {'; '.join(problems)}")
    return compiled


def _string_list(value: Any, key: str) -> list[str]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise ConditionError(f"{key}: expected a string or a list of strings")
    return [v.strip() for v in value]


def _only_keys(spec: dict[str, Any], allowed: Iterable[str], key: str) -> None:
    unknown = sorted(set(spec) - set(allowed))
    if unknown:
        raise ConditionError(
            f"{key}: unknown option {unknown[0]!r} (allowed: {', '.join(sorted(allowed))})"
        )


def _flag(spec: dict[str, Any], key: str, where: str) -> bool | None:
    """An optional true/false option: a string such as 'no' would otherwise read as true."""
    value = spec.get(key)
    if value is not None and not isinstance(value, bool):
        raise ConditionError(f"{where}: expected true or false, got {value!r:.40}")
    return value


def _mapping(spec: Any, key: str) -> dict[str, Any]:
    if not isinstance(spec, dict):
        raise ConditionError(f"{key}: expected a mapping of options")
    return spec


# --- header and subject -------------------------------------------------------------------


class HeaderCondition(Condition):
    """`header: {name: X, regex: …}` or `{name: X, exists: true|false}`."""

    def __init__(self, spec: Any) -> None:
        spec = _mapping(spec, "header")
        _only_keys(spec, {"name", "regex", "exists"}, "header")
        name = spec.get("name")
        if not isinstance(name, str) or not name:
            raise ConditionError("header: 'name' is required")
        self.name = name
        if ("regex" in spec) == ("exists" in spec):
            raise ConditionError("header: give exactly one of 'regex' or 'exists'")
        self.regex = _compile_regex(spec["regex"], "header.regex") if "regex" in spec else None
        self.exists = _flag(spec, "exists", "header.exists") is not False

    def evaluate(self, ctx: ScanContext) -> Result:
        values = ctx.message.header(self.name)
        if self.regex is None:
            present = bool(values)
            if present != self.exists:
                return None
            return [Evidence("header", self.name, sample="present" if present else "absent")]
        for value in values:
            m = _search(ctx, self.regex, value)
            if m:
                return [Evidence("header", self.name, sample=mask_text(m.group(0)))]
        return None


class SubjectCondition(Condition):
    def __init__(self, spec: Any) -> None:
        spec = _mapping(spec, "subject")
        _only_keys(spec, {"regex"}, "subject")
        self.regex = _compile_regex(spec.get("regex"), "subject.regex")

    def evaluate(self, ctx: ScanContext) -> Result:
        for subject in ctx.message.header("subject"):  # a second Subject is read too
            m = _search(ctx, self.regex, subject)
            if m:
                return [Evidence("subject", "Subject", sample=mask_text(m.group(0)))]
        return None


# Headers a message has at most once (RFC 5322 3.6; RFC 2045 and 2183 for the ones that say
# how the body is read). Twice, clients differ in which one they show or use, so what was
# checked may not be what the recipient sees.
SINGLETON_HEADERS = (
    "date", "from", "sender", "reply-to", "to", "cc", "bcc", "message-id", "in-reply-to",
    "references", "subject", "mime-version", "content-type", "content-transfer-encoding",
    "content-disposition",
)  # fmt: skip


class DuplicateHeaderCondition(Condition):
    """`duplicate_header: any` (the singleton headers) or `duplicate_header: [Subject, X-Y]`:
    a top-level header of one of these names occurs more than once."""

    def __init__(self, spec: Any) -> None:
        names = _string_list(spec, "duplicate_header")
        if not names:
            raise ConditionError("duplicate_header: give `any` or header names")
        self.names = set(SINGLETON_HEADERS if names == ["any"] else (n.lower() for n in names))

    def evaluate(self, ctx: ScanContext) -> Result:
        counts = Counter(k.lower() for k, _ in ctx.message.headers)
        found = sorted(name for name in self.names if counts[name] > 1)
        if not found:
            return None
        return [Evidence("duplicate_header", "headers", len(found), sample=",".join(found))]


# --- body: custom regexes and built-in DLP detectors --------------------------------------


def _near(text: str, match: Match, keywords: list[str], proximity: int) -> bool:
    window = text[max(0, match.start - proximity) : match.end + proximity].lower()
    return any(k in window for k in keywords)


def _count_evidence(
    detector: str,
    per_part: Iterable[tuple[str, list[Match]]],
    min_count: int,
    masker: Callable[[str], str],
) -> Result:
    total = 0
    evidence = []
    for where, matches in per_part:
        if matches:
            total += len(matches)
            evidence.append(Evidence(detector, where, len(matches), masker(matches[0].value)))
    return evidence if total >= min_count else None


class BodyCondition(Condition):
    """`body: {regex, validator, keywords, proximity, min_count}` over every text view: the
    message body, text-like attachments, Office documents and attached messages."""

    def __init__(self, spec: Any, compiler: PackCompiler) -> None:
        spec = _mapping(spec, "body")
        _only_keys(spec, {"regex", "validator", "keywords", "proximity", "min_count"}, "body")
        pattern = spec.get("regex")
        if not isinstance(pattern, str) or not pattern:
            raise ConditionError("body: 'regex' is required")
        self.pattern_id = compiler.add_pattern(pattern, "body.regex")
        validator = spec.get("validator")
        if validator is not None and (
            not isinstance(validator, str) or validator not in VALIDATORS
        ):
            raise ConditionError(
                f"body.validator: unknown validator {validator!r} "
                f"(known: {', '.join(sorted(VALIDATORS))})"
            )
        self.validator = VALIDATORS[validator] if validator else None
        self.keywords = [k.lower() for k in _string_list(spec.get("keywords", []) or [], "body")]
        self.proximity = _positive_int(spec.get("proximity", 100), "body.proximity")
        self.min_count = _positive_int(spec.get("min_count", 1), "body.min_count")

    def _matches(self, ctx: ScanContext) -> Iterable[tuple[str, list[Match]]]:
        for index, part in ctx.text_parts():
            text = part.text or ""
            found = ctx.body_matches(index).get(self.pattern_id, [])
            if self.validator:
                found = [m for m in found if self.validator(m.value)]
            if self.keywords:
                found = [m for m in found if _near(text, m, self.keywords, self.proximity)]
            yield part.where, found

    def evaluate(self, ctx: ScanContext) -> Result:
        return _count_evidence("body", self._matches(ctx), self.min_count, mask)


class DlpCondition(Condition):
    """`dlp: credit_card` or `dlp: {type: credit_card, min_count: 3}`."""

    def __init__(self, spec: Any) -> None:
        if isinstance(spec, str):
            spec = {"type": spec}
        spec = _mapping(spec, "dlp")
        _only_keys(spec, {"type", "min_count"}, "dlp")
        self.detector = spec.get("type")
        if not isinstance(self.detector, str) or self.detector not in DLP_DETECTORS:
            raise ConditionError(
                f"dlp: unknown detector {self.detector!r} "
                f"(known: {', '.join(sorted(DLP_DETECTORS))})"
            )
        self.min_count = _positive_int(spec.get("min_count", 1), "dlp.min_count")

    def evaluate(self, ctx: ScanContext) -> Result:
        per_part = (
            (part.where, ctx.dlp_matches(self.detector, index)) for index, part in ctx.text_parts()
        )
        return _count_evidence(f"dlp:{self.detector}", per_part, self.min_count, mask)


# --- envelope ------------------------------------------------------------------------------


def _domain_matches(domain: str, wanted: list[str]) -> bool:
    """A listed domain covers itself and its subdomains; '*.x' is accepted as a synonym."""
    for w in wanted:
        w = w.lower().removeprefix("*.").rstrip(".")
        if domain == w or domain.endswith("." + w):
            return True
    return False


class AddressCondition(Condition):
    """`sender:` / `recipient:` with `domain: […]` and/or `address: […]` (envelope addresses,
    compared case-insensitively). `recipient` holds when any recipient matches."""

    def __init__(self, spec: Any, key: str) -> None:
        spec = _mapping(spec, key)
        _only_keys(spec, {"domain", "address"}, key)
        if not spec:
            raise ConditionError(f"{key}: give 'domain' or 'address'")
        self.key = key
        self.domains = [d.lower() for d in _string_list(spec.get("domain", []) or [], key)]
        self.addresses = {a.lower() for a in _string_list(spec.get("address", []) or [], key)}

    def _match(self, address: str) -> bool:
        address = address.strip().strip("<>").lower()
        if address in self.addresses:
            return True
        return bool(self.domains) and _domain_matches(domain_of(address), self.domains)

    def evaluate(self, ctx: ScanContext) -> Result:
        env = ctx.envelope
        addresses = [env.mail_from] if self.key == "sender" else list(env.rcpt_tos)
        hits = [a for a in addresses if self._match(a)]
        if not hits:
            return None
        # An address can hold a card number however its groups are joined.
        return [Evidence(self.key, "envelope", len(hits), sample=mask_field(hits[0]))]


# --- attachments, size, unscannable ---------------------------------------------------------


class AttachmentCondition(Condition):
    """Every given option must hold for the same attachment (or archive member)."""

    OPTIONS = frozenset(
        {"extension", "detected_type", "declared_type", "name", "encrypted", "macros", "size_over"}
    )

    def __init__(self, spec: Any) -> None:
        spec = _mapping(spec, "attachment")
        _only_keys(spec, self.OPTIONS, "attachment")
        if not spec:
            raise ConditionError("attachment: give at least one option")
        self.extensions = {
            e.lower().lstrip(".") for e in _string_list(spec.get("extension", []) or [], "ext")
        }
        self.detected = [t.lower() for t in _string_list(spec.get("detected_type", []) or [], "t")]
        self.declared = [t.lower() for t in _string_list(spec.get("declared_type", []) or [], "t")]
        self.name = _compile_regex(spec["name"], "attachment.name") if "name" in spec else None
        self.encrypted = _flag(spec, "encrypted", "attachment.encrypted")
        self.macros = _flag(spec, "macros", "attachment.macros")
        self.size_over = (
            _size(spec["size_over"], "attachment.size_over") if "size_over" in spec else None
        )

    def _holds(self, part: Any) -> bool:
        if self.extensions and not self.extensions.intersection(part.extensions):
            return False
        if self.detected and not any(
            fnmatch.fnmatchcase(part.detected_type or "", t) for t in self.detected
        ):
            return False
        if self.declared and not any(
            fnmatch.fnmatchcase(part.content_type, t) for t in self.declared
        ):
            return False
        if self.name is not None and not self.name.search(part.filename or ""):
            return False
        if self.encrypted is not None and part.encrypted != bool(self.encrypted):
            return False
        if self.macros is not None and part.macros != bool(self.macros):
            return False
        return not (self.size_over is not None and part.size <= self.size_over)

    def _why(self, part: Any) -> str:
        """What held (the evidence's place names the file), so that two conditions on one
        file read as two reasons."""
        reasons = []
        if self.extensions:
            reasons.append("extension " + ", ".join(sorted(self.extensions & set(part.extensions))))
        if self.detected:
            reasons.append(f"content {part.detected_type}")
        if self.declared:
            reasons.append(f"declared {part.content_type}")
        if self.name is not None:
            reasons.append("name")
        if self.encrypted is not None:
            reasons.append("encrypted" if part.encrypted else "not encrypted")
        if self.macros is not None:
            reasons.append("macros" if part.macros else "no macros")
        if self.size_over is not None:
            reasons.append(f"{part.size} bytes")
        return "; ".join(reasons)

    def evaluate(self, ctx: ScanContext) -> Result:
        found = [p for p in ctx.message.attachments if self._holds(p)]
        if not found:
            return None
        return [Evidence("attachment", p.where, sample=self._why(p)) for p in found]


class SizeOverCondition(Condition):
    def __init__(self, spec: Any) -> None:
        self.limit = _size(spec, "size_over")

    def evaluate(self, ctx: ScanContext) -> Result:
        size = ctx.message.size
        return [Evidence("size", "message", sample=str(size))] if size > self.limit else None


class UnscannableCondition(Condition):
    """`unscannable: [encrypted, too_deep, ..., fragment]` (UNSCANNABLE_REASONS, or `any`)."""

    def __init__(self, spec: Any) -> None:
        reasons = _string_list(spec, "unscannable")
        if reasons == ["any"]:
            reasons = list(UNSCANNABLE_REASONS)
        unknown = [r for r in reasons if r not in UNSCANNABLE_REASONS]
        if unknown:
            raise ConditionError(
                f"unscannable: unknown reason {unknown[0]!r} "
                f"(known: {', '.join(UNSCANNABLE_REASONS)}, any)"
            )
        self.reasons = set(reasons)

    def evaluate(self, ctx: ScanContext) -> Result:
        found = sorted(self.reasons & ctx.message.unscannable)
        if not found:
            return None
        wheres = [p.where for p in ctx.message.parts if p.unscannable & self.reasons] or ["message"]
        return [Evidence("unscannable", wheres[0], len(wheres), sample=",".join(found))]


# --- YARA ------------------------------------------------------------------------------------


class YaraCondition(Condition):
    """`yara: {rule: NAME}` (NAME or namespace.NAME), `{tag: TAG}` or `{any: true}`."""

    def __init__(self, spec: Any) -> None:
        spec = _mapping(spec, "yara")
        _only_keys(spec, {"rule", "tag", "any"}, "yara")
        if len(spec) != 1:
            raise ConditionError("yara: give exactly one of 'rule', 'tag' or 'any'")
        self.rule = spec.get("rule")
        self.tag = spec.get("tag")
        self.any = _flag(spec, "any", "yara.any")
        for key in ("rule", "tag"):
            if key in spec and not isinstance(spec[key], str):
                raise ConditionError(f"yara.{key}: expected a name, got {spec[key]!r:.40}")
        if self.any is False:
            raise ConditionError("yara.any: write 'any: true' (false would never hold)")

    def missing_reference(self, scanner: Any) -> str | None:
        """Why this condition can never hold with the pack's YARA files, or None."""
        if self.rule is not None and self.rule not in scanner.rule_names:
            return f"no YARA rule named {self.rule!r} in the pack's yara/ files"
        if self.tag is not None and self.tag not in scanner.tags:
            return f"no YARA rule has the tag {self.tag!r}"
        return None

    def _selects(self, match: Any) -> bool:
        if self.any:
            return True
        if self.tag is not None:
            return self.tag in match.tags
        return self.rule in (match.rule, f"{match.namespace}.{match.rule}")

    def evaluate(self, ctx: ScanContext) -> Result:
        found = [m for m in ctx.yara_matches() if self._selects(m)]
        if not found:
            return None
        return [
            Evidence(
                "yara",
                m.where,
                sample=f"{m.namespace}.{m.rule}",
                detail={
                    "rule": m.rule,
                    "namespace": m.namespace,
                    "tags": list(m.tags),
                    "meta": dict(m.meta),
                },
            )
            for m in found
        ]


# --- exact data match ----------------------------------------------------------------------

MAX_PROXIMITY = 10_000


class EdmCondition(Condition):
    """`edm: {index: customers, columns: [...], min_columns: 2, min_rows: 1, proximity: 300}`:
    values of at least `min_columns` columns of one row of the index stand within `proximity`
    characters of each other, for at least `min_rows` rows. Evidence names the index, the
    columns and the count of rows, never a value."""

    def __init__(self, spec: Any) -> None:
        spec = _mapping(spec, "edm")
        _only_keys(spec, {"index", "columns", "min_columns", "min_rows", "proximity"}, "edm")
        index = spec.get("index")
        if not isinstance(index, str) or not INDEX_NAME.fullmatch(index):
            raise ConditionError("edm: 'index' is required: the name of an index in edm/")
        self.index = index
        self.column_names = (
            _string_list(spec["columns"], "edm.columns") if "columns" in spec else None
        )
        self.min_columns = _positive_int(spec.get("min_columns", 2), "edm.min_columns")
        self.min_rows = _positive_int(spec.get("min_rows", 1), "edm.min_rows")
        self.proximity = _positive_int(spec.get("proximity", 300), "edm.proximity")
        if self.proximity > MAX_PROXIMITY:
            raise ConditionError(f"edm.proximity: at most {MAX_PROXIMITY} characters")
        self.search: Search | None = None  # once bound to the pack's index

    def bind(self, indexes: dict[str, EdmIndex]) -> str | None:
        """Look the index and its columns up in the pack; why the condition cannot be used."""
        index = indexes.get(self.index)
        if index is None:
            return (
                f"no index {self.index!r} in the pack's edm/ folder "
                f"(mailgate edm build {self.index} FILE.csv --columns ...)"
            )
        names = self.column_names or [c.name for c in index.columns]
        known = ", ".join(c.name for c in index.columns)
        unknown = [n for n in names if index.column(n) is None]
        if unknown:
            return f"index {self.index!r} has no column {unknown[0]!r} (columns: {known})"
        if self.min_columns > len(set(names)):
            return f"min_columns {self.min_columns}, but only {len(set(names))} columns searched"
        columns = frozenset(c for c in map(index.column, names) if c is not None)
        self.search = Search(self.index, columns, self.min_columns, self.proximity)
        return None

    def evaluate(self, ctx: ScanContext) -> Result:
        search = self.search
        assert search is not None, "bound when the pack was built"
        rows: set[int] = set()
        columns: set[int] = set()
        per_part = []
        for (_, part), found in zip(ctx.text_parts(), ctx.edm_rows(search), strict=True):
            if found:
                rows.update(found)
                columns.update(*found.values())
                per_part.append((part.where, len(found)))
        if len(rows) < self.min_rows:
            return None
        names = [ctx.pack.edm[self.index].columns[c].name for c in sorted(columns)]
        detail = {"index": self.index, "columns": names, "rows": len(rows)}
        sample = f"{self.index}: {', '.join(names)}"
        return [Evidence("edm", where, n, sample, detail) for where, n in per_part]


# --- combinators ---------------------------------------------------------------------------


class AllOf(Condition):
    def __init__(self, conditions: list[Condition]) -> None:
        self.conditions = conditions

    def evaluate(self, ctx: ScanContext) -> Result:
        evidence: list[Evidence] = []
        for condition in self.conditions:
            result = condition.evaluate(ctx)
            if result is None:
                return None
            evidence.extend(result)
        return evidence


class AnyOf(Condition):
    def __init__(self, conditions: list[Condition]) -> None:
        self.conditions = conditions

    def evaluate(self, ctx: ScanContext) -> Result:
        evidence: list[Evidence] | None = None
        for condition in self.conditions:
            result = condition.evaluate(ctx)
            if result is not None:
                evidence = (evidence or []) + result
        return evidence


class NotCondition(Condition):
    def __init__(self, condition: Condition) -> None:
        self.condition = condition

    def evaluate(self, ctx: ScanContext) -> Result:
        return None if self.condition.evaluate(ctx) is not None else []


# --- parsing -------------------------------------------------------------------------------


class PackCompiler:
    """What conditions share while a pack compiles: the body regexes of the whole pack, so they
    build one PatternSet, and the YARA names rules refer to, so lint can check they exist."""

    def __init__(self) -> None:
        from mailgate.filter.detect.patterns import PatternSet

        self.pattern_set = PatternSet()
        self._ids: dict[str, int] = {}
        # (condition, file label, rule id, line) for every `yara:` and `edm:` condition
        self.yara_references: list[tuple[YaraCondition, str, str | None, int | None]] = []
        self.edm_references: list[tuple[EdmCondition, str, str | None, int | None]] = []
        self.current: tuple[str, str | None] = ("", None)  # file label and rule being parsed

    def add_pattern(self, pattern: str, key: str) -> int:
        if pattern in self._ids:
            return self._ids[pattern]
        try:
            re.compile(pattern)
        except re.error as exc:
            raise ConditionError(f"{key}: bad regex {pattern!r}: {exc}") from None
        problems = check_pattern(pattern)
        if problems:
            raise ConditionError(f"{key}: regex {pattern!r} refused: {'; '.join(problems)}")
        try:
            pattern_id = self.pattern_set.add(pattern)
        except PatternError as exc:
            raise ConditionError(f"{key}: bad regex {pattern!r}: {exc}") from None
        self._ids[pattern] = pattern_id
        return pattern_id


CONDITION_NAMES = (
    "header",
    "subject",
    "duplicate_header",
    "body",
    "dlp",
    "sender",
    "recipient",
    "attachment",
    "yara",
    "edm",
    "size_over",
    "unscannable",
    "any",
    "all",
    "not",
)


def parse_condition(spec: Any, compiler: PackCompiler) -> Condition:
    """One list item of `when`/`unless`: a single-key mapping naming the condition."""
    from mailgate.filter.policy.yamlsource import line_of

    if not isinstance(spec, dict) or len(spec) != 1:
        raise ConditionError(
            "each condition is a mapping with one key, e.g. `- subject: {regex: ...}`",
            line_of(spec),
        )
    ((name, value),) = spec.items()
    line = line_of(spec, name)
    condition = _parse_named(name, value, line, compiler)
    condition.spelling = f"{name}: {_plain(value)}"
    return condition


def _plain(value: Any) -> str:
    """The YAML value as a one-line flow string, bounded."""
    text = str(_unmark(value))
    return text if len(text) <= 80 else text[:77] + "..."


def _unmark(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _unmark(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_unmark(v) for v in value]
    return value


def _parse_named(name: str, value: Any, line: int | None, compiler: PackCompiler) -> Condition:
    try:
        if name in ("any", "all"):
            if not isinstance(value, list) or not value:
                raise ConditionError(f"{name}: expected a non-empty list of conditions")
            inner = [parse_condition(v, compiler) for v in value]
            return AnyOf(inner) if name == "any" else AllOf(inner)
        if name == "not":
            return NotCondition(parse_condition(value, compiler))
        if name in ("sender", "recipient"):
            return AddressCondition(value, name)
        if name == "body":
            return BodyCondition(value, compiler)
        if name == "yara":
            condition = YaraCondition(value)
            compiler.yara_references.append((condition, *compiler.current, line))
            return condition
        if name == "edm":
            edm = EdmCondition(value)
            compiler.edm_references.append((edm, *compiler.current, line))
            return edm
        factory = _SIMPLE.get(name)
        if factory is None:
            raise ConditionError(
                f"unknown condition {name!r} (known: {', '.join(CONDITION_NAMES)})"
            )
        return factory(value)
    except ConditionError as exc:
        if exc.line is None:
            exc.line = line
        raise


_SIMPLE: dict[str, Callable[[Any], Condition]] = {
    "header": HeaderCondition,
    "subject": SubjectCondition,
    "duplicate_header": DuplicateHeaderCondition,
    "dlp": DlpCondition,
    "attachment": AttachmentCondition,
    "size_over": SizeOverCondition,
    "unscannable": UnscannableCondition,
}


def _positive_int(value: Any, key: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConditionError(f"{key}: expected a whole number of at least 1, got {value!r}")
    return value


def _size(value: Any, key: str) -> int:
    try:
        return parse_size(value)
    except ValueError as exc:
        raise ConditionError(f"{key}: {exc}") from None

"""YARA rules over the raw message, every decoded part and every archive member.

The rule files are compiled once, each in a namespace named after its file stem. Every scanned
object gets the externals `filename`, `extension` (the last one) and `mime_type` (detected type,
else declared type), which rules declare nothing for: they are defined here with '' defaults.
yara-python releases the GIL while it scans.

`include "x.yar"` reads from the `includes` given (the rule pack's yara/ folder, already in
memory), never from the disk: an include cannot open a file outside the pack, and what is
included is part of the pack's version like any other file of it.
"""

from __future__ import annotations

import math
import posixpath
import re
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePath
from typing import Any

import yara

from mailgate.filter.message.model import Message, Part

EXTERNALS = {"filename": "", "extension": "", "mime_type": ""}
DEFAULT_TIMEOUT = 10.0  # seconds per message, all objects together
_ERROR_LOCATION = re.compile(r"^line (?P<line>\d+): (?P<reason>.*)$", re.S)


class YaraError(Exception):
    """A YARA file that cannot be used; names the file and, when known, the line."""

    def __init__(self, file: str, line: int | None, reason: str) -> None:
        self.file = file
        self.line = line
        self.reason = reason
        where = f"{file}:{line}" if line is not None else file
        super().__init__(f"{where}: {reason}")


@dataclass(frozen=True)
class YaraMatch:
    rule: str
    namespace: str
    tags: tuple[str, ...]
    meta: dict[str, Any] = field(hash=False)
    where: str  # "message" for the raw message, else the part's `where` label


class YaraScanner:
    """Compiled YARA rules; `scan` is safe to call from several threads."""

    def __init__(
        self, sources: Mapping[str, str], includes: Mapping[str, str] | None = None
    ) -> None:
        """`sources` maps a file label (its path) to the YARA source text; `includes` maps the
        names `include` may use (paths relative to the pack's yara/ folder) to their text."""
        namespaces: dict[str, str] = {}
        for label in sources:
            stem = PurePath(label).stem
            if stem in namespaces:
                raise YaraError(label, None, f"namespace {stem!r} also used by {namespaces[stem]}")
            namespaces[stem] = label
        self.files = list(sources)
        self._rules: yara.Rules | None = None
        if namespaces:
            by_namespace = {stem: sources[label] for stem, label in namespaces.items()}
            include = _Includes(includes or {})
            try:
                self._rules = yara.compile(
                    sources=by_namespace, externals=EXTERNALS, include_callback=include
                )
            except yara.Error as exc:
                raise _locate(sources, include, exc) from exc
        rules = list(self._rules) if self._rules is not None else []
        self.rule_names = frozenset(r.identifier for r in rules)
        self.tags = frozenset(t for r in rules for t in r.tags)

    @classmethod
    def from_sources(cls, sources: Mapping[str, str]) -> YaraScanner:
        return cls(sources)

    @classmethod
    def from_files(cls, files: Iterable[Path | str]) -> YaraScanner:
        sources = {}
        for path in map(Path, files):
            if not path.is_file():
                raise YaraError(str(path), None, "no such file")
            sources[str(path)] = path.read_text("utf-8", "replace")
        return cls(sources)

    @classmethod
    def empty(cls) -> YaraScanner:
        """A scanner without rules, for packs that ship no YARA files."""
        return cls({})

    @classmethod
    def from_directory(cls, directory: Path | str) -> YaraScanner:
        """Every `*.yar` file of a directory (none if it does not exist)."""
        directory = Path(directory)
        return cls.from_files(sorted(directory.glob("*.yar")) if directory.is_dir() else [])

    def scan(self, message: Message, timeout: float = DEFAULT_TIMEOUT) -> list[YaraMatch]:
        """Matches over the raw message and every part, one per (namespace, rule, where).

        An object the time budget does not cover gets "timeout" in its `unscannable` set (and
        the message's), so a rule pack can decide what an unfinished scan means.
        """
        if self._rules is None:
            return []
        deadline = time.monotonic() + timeout
        found: dict[tuple[str, str, str], YaraMatch] = {}
        for where, data, externals, part in _targets(message):
            remaining = deadline - time.monotonic()
            try:
                if remaining <= 0:
                    matches = None
                else:
                    # yara counts whole seconds; the deadline check above bounds the total.
                    matches = self._rules.match(
                        data=data, externals=externals, timeout=max(1, math.ceil(remaining))
                    )
            except yara.TimeoutError:
                matches = None
            if matches is None:
                message.unscannable.add("timeout")
                if part is not None:
                    part.unscannable.add("timeout")
                continue
            for m in matches:
                key = (m.namespace, m.rule, where)
                if key not in found:
                    found[key] = YaraMatch(m.rule, m.namespace, tuple(m.tags), dict(m.meta), where)
        return list(found.values())


def _targets(message: Message) -> Iterator[tuple[str, bytes, dict[str, str], Part | None]]:
    yield "message", message.raw, {**EXTERNALS, "mime_type": "message/rfc822"}, None
    for part in message.parts:
        externals = {
            "filename": part.filename or "",
            "extension": part.extensions[-1] if part.extensions else "",
            "mime_type": part.detected_type or part.content_type,
        }
        yield part.where, part.payload, externals, part


class _Includes:
    """yara's include callback: the text of an included file, from the pack only."""

    def __init__(self, files: Mapping[str, str]) -> None:
        self.files = files
        self.refused: tuple[str, str] | None = None  # (name, why) of the last include refused

    def __call__(self, requested: str, including: str | None, namespace: str) -> str | None:
        name = posixpath.normpath(requested)
        if posixpath.isabs(name) or name == ".." or name.startswith("../"):
            self.refused = (requested, "only files inside the pack's yara/ folder")
            return None
        if name not in self.files:
            self.refused = (requested, "no such .yar file in the pack's yara/ folder")
            return None
        return self.files[name]


def _locate(sources: Mapping[str, str], include: _Includes, exc: yara.Error) -> YaraError:
    """yara reports 'line N: reason' without the file when compiling several sources:
    compile each alone to find the one at fault."""
    for label, text in sources.items():
        include.refused = None
        try:
            yara.compile(source=text, externals=EXTERNALS, include_callback=include)
        except yara.Error as single:
            m = _ERROR_LOCATION.match(str(single))
            line, reason = (int(m["line"]), m["reason"]) if m else (None, str(single))
            if include.refused is not None:
                requested, why = include.refused
                reason = f"include {requested!r}: {why}"
                at = text.find(f'"{requested}"')
                line = text.count("\n", 0, at) + 1 if at >= 0 else line  # yara's is one late
            return YaraError(label, line, reason)
    return YaraError(", ".join(sources), None, str(exc))

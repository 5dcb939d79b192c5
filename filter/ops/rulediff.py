"""`mailgate rules diff OLD NEW CORPUS…`: replay messages through two packs and show every
verdict that changes, with the rules responsible: the review step before a pack goes live."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mailgate.filter.policy.envelope import Envelope
from mailgate.filter.policy.verdict import Verdict
from mailgate.filter.scan.engine import Engine, envelope_from_headers
from mailgate.filter.store.quarantine import QuarantineError, QuarantineStore


@dataclass(frozen=True)
class Sample:
    name: str  # file path, or "quarantine:<id>"
    raw: bytes
    envelope: Envelope


@dataclass(frozen=True)
class Change:
    name: str
    old: Verdict
    new: Verdict
    # (rule, mode, action) that hit only under one of the packs
    added: tuple[tuple[str, str, str], ...]
    removed: tuple[tuple[str, str, str], ...]

    def to_dict(self) -> dict[str, Any]:
        return {
            "message": self.name,
            "old": {"action": str(self.old.action), "rules": self.old.rules,
                    "monitor": self.old.monitor},
            "new": {"action": str(self.new.action), "rules": self.new.rules,
                    "monitor": self.new.monitor},
            "added": [dict(zip(("rule", "mode", "action"), a, strict=True)) for a in self.added],
            "removed": [
                dict(zip(("rule", "mode", "action"), r, strict=True)) for r in self.removed
            ],
        }  # fmt: skip

    def describe(self) -> str:
        lines = [f"{self.name}: {self.old.action} -> {self.new.action}"]
        lines += [f"    + {rule} ({mode}, {action})" for rule, mode, action in self.added]
        lines += [f"    - {rule} ({mode}, {action})" for rule, mode, action in self.removed]
        return "\n".join(lines)


def files_corpus(paths: Iterable[Path]) -> Iterator[Sample]:
    """Each .eml file, and the .eml files of each folder (sorted, not recursive)."""
    for path in paths:
        for file in sorted(path.glob("*.eml")) if path.is_dir() else [path]:
            raw = file.read_bytes()
            yield Sample(str(file), raw, envelope_from_headers(raw))


def quarantine_corpus(store: QuarantineStore) -> Iterator[Sample]:
    """Every message still stored in a quarantine, with the envelope it came with."""
    for record in store.list():
        if record.state == "deleted":
            continue
        try:
            raw = store.raw(record.id)
        except QuarantineError:
            continue
        envelope = Envelope(
            mail_from=record.sender,
            rcpt_tos=record.recipients,
            client_address=record.client_address,
            queue_id=record.queue_id,
            door=record.door,
        )
        yield Sample(f"quarantine:{record.id}", raw, envelope)


def replay(old: Engine, new: Engine, corpus: Iterable[Sample]) -> tuple[int, list[Change]]:
    """(messages replayed, the ones whose action or hitting rules differ)."""
    count = 0
    changes = []
    for sample in corpus:
        count += 1
        before = old.scan(sample.raw, sample.envelope)
        after = new.scan(sample.raw, sample.envelope)
        if _outcome(before) == _outcome(after):
            continue
        was, now = _hits(before, old), _hits(after, new)
        changes.append(
            Change(
                sample.name,
                before,
                after,
                tuple(sorted(now - was)),
                tuple(sorted(was - now)),
            )
        )
    return count, changes


def _outcome(verdict: Verdict) -> tuple[object, ...]:
    return (verdict.action, sorted(verdict.rules), sorted(verdict.monitor))


def _hits(verdict: Verdict, engine: Engine) -> set[tuple[str, str, str]]:
    actions = {rule.id: str(rule.action) for rule in engine.pack.rules}
    return {(r, "enforce", actions.get(r, "?")) for r in verdict.rules} | {
        (r, "monitor", actions.get(r, "?")) for r in verdict.monitor
    }

"""Rule examples: every rule's `hit` files must make it hit and its `miss` files must not."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from mailgate.filter.scan.engine import Engine, envelope_from_headers


@dataclass(frozen=True)
class ExampleFailure:
    rule_id: str
    example: str
    expected: str  # hit | miss
    why: str

    def __str__(self) -> str:
        return f"[{self.rule_id}] {self.example}: expected {self.expected}, {self.why}"


def run_examples(engine: Engine, root: Path) -> tuple[int, list[ExampleFailure]]:
    """Run every example of the pack found under `root`; return (examples run, failures)."""
    failures: list[ExampleFailure] = []
    ran = 0
    for rule in engine.pack.rules:
        base = (root / rule.file).parent
        for expected in ("hit", "miss"):
            for name in rule.examples.get(expected, []):
                path = base / name
                ran += 1
                try:
                    raw = path.read_bytes()
                except OSError as exc:
                    failures.append(
                        ExampleFailure(
                            rule.id, str(path), expected, f"cannot read it: {exc.strerror}"
                        )
                    )
                    continue
                envelope = envelope_from_headers(raw)
                verdict = engine.scan(raw, envelope)
                hit = rule.id in verdict.rules or rule.id in verdict.monitor
                if hit and expected == "miss":
                    evidence = [h for h in verdict.hits if h.rule == rule.id]
                    what = ", ".join(f"{h.detector} in {h.where}" for h in evidence[:3])
                    failures.append(
                        ExampleFailure(rule.id, str(path), expected, f"but the rule hit ({what})")
                    )
                elif not hit and expected == "hit":
                    why = engine.why_not(raw, envelope, rule.id)
                    if verdict.unscannable:
                        why += f"; unscannable: {', '.join(verdict.unscannable)}"
                    failures.append(
                        ExampleFailure(rule.id, str(path), expected, f"but the rule missed: {why}")
                    )
    return ran, failures

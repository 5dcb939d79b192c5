"""Rule examples: every rule's `hit` files must make it hit and its `miss` files must not."""

from __future__ import annotations

import os
import stat
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


# An example is a message; one larger than any relay would take is a mistake (or a symlink to
# /dev/zero), and reading it must not stall `rules test` or a hot reload.
MAX_EXAMPLE_BYTES = 64 << 20


def read_example(path: Path) -> bytes:
    """The bytes of a regular file of at most MAX_EXAMPLE_BYTES; OSError otherwise."""
    # O_NONBLOCK: opening a FIFO must not wait for a writer; the check below refuses it
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    with os.fdopen(fd, "rb") as f:
        info = os.fstat(f.fileno())
        if not stat.S_ISREG(info.st_mode):
            raise OSError(0, "not a regular file")
        data = f.read(MAX_EXAMPLE_BYTES + 1)
    if len(data) > MAX_EXAMPLE_BYTES:
        raise OSError(0, f"larger than {MAX_EXAMPLE_BYTES >> 20} MiB")
    return data


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
                    raw = read_example(path)
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

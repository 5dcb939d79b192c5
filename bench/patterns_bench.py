"""PatternSet (one hyperscan database + `re` confirmation) against `re.finditer` per pattern.

Run: .venv/bin/python -m bench.patterns_bench   (from the repository root)
Prints MB/s for both on generated ~10 KB texts with 10, 100 and 1000 patterns, the ratio, and
checks that both give identical matches.
"""

from __future__ import annotations

import random
import re
import time
from collections.abc import Callable

from mailgate.filter.detect.patterns import PatternSet

WORDS = (
    "the", "quarterly", "report", "invoice", "payment", "account", "project", "meeting",
    "budget", "contract", "customer", "delivery", "schedule", "review", "confidential", "draft",
    "please", "find", "attached", "regards", "thanks", "team", "order", "number", "reference",
    "shipment", "update", "forecast", "revenue", "margin", "legal", "counsel", "merger",
)  # fmt: skip


def make_text(rng: random.Random, size: int) -> str:
    out: list[str] = []
    total = 0
    while total < size:
        roll = rng.random()
        # Numbers, addresses and project codes at a density typical of business mail.
        if roll < 0.02:
            token = str(rng.randrange(10**3, 10**12))
        elif roll < 0.025:
            token = f"{rng.choice(WORDS)}@{rng.choice(WORDS)}.example"
        elif roll < 0.027:
            token = f"PRJ-{rng.randrange(10**4, 10**5)}"
        else:
            token = rng.choice(WORDS)
        out.append(token)
        total += len(token) + 1
        if rng.random() < 0.08:
            out.append("\n")
    return " ".join(out)


def make_patterns(rng: random.Random, count: int) -> list[str]:
    shapes = [
        lambda: rf"(?i)\b{rng.choice(WORDS)}\s+{rng.choice(WORDS)}\b",
        lambda: rf"{rng.choice(WORDS).upper()[:4]}-\d{{{rng.randint(3, 6)}}}",
        lambda: rf"(?<!\d)\d{{{rng.randint(9, 12)}}}(?!\d)",
        lambda: rf"{rng.choice(WORDS)}[ :#]+\d{{3,8}}",
        lambda: rf"\b[a-z]+@{rng.choice(WORDS)}\.example\b",
        lambda: rf"(?i)code ?name[: ]+{rng.choice(WORDS)}{rng.randint(0, 999)}",
        lambda: rf"PRJ-{rng.randint(1, 9)}\d{{4}}",
    ]
    return [rng.choice(shapes)() for _ in range(count)]


def best_of(runs: int, fn: Callable[[], object]) -> float:
    best = float("inf")
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def main() -> None:
    rng = random.Random(7)
    texts = [make_text(rng, 10_000) for _ in range(20)]
    megabytes = sum(len(t.encode()) for t in texts) / 1e6
    print(f"{len(texts)} texts, {megabytes * 1e3:.0f} KB in all")
    print(f"{'patterns':>8} {'PatternSet MB/s':>16} {'re MB/s':>10} {'ratio':>7} {'matches':>8}")
    for count in (10, 100, 1000):
        patterns = make_patterns(rng, count)
        compiled = [re.compile(p) for p in patterns]
        pattern_set = PatternSet()
        ids = [pattern_set.add(p) for p in patterns]
        pattern_set.compile()

        found = 0
        for text in texts:
            got = pattern_set.scan(text)
            for pid, rx in zip(ids, compiled, strict=True):
                expected = [(m.start(), m.end(), m.group()) for m in rx.finditer(text)]
                assert [(m.start, m.end, m.value) for m in got[pid]] == expected, rx.pattern
                found += len(expected)

        hs_time = best_of(3, lambda ps=pattern_set: [ps.scan(t) for t in texts])
        re_time = best_of(
            3, lambda rxs=compiled: [[list(rx.finditer(t)) for rx in rxs] for t in texts]
        )
        print(
            f"{count:>8} {megabytes / hs_time:>16.1f} {megabytes / re_time:>10.2f} "
            f"{re_time / hs_time:>6.1f}x {found:>8}"
        )
    print("matches identical")


if __name__ == "__main__":
    main()

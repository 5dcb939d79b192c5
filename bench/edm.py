"""Exact Data Match: building a 1,000,000-row index, and the engine on the 10 KB mix with and
without an `edm` rule over it, in the same run, one core.

    .venv/bin/python -m bench.edm [--rows 1000000] [--seconds 3] [--rounds 3]

The CSV (account, name, email: 3 values a row) is generated into a temporary folder and built
with `build_index`, as `mailgate edm build` does: its time, the index size, the time to open
(check and map) it and the builder's peak memory are reported. The engine then judges the
10 KB mix of `bench.engine` (plain, HTML, attachment) with the default pack, and with the
default pack plus `edm: {index: customers, min_columns: 2}`; rounds alternate between the two
and the best of each is kept, per CPU second (which other load on a shared machine hardly
moves) and per second. Target: with/without >= 0.90.
"""

from __future__ import annotations

import argparse
import csv
import random
import resource
import tempfile
import time
from pathlib import Path

from bench.engine import ENVELOPE, make_message, rate
from mailgate.filter.detect.edm.build import build_index
from mailgate.filter.detect.edm.index import EdmIndex, identity
from mailgate.filter.policy.pack import IndexFile, PackSource, build_pack
from mailgate.filter.scan.engine import Engine

REPO = Path(__file__).resolve().parent.parent
FIRST = ("Anna", "Ben", "Carla", "David", "Eva", "Felix", "Greta", "Hugo", "Ines", "Jonas")
LAST = ("Schmidt", "Meyer", "Novak", "Rossi", "Garcia", "Dubois", "Jansen", "Smith", "Berg")
EDM_RULE = b"""\
rules:
  - id: customer-records
    when: [{edm: {index: customers, min_columns: 2, proximity: 300}}]
    action: quarantine
"""


def row(i: int) -> tuple[str, str, str]:
    first, last = FIRST[i % len(FIRST)], LAST[i * 7 % len(LAST)]
    return f"{40_000_000 + i * 37}", f"{first} {last}", f"{first}.{last}{i}@example.com".lower()


def write_csv(path: Path, rows: int) -> None:
    with open(path, "w", newline="") as f:
        out = csv.writer(f)
        out.writerow(("account", "name", "email"))
        out.writerows(row(i) for i in range(rows))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="mailgate-bench-edm-") as folder:
        source = Path(folder, "customers.csv")
        write_csv(source, args.rows)
        index_path = Path(folder, "edm", "customers.edm")
        start, cpu = time.perf_counter(), time.process_time()
        report = build_index(source, ["account", "name", "email"], index_path)
        built, built_cpu = time.perf_counter() - start, time.process_time() - cpu
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss >> 10
        start = time.perf_counter()
        EdmIndex(index_path)
        opened = time.perf_counter() - start
        print(
            f"build: {report.rows} rows, {report.entries} values, {source.stat().st_size >> 20} MB "
            f"CSV -> {index_path.stat().st_size >> 20} MB index in {built:.1f} s "
            f"({built_cpu:.1f} s CPU), peak memory {peak} MB; open (check and map) {opened:.2f} s"
        )

        plain = PackSource.read(REPO / "rules")
        files = {**plain.files, "edm.yaml": EDM_RULE}
        indexes = {"edm/customers.edm": IndexFile(index_path, identity(index_path))}
        with_edm = Engine(build_pack(PackSource(files, None, indexes)))
        without = Engine(build_pack(plain))
        account, name, _ = row(args.rows // 2)
        found = with_edm.scan(make_message(random.Random(1), 200, "plain").replace(
            b"\r\n\r\n", f"\r\n\r\nCustomer {name}, account {account}\r\n".encode(), 1
        ), ENVELOPE)  # fmt: skip
        assert found.rules == ["customer-records"], found.rules

        rng = random.Random(7)
        mix = [make_message(rng, 10_000, kind) for kind in ("plain", "html", "attachment") * 3]
        for engine in (without, with_edm):
            verdicts = {str(engine.scan(raw, ENVELOPE).action) for raw in mix}
            assert verdicts == {"accept"}, f"benchmark corpus must be clean mail, got {verdicts}"
        best = {"without": [0.0, 0.0], "with edm": [0.0, 0.0]}  # per CPU second, per second
        for _ in range(args.rounds):
            for label, engine in (("without", without), ("with edm", with_edm)):
                for i, clock in enumerate((time.process_time, time.perf_counter)):
                    msgs, _ = rate(
                        lambda raw, e=engine: e.scan(raw, ENVELOPE), mix, args.seconds / 2, clock
                    )
                    best[label][i] = max(best[label][i], msgs)
        print(f"\n{'10KB mix':>10} {'msg/CPU s':>10} {'msg/s':>8}")
        for label, (cpu, wall) in best.items():
            print(f"{label:>10} {cpu:>10.0f} {wall:>8.0f}")
        cpu_ratio = best["with edm"][0] / best["without"][0]
        wall_ratio = best["with edm"][1] / best["without"][1]
        print(f"{'ratio':>10} {cpu_ratio:>10.2f} {wall_ratio:>8.2f}  (target >= 0.90)")


if __name__ == "__main__":
    main()

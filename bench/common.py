"""Shared pieces of the SMTP benches (bench/milter.py, bench/relay.py): Postfix's load tools
(`smtp-source`, and `smtp-sink` as the next hop), CPU accounting and result tables. Child
processes, ports, waiting and the private Postfix instance are the tests' (`tests.support`).
"""

from __future__ import annotations

import argparse
import contextlib
import random
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from bench.engine import make_message
from tests.support.net import free_port, port_open
from tests.support.postfix import PostfixInstance
from tests.support.processes import ChildProcess, end_process, process_table
from tests.support.waiting import wait_until

REPO = Path(__file__).resolve().parent.parent
PYTHON = Path(sys.executable)
SENDER = "alice@corp.example"
RECIPIENT = "bob@partner.example"
WARMUP = 60  # messages before each measurement: processes, pools, scan workers, caches


def smtp_bench_arguments(doc: str | None) -> argparse.ArgumentParser:
    """The command line both SMTP benches share (each may add to it)."""
    parser = argparse.ArgumentParser(
        description=doc, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--scale", type=float, default=1.0, help="multiply every message count")
    parser.add_argument("--rounds", type=int, default=1, help="repeat each case, keep the best")
    parser.add_argument("--profile", type=Path, help="folder for a py-spy profile of mailgate")
    parser.add_argument("--profile-count", type=int, default=4000, help="messages profiled")
    return parser


@dataclass(frozen=True)
class Case:
    label: str
    count: int
    size: int | None = None  # smtp-source -l: filler body of this many bytes
    mime_size: int | None = None  # smtp-source -F: a realistic MIME message of about this size


def standard_cases(scale: float, sessions: int) -> list[Case]:
    """10 KB and 100 KB filler, ~10 KB realistic MIME; counts sized for well under a minute
    per case on 2 cores, times `scale`."""

    def scaled(n: int) -> int:
        return max(sessions, round(n * scale))

    return [
        Case("10 KB filler", scaled(3000), size=10 * 1024),
        Case("100 KB filler", scaled(1000), size=100 * 1024),
        Case("~10 KB MIME", scaled(2000), mime_size=10_000),
    ]


class SmtpSinkProgram:
    """Postfix's `smtp-sink` program on a loopback port, counting the messages it has taken
    (its -c counter). The benches' next hop: a sink in Python would be the bottleneck."""

    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        self.messages = 0
        self._process: subprocess.Popen[bytes] | None = None
        self._reader: threading.Thread | None = None

    def start(self) -> SmtpSinkProgram:
        # -u: smtp-sink refuses to keep root; -c prints "sess=N quit=N mesg=N\r" as it goes.
        self._process = subprocess.Popen(
            ["smtp-sink", "-c", "-u", "nobody", f"127.0.0.1:{self.port}", "1024"],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        self._reader = threading.Thread(target=self._count, daemon=True)
        self._reader.start()
        wait_until(lambda: port_open(self.port), 10, "smtp-sink to listen")
        return self

    def _count(self) -> None:
        assert self._process is not None and self._process.stdout is not None
        pending = b""
        while chunk := self._process.stdout.read1(65536):
            pending += chunk
            *done, pending = pending.split(b"\r")
            for line in reversed(done):
                if found := re.search(rb"mesg=(\d+)", line):
                    self.messages = int(found.group(1))
                    break

    def wait_for(self, count: int, timeout: float) -> float:
        """Block until the sink has taken `count` messages in all; the monotonic time then
        (polled often: it ends the measurement)."""
        wait_until(lambda: self.messages >= count, timeout, f"{count} messages", interval=0.005)
        return time.monotonic()

    def stop(self) -> None:
        process, self._process = self._process, None
        if process is not None:
            end_process(process, timeout=10)


def bench_postfix(sink_port: int, listeners: dict[str, dict[str, str]]) -> PostfixInstance:
    """The benches' private Postfix (not started), relaying to the sink: one smtpd per
    listener; milter protocol 6, tempfail when a milter fails; enough smtpd and smtp processes
    for 20 sessions on every listener at once; a connection cache towards the sink. Everything
    else is Postfix's default (in_flow_delay included: it is part of what Postfix does)."""
    return PostfixInstance(
        relayhost_port=sink_port,
        settings={
            "milter_protocol": "6",
            "milter_default_action": "tempfail",
            "default_process_limit": "200",
            "smtp_connection_cache_on_demand": "yes",
            "smtp_connection_cache_destinations": f"[127.0.0.1]:{sink_port}",
            "default_destination_concurrency_limit": "40",
            "smtpd_client_connection_count_limit": "0",
        },
        listeners=listeners,
    )


def smtp_source(
    port: int,
    *,
    count: int,
    sessions: int,
    size: int | None = None,
    message_file: Path | None = None,
    timeout: float = 120,
) -> float:
    """Send `count` messages over `sessions` parallel sessions, one message per connection
    (smtp-source without -d, like most submitting clients); the seconds it took."""
    argv = ["smtp-source", "-s", str(sessions), "-m", str(count)]
    argv += ["-f", SENDER, "-t", RECIPIENT, "-M", "client.bench.test"]
    if message_file is not None:
        argv += ["-F", str(message_file)]
    elif size is not None:
        argv += ["-l", str(size)]
    start = time.monotonic()
    result = subprocess.run(
        [*argv, f"127.0.0.1:{port}"], capture_output=True, text=True, timeout=timeout
    )
    elapsed = time.monotonic() - start
    # smtp-source exits 0 even after some refusals; any complaint means the case is void.
    if result.returncode != 0 or result.stderr.strip():
        raise RuntimeError(f"{' '.join(argv)}: exit {result.returncode}: {result.stderr[-2000:]}")
    return elapsed


def warm_up(
    sink: SmtpSinkProgram, port: int, case: Case, message_file: Path | None, sessions: int
) -> None:
    base = sink.messages
    smtp_source(port, count=WARMUP, sessions=sessions, size=case.size, message_file=message_file)
    sink.wait_for(base + WARMUP, timeout=120)


def mime_message_file(folder: Path, size: int) -> Path:
    """A realistic message for `smtp-source -F`: multipart/mixed with text and a zip (csv and
    an image), from bench/engine.py. smtp-source adds CRLF to each line itself."""
    raw = make_message(random.Random(size), size, "attachment")
    path = folder / f"mime-{size}.eml"
    path.write_bytes(raw.replace(b"\r\n", b"\n"))
    return path


@dataclass(frozen=True)
class CpuTimes:
    """User+system CPU seconds of a process and of its living descendants (scan workers)."""

    main: float
    descendants: float

    def __sub__(self, other: CpuTimes) -> CpuTimes:
        return CpuTimes(self.main - other.main, self.descendants - other.descendants)

    def per_message_ms(self, messages: int) -> str:
        """'total (main + descendants)' in ms per message."""
        main, rest = self.main / messages * 1000, self.descendants / messages * 1000
        return f"{main + rest:.2f} ({main:.2f} + {rest:.2f})"


def tree_cpu(pid: int) -> CpuTimes:
    table = process_table()
    tree, frontier = {pid}, [pid]
    while frontier:
        parent = frontier.pop()
        children = [p for p, stat in table.items() if stat.ppid == parent and p not in tree]
        tree.update(children)
        frontier += children
    tree.discard(pid)
    main = table[pid].cpu_seconds if pid in table else 0.0
    return CpuTimes(main, sum(table[p].cpu_seconds for p in tree))


class HostCpu:
    """Share of the whole machine's CPU time that was busy between start() and busy()."""

    def __init__(self) -> None:
        self._start = self._read()

    @staticmethod
    def _read() -> tuple[int, int]:
        fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        idle = fields[3] + fields[4]  # idle + iowait
        return sum(fields[:8]) - idle, sum(fields[:8])

    def busy_percent(self) -> float:
        busy, total = self._read()
        return 100 * (busy - self._start[0]) / max(1, total - self._start[1])


def percentile(values: Sequence[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


def print_table(title: str, headers: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
    """A plain text table: first column left-aligned, the rest right-aligned."""
    cells = [[str(h) for h in headers]] + [[_cell(v) for v in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]

    def line(row: list[str]) -> str:
        first = row[0].ljust(widths[0])
        return "  ".join([first] + [c.rjust(w) for c, w in zip(row[1:], widths[1:], strict=True)])

    print(f"\n{title}")
    print(line(cells[0]))
    print("  ".join("-" * w for w in widths))
    for row in cells[1:]:
        print(line(row))
    sys.stdout.flush()


def _cell(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.2f}" if value < 10 else f"{value:.0f}"
    return "-" if value is None else str(value)


@contextlib.contextmanager
def py_spy(pid: int, out: Path) -> Iterator[None]:
    """py-spy record of pid and its children while the block runs, as collapsed stacks (the
    text that flamegraph.pl and speedscope read). SIGINT makes py-spy write and exit."""
    spy = shutil.which("py-spy") or str(PYTHON.with_name("py-spy"))
    # --gil: only samples holding the GIL, i.e. Python CPU time, not threads waiting for a
    # core or parked in C (libmilter's own threads have no Python frame at all).
    argv = [spy, "record", "--pid", str(pid), "--subprocesses", "--gil", "--rate", "500"]
    recorder = subprocess.Popen(
        [*argv, "--nonblocking", "--format", "raw", "-o", str(out)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        time.sleep(1)  # let py-spy attach before the load starts
        yield
    finally:
        end_process(recorder, signal.SIGINT, timeout=60)


def summarise_profile(path: Path, title: str, top: int = 25) -> None:
    """Print the functions with the most samples (inclusive and self) from collapsed stacks."""
    inclusive: Counter[str] = Counter()
    own: Counter[str] = Counter()
    processes: Counter[str] = Counter()
    total = 0
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        parts = stack.split(";")
        # With --subprocesses a worker's stack starts with its ancestors' "process N:..." too.
        depth = max(i for i, part in enumerate(parts) if part.startswith("process "))
        process, frames = parts[depth], parts[depth + 1 :]
        total += count
        processes[process[:70] if frames else f"{process[:50]} (no Python frame)"] += count
        for frame in set(frames):
            inclusive[frame] += count
        if frames:
            own[frames[-1]] += count
    if not total:
        print(f"\n{title}: no samples in {path}")
        return
    print_table(f"{title}: {total} samples, by process", ["process", "%"],
                [[p, 100 * n / total] for p, n in processes.most_common(top)])  # fmt: skip
    print_table(f"{title}: inclusive", ["function (file:line)", "%"],
                [[f[:110], 100 * n / total] for f, n in inclusive.most_common(top)])  # fmt: skip
    print_table(f"{title}: self", ["function (file:line)", "%"],
                [[f[:110], 100 * n / total] for f, n in own.most_common(top)])  # fmt: skip
    print(f"collapsed stacks: {path}")


def remove_tree(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)


@contextlib.contextmanager
def stopped_after(children: dict[str, ChildProcess], *then: Callable[[], object]) -> Iterator[None]:
    """Run a bench's body; on a failure print each child's log tail first. Whatever happens,
    stop every child, then call `then` in order (the sink, a server, removing the folder)."""
    try:
        yield
    except Exception:
        for child in children.values():
            print(f"--- {child.name} log (tail) ---\n{child.log_tail()}")
        raise
    finally:
        for child in children.values():
            child.stop()
        for step in then:
            step()

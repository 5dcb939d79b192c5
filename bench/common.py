"""Shared pieces of the SMTP benches (bench/milter.py, bench/relay.py): Postfix's load tools
(`smtp-source`, `smtp-sink`), child processes that are always stopped, a private Postfix
instance (tests/support/postfix.py, reused as is), CPU accounting and result tables.
"""

from __future__ import annotations

import contextlib
import os
import random
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO / "bench"))

from engine import make_message  # noqa: E402  (bench/engine.py's realistic MIME messages)
from support.postfix import (  # noqa: E402
    PostfixInstance,
    free_port,
    missing_binaries,
    wait_until,
)

# Re-exported for milter.py and relay.py.
__all__ = [
    "PostfixInstance",
    "free_port",
    "missing_binaries",
    "wait_until",
]

PYTHON = Path(sys.executable)
MAILGATE = PYTHON.with_name("mailgate")
SENDER = "alice@corp.example"
RECIPIENT = "bob@partner.example"
_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
WARMUP = 60  # messages before each measurement: processes, pools, scan workers, caches


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


def work_dir(prefix: str) -> Path:
    """A fresh folder that Postfix's daemons (user postfix) can traverse."""
    path = Path(tempfile.mkdtemp(prefix=prefix))
    path.chmod(0o755)
    return path


class Child:
    """A child process with its output in a log file; stop() always leaves it dead."""

    def __init__(self, name: str, argv: Sequence[str], log: Path) -> None:
        self.name, self.argv, self.log = name, list(argv), log
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def start(self) -> Child:
        with self.log.open("ab") as out:
            self.process = subprocess.Popen(self.argv, stdout=out, stderr=out)
        return self

    def check_alive(self) -> None:
        if self.process is None or self.process.poll() is not None:
            raise RuntimeError(f"{self.name} exited:\n{self.log_tail()}")

    def log_tail(self, chars: int = 3000) -> str:
        try:
            return self.log.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def stop(self) -> None:
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


class SmtpSink:
    """`smtp-sink` on a loopback port, counting the messages it has taken (its -c counter)."""

    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        self.messages = 0
        self._process: subprocess.Popen[bytes] | None = None
        self._reader: threading.Thread | None = None

    def start(self) -> SmtpSink:
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
        """Block until the sink has taken `count` messages in all; the monotonic time then."""
        deadline = time.monotonic() + timeout
        while self.messages < count:
            if time.monotonic() > deadline:
                raise RuntimeError(f"smtp-sink has {self.messages} of {count} messages")
            time.sleep(0.005)
        return time.monotonic()

    def stop(self) -> None:
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=10)


def port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


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
    sink: SmtpSink, port: int, case: Case, message_file: Path | None, sessions: int
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
    parents: dict[int, int] = {}
    times: dict[int, float] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()  # after "pid (comm) "
        parents[int(entry.name)] = int(fields[1])
        times[int(entry.name)] = (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS
    tree, frontier = {pid}, [pid]
    while frontier:
        parent = frontier.pop()
        children = [p for p, pp in parents.items() if pp == parent and p not in tree]
        tree.update(children)
        frontier += children
    tree.discard(pid)
    return CpuTimes(times.get(pid, 0.0), sum(times.get(p, 0.0) for p in tree))


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


def mean(values: Sequence[float]) -> float:
    return statistics.fmean(values)


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
        recorder.send_signal(signal.SIGINT)
        try:
            recorder.wait(timeout=60)
        except subprocess.TimeoutExpired:
            recorder.kill()
            recorder.wait()


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

"""Child processes that tests and benches start: output to a log file, bounded start-up, and a
stop that always leaves them dead; and the process table read from /proc."""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from tests.support.waiting import wait_until

_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


class ChildProcess:
    """`argv` as a child process writing stdout and stderr to `log` (appended: a restart keeps
    what came before). With `ready`, start() returns once `ready()` is true (an OSError from it
    counts as not yet), and fails with the log if the process exits first."""

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        log: Path,
        ready: Callable[[], object] | None = None,
        ready_timeout: float = 90,
    ) -> None:
        self.name, self.argv, self.log = name, list(argv), log
        self.ready, self.ready_timeout = ready, ready_timeout
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def start(self) -> ChildProcess:
        with self.log.open("ab") as out:
            self.process = subprocess.Popen(self.argv, stdout=out, stderr=out)
        if self.ready is not None:
            wait_until(self._ready, self.ready_timeout, f"{self.name} to be ready")
        return self

    def _ready(self) -> bool:
        self.check_alive()
        assert self.ready is not None
        try:
            return bool(self.ready())
        except OSError:
            return False

    def check_alive(self) -> None:
        if self.process is None or self.process.poll() is not None:
            raise AssertionError(f"{self.name} exited:\n{self.log_tail()}")

    def log_text(self) -> str:
        try:
            return self.log.read_text(errors="replace")
        except OSError:
            return ""

    def log_tail(self, chars: int = 3000) -> str:
        return self.log_text()[-chars:]

    def stop(self, timeout: float = 30) -> int | None:
        """SIGTERM and wait; the exit status, or None if it had to be killed."""
        process, self.process = self.process, None
        return None if process is None else end_process(process, signal.SIGTERM, timeout)


def end_process(
    process: subprocess.Popen[bytes], sig: int = signal.SIGTERM, timeout: float = 30
) -> int | None:
    """Send `sig` to a running `process` and wait; killed after `timeout` seconds. Its exit
    status, or None if it had to be killed."""
    if process.poll() is not None:
        return process.returncode
    process.send_signal(sig)
    try:
        return process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=10)
        return None


@dataclass(frozen=True)
class ProcStat:
    ppid: int
    cpu_seconds: float  # user + system


def process_table() -> dict[int, ProcStat]:
    """Every process's parent and CPU time, from /proc/PID/stat."""
    table = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = entry.joinpath("stat").read_text()
        except OSError:
            continue  # exited meanwhile
        fields = stat[stat.rindex(")") + 2 :].split()  # after "pid (comm) "
        cpu = (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS
        table[int(entry.name)] = ProcStat(int(fields[1]), cpu)
    return table


def running(pid: int) -> bool:
    """Whether process `pid` exists and has not exited: a zombie has, though it stays in the
    table until its parent reaps it (a daemon's is PID 1, which in a container may take a
    second or more)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2] != "Z"  # the state, after "pid (comm) "


def children_of(pid: int) -> list[int]:
    return [child for child, stat in process_table().items() if stat.ppid == pid]


def bytes_written(pid: int) -> int:
    """What process `pid` has handed to write() and the like so far, to any file, pipe or
    socket (`wchar` of /proc/PID/io): a handover of N bytes shows as a step of N."""
    for line in Path(f"/proc/{pid}/io").read_text().splitlines():
        name, _, value = line.partition(":")
        if name == "wchar":
            return int(value)
    raise AssertionError(f"no wchar in /proc/{pid}/io")

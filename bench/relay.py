"""`mailgate relay` against the bare minimum: `smtp-source` → relay → `smtp-sink`.

    .venv/bin/python -m bench.relay [--scale 1.0] [--rounds 1] [--profile DIR]

Contenders, all in one run, all delivering to one smtp-sink on loopback:

  direct      smtp-source → smtp-sink, no relay in between (the ceiling of the tools)
  bare-1      bench/bare_forwarder.py: stock aiosmtpd, compat32 parse, pooled aiosmtplib, no
              rules; one process
  bare-2      the same, two processes sharing the port (SO_REUSEPORT)
  mailgate    `mailgate relay`, the default pack (rules/), engine.workers 2, next hop smtp-sink
  mailgate-2  the same with relay.processes 2 and engine.workers 1: two SMTP front ends

Cases: 10 KB and 100 KB smtp-source filler bodies and a ~10 KB realistic MIME message
(multipart: text + zip), 20 sessions, one message per connection, a fixed count each. A relay
answers 250 only once the next hop has, so smtp-source's wall time is the end-to-end rate (the
sink's count is checked). While the load runs, a client of our own sends messages of the same
kind one after another, one per connection; p50/p99 are its connect-to-250 times.
CPU ms/msg counts the contender's processes and their children (scan workers); host busy % is
the whole machine's.

--rounds R: run every case R times, contenders interleaved; the best rate of each is reported
(other work on the machine only ever slows a round down).
--profile DIR: afterwards record `mailgate relay` and its workers with py-spy (--gil: Python
CPU only) during --profile-count more 10 KB messages, and print where the samples fall.
"""

from __future__ import annotations

import argparse
import random
import smtplib
import threading
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

from bench.common import (
    PYTHON,
    RECIPIENT,
    REPO,
    SENDER,
    Case,
    HostCpu,
    SmtpSinkProgram,
    make_message,
    mime_message_file,
    percentile,
    print_table,
    py_spy,
    remove_tree,
    smtp_bench_arguments,
    smtp_source,
    standard_cases,
    stopped_after,
    summarise_profile,
    tree_cpu,
    warm_up,
)
from tests.support.cli import mailgate_argv
from tests.support.net import free_port, port_open
from tests.support.postfix import missing_binaries, shared_temp_dir
from tests.support.processes import ChildProcess
from tests.support.samples import message
from tests.support.smtp_client import send_to
from tests.support.waiting import wait_until

SESSIONS = 20
CONTENDERS = ("direct", "bare-1", "bare-2", "mailgate", "mailgate-2")
LATENCY_CAP = 2000  # most latency samples per measured send


@dataclass
class Result:
    rate: float
    cpu: str | None  # CPU ms per message: total (main process + children)
    host_busy: float  # % of all cores busy during the case
    latencies: list[float] = field(default_factory=list)  # seconds


class LatencyProbe:
    """Sequential sends, one message per connection, in a thread, until stopped."""

    def __init__(self, port: int, message: bytes) -> None:
        self.port, self.message = port, message
        self.samples: list[float] = []
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set() and len(self.samples) < LATENCY_CAP:
            start = time.monotonic()
            try:
                code, text = send_to(self.port, self.message, SENDER, (RECIPIENT,))
            except (OSError, smtplib.SMTPException) as exc:
                self.errors.append(repr(exc))
                return
            if code != 250:
                self.errors.append(f"{code} {text.decode(errors='replace')}")
                return
            self.samples.append(time.monotonic() - start)

    def __enter__(self) -> LatencyProbe:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=60)


def probe_message(case: Case) -> bytes:
    """What the latency probe sends: the case's kind and size of message."""
    if case.mime_size is not None:
        return make_message(random.Random(case.mime_size), case.mime_size, "attachment")
    line = "La de da de da " * 4 + "\r\n"
    body = line * ((case.size or 0) // len(line) + 1)
    return message("latency probe", body, sender=f"<{SENDER}>", to=f"<{RECIPIENT}>")


def mailgate_relay(
    work: Path,
    port: int,
    sink_port: int,
    name: str = "mailgate",
    processes: int = 1,
    database: str | None = None,
) -> ChildProcess:
    """`mailgate relay` on the default pack; with `database`, a node of a fleet on it."""
    folder = work / name
    folder.mkdir(mode=0o755)
    config = folder / "mailgate.yaml"
    config.write_text(
        (f"database: {database}\nnode: bench-{name}\n" if database else "")
        + f"""\
rules: {REPO / "rules"}
quarantine:
  path: {folder / "quarantine"}
relay:
  listen: 127.0.0.1:{port}
  hostname: relay.bench.test
  next_hop: {{host: 127.0.0.1, port: {sink_port}, tls: none}}
  outbox: {folder / "outbox"}
  processes: {processes}
engine:
  workers: {2 // processes}
audit:
  path: {folder / "audit.log"}
"""
    )
    argv = mailgate_argv("relay", "--config", str(config))
    return ChildProcess(name, argv, folder / "relay.log")


def bare_forwarder(
    work: Path, name: str, port: int, sink_port: int, processes: int
) -> ChildProcess:
    argv = [str(PYTHON), "-m", "bench.bare_forwarder", str(port), str(sink_port)]
    argv += ["--processes", str(processes)]
    return ChildProcess(name, argv, work / f"{name}.log")


def measure(
    sink: SmtpSinkProgram,
    port: int,
    case: Case,
    message_file: Path | None,
    child: ChildProcess | None,
) -> Result:
    base = sink.messages
    cpu_before = tree_cpu(child.pid) if child else None
    host = HostCpu()
    with LatencyProbe(port, probe_message(case)) as probe:
        elapsed = smtp_source(
            port, count=case.count, sessions=SESSIONS, size=case.size, message_file=message_file
        )
    if probe.errors:
        raise RuntimeError(f"latency probe failed: {probe.errors[0]}")
    # Everything the relay answered 250 to is already at the sink; the probe's messages too.
    sink.wait_for(base + case.count + len(probe.samples), timeout=60)
    cpu = None
    if child is not None and cpu_before is not None:
        child.check_alive()
        # The probe's messages used CPU too: count them in.
        cpu = (tree_cpu(child.pid) - cpu_before).per_message_ms(case.count + len(probe.samples))
    return Result(case.count / elapsed, cpu, host.busy_percent(), probe.samples)


def main() -> int:
    parser = smtp_bench_arguments(__doc__)
    args = parser.parse_args()
    if missing := missing_binaries():
        parser.error(f"needs smtp-source and smtp-sink (postfix package): missing {missing}")

    cases = standard_cases(args.scale, SESSIONS)
    work = shared_temp_dir("mailgate-bench-relay-")
    sink = SmtpSinkProgram()
    children: dict[str, ChildProcess] = {}
    ports: dict[str, int] = {}
    with stopped_after(children, sink.stop, lambda: remove_tree(work)):
        sink.start()
        ports = {"direct": sink.port} | {name: free_port() for name in CONTENDERS[1:]}
        children.update(
            {
                "bare-1": bare_forwarder(work, "bare-1", ports["bare-1"], sink.port, 1),
                "bare-2": bare_forwarder(work, "bare-2", ports["bare-2"], sink.port, 2),
                "mailgate": mailgate_relay(work, ports["mailgate"], sink.port),
                "mailgate-2": mailgate_relay(work, ports["mailgate-2"], sink.port, "mailgate-2", 2),
            }
        )
        for child in children.values():
            child.start()
        for name, child in children.items():

            def listening(child: ChildProcess = child, port: int = ports[name]) -> bool:
                child.check_alive()
                return port_open(port)

            wait_until(listening, 120, f"{name} to listen")
        return run_all(args, cases, work, sink, ports, children)


def run_all(
    args: argparse.Namespace,
    cases: list[Case],
    work: Path,
    sink: SmtpSinkProgram,
    ports: dict[str, int],
    children: dict[str, ChildProcess],
) -> int:
    print(f"{SESSIONS} sessions, one message per connection, {args.rounds} round(s), best kept")
    best: dict[tuple[str, str], Result] = {}
    for case in cases:
        message_file = mime_message_file(work, case.mime_size) if case.mime_size else None
        for _ in range(args.rounds):
            for name in CONTENDERS:
                warm_up(sink, ports[name], case, message_file, SESSIONS)
                result = measure(sink, ports[name], case, message_file, children.get(name))
                print(f"  {case.label:14} {name:9} {result.rate:7.0f} msgs/s", flush=True)
                kept = best.get((case.label, name))
                if kept is None or result.rate > kept.rate:
                    best[case.label, name] = result
        rows = []
        for name in CONTENDERS:
            r = best[case.label, name]
            ms = [s * 1000 for s in r.latencies]
            rows.append([name, case.count, r.rate, percentile(ms, 0.5), percentile(ms, 0.99),
                         len(ms), r.cpu, r.host_busy])  # fmt: skip
        print_table(
            f"{case.label}, {case.count} messages, {SESSIONS} sessions (+1 latency probe)",
            [
                "contender",
                "messages",
                "msgs/s",
                "p50 ms",
                "p99 ms",
                "probe n",
                "CPU ms/msg (main + children)",
                "host CPU busy %",
            ],
            rows,
        )

    def rate(case: Case, name: str) -> float:
        return best[case.label, name].rate

    print_table(
        "Ratios (msgs/s)",
        ["case", "mailgate/bare-1", "mailgate-2/bare-2", "mailgate-2/bare-1", "mailgate/direct"],
        [
            [
                case.label,
                rate(case, "mailgate") / rate(case, "bare-1"),
                rate(case, "mailgate-2") / rate(case, "bare-2"),
                rate(case, "mailgate-2") / rate(case, "bare-1"),
                rate(case, "mailgate") / rate(case, "direct"),
            ]
            for case in cases
        ],
    )
    first = cases[0]
    print(f"target (issue 3): mailgate >= 0.70 x bare forwarder; {first.label}: "
          f"one process {rate(first, 'mailgate') / rate(first, 'bare-1'):.2f} x bare-1, "
          f"two {rate(first, 'mailgate-2') / rate(first, 'bare-2'):.2f} x bare-2")  # fmt: skip

    if args.profile:
        args.profile.mkdir(parents=True, exist_ok=True)
        profile = args.profile / "relay-10k.txt"
        with py_spy(children["mailgate"].pid, profile):
            measure(sink, ports["mailgate"], replace(first, count=args.profile_count), None,
                    children["mailgate"])  # fmt: skip
        summarise_profile(profile, f"py-spy, mailgate relay and workers, {first.label}")
    for child in children.values():
        child.check_alive()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Postfix with and without milters: `smtp-source` → private Postfix on loopback → `smtp-sink`.

    sudo .venv/bin/python -m bench.milter [--scale 1.0] [--rounds 1] [--profile DIR]

Needs root (Postfix's master) and the postfix package. One Postfix instance, one smtpd
listener per contender, all in one run:

  postfix        Postfix alone (smtpd_milters empty)
  noop           a pymilter milter that only parses at end of message (bench/noop_milter.py), unix
  mailgate-unix  `mailgate milter`, the default pack (rules/), engine.workers 2, unix socket
  mailgate-inet  the same over inet (127.0.0.1)

Cases: 10 KB and 100 KB smtp-source filler bodies and a ~10 KB realistic MIME message
(multipart: text + zip), 20 sessions, one message per connection; a fixed message count each.
Reported per case and contender: accepted/s (smtp-source's wall time), delivered/s (until
smtp-sink has them all: the end-to-end rate), milter CPU ms per message (process and its scan
workers), host CPU busy %; then single-session latency (one session, N messages of 10 KB,
mean ms per message) and the ratios mailgate/noop, mailgate/postfix, inet/unix.

--rounds R: run every case R times, contenders interleaved; the best of each is reported
(other work on the machine only ever slows a round down).
--profile DIR: afterwards record the mailgate-unix milter and its workers with py-spy (--gil:
Python CPU only) during --profile-count more 10 KB messages, and print where the samples fall.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass, replace
from pathlib import Path

from bench.common import (
    PYTHON,
    REPO,
    Case,
    HostCpu,
    SmtpSinkProgram,
    bench_postfix,
    mime_message_file,
    print_table,
    py_spy,
    remove_tree,
    smtp_bench_arguments,
    smtp_source,
    standard_cases,
    summarise_profile,
    tree_cpu,
    warm_up,
)
from tests.support.cli import mailgate_argv
from tests.support.net import free_port, port_open
from tests.support.postfix import PostfixInstance, missing_binaries, shared_temp_dir
from tests.support.processes import ChildProcess
from tests.support.waiting import wait_until

SESSIONS = 20
LATENCY_SIZE = 10 * 1024
CONTENDERS = ("postfix", "noop", "mailgate-unix", "mailgate-inet")


@dataclass
class Result:
    accepted_rate: float
    delivered_rate: float
    cpu: str | None  # milter CPU ms per message: total (main process + scan workers)
    host_busy: float  # % of all cores busy during the case


class MilterProcess:
    """A milter child process and its libmilter socket spec (unix:/path or inet:PORT@HOST)."""

    def __init__(self, child: ChildProcess, spec: str) -> None:
        self.child, self.spec = child, spec

    @property
    def postfix_spec(self) -> str:
        """The same socket in Postfix's syntax: unix:/path, inet:HOST:PORT."""
        if self.spec.startswith("inet:"):
            port, _, host = self.spec[5:].partition("@")
            return f"inet:{host}:{port}"
        return self.spec

    def wait_ready(self) -> None:
        def ready() -> bool:
            self.child.check_alive()
            if self.spec.startswith("unix:"):
                return Path(self.spec[5:]).exists()
            port = int(self.spec.split(":")[1].split("@")[0])
            return port_open(port)

        wait_until(ready, 120, f"{self.child.name} to listen on {self.spec}")


def mailgate_milter(work: Path, name: str, spec: str) -> MilterProcess:
    folder = work / name
    folder.mkdir(mode=0o755)
    config = folder / "mailgate.yaml"
    config.write_text(
        f"""\
rules: {REPO / "rules"}
quarantine:
  path: {folder / "quarantine"}
milter:
  socket: {spec}
  socket_mode: '0666'
engine:
  workers: 2
audit:
  path: {folder / "audit.log"}
"""
    )
    argv = mailgate_argv("milter", "--config", str(config))
    return MilterProcess(ChildProcess(name, argv, folder / "milter.log"), spec)


def noop_milter(work: Path, spec: str) -> MilterProcess:
    argv = [str(PYTHON), "-m", "bench.noop_milter", spec]
    return MilterProcess(ChildProcess("noop", argv, work / "noop.log"), spec)


def measure(
    sink: SmtpSinkProgram,
    port: int,
    case: Case,
    message_file: Path | None,
    milter: MilterProcess | None,
) -> Result:
    """One measured send through one listener."""
    cpu_before = tree_cpu(milter.child.pid) if milter else None
    base = sink.messages
    host = HostCpu()
    start = time.monotonic()
    sent = smtp_source(
        port, count=case.count, sessions=SESSIONS, size=case.size, message_file=message_file
    )
    done = sink.wait_for(base + case.count, timeout=300)
    cpu = None
    if milter is not None and cpu_before is not None:
        milter.child.check_alive()
        cpu = (tree_cpu(milter.child.pid) - cpu_before).per_message_ms(case.count)
    return Result(case.count / sent, case.count / (done - start), cpu, host.busy_percent())


def main() -> int:
    parser = smtp_bench_arguments(__doc__)
    parser.add_argument("--latency-count", type=int, default=100, help="single-session messages")
    args = parser.parse_args()
    if missing := missing_binaries():
        parser.error(f"needs Postfix: missing {', '.join(missing)}")

    cases = standard_cases(args.scale, SESSIONS)

    work = shared_temp_dir("mailgate-bench-milter-")
    (work / "run").mkdir(mode=0o755)
    sink = SmtpSinkProgram()
    milters = {
        "noop": noop_milter(work, f"unix:{work / 'run' / 'noop.sock'}"),
        "mailgate-unix": mailgate_milter(work, "mailgate-unix", f"unix:{work / 'run' / 'mg.sock'}"),
        "mailgate-inet": mailgate_milter(work, "mailgate-inet", f"inet:{free_port()}@127.0.0.1"),
    }
    postfix: PostfixInstance | None = None
    try:
        sink.start()
        for milter in milters.values():
            milter.child.start()
        for milter in milters.values():
            milter.wait_ready()
        listeners = {"postfix": {"smtpd_milters": ""}}
        listeners |= {name: {"smtpd_milters": m.postfix_spec} for name, m in milters.items()}
        postfix = bench_postfix(sink.port, listeners)
        postfix.start()
        return run_all(args, cases, work, sink, postfix, milters)
    except Exception:
        if postfix is not None:
            print(f"--- postfix log (tail) ---\n{postfix.log_text()[-3000:]}")
        for milter in milters.values():
            print(f"--- {milter.child.name} log (tail) ---\n{milter.child.log_tail()}")
        raise
    finally:
        try:
            if postfix is not None:
                postfix.stop()
        finally:
            for milter in milters.values():
                milter.child.stop()
            sink.stop()
            remove_tree(work)


def run_all(
    args: argparse.Namespace,
    cases: list[Case],
    work: Path,
    sink: SmtpSinkProgram,
    postfix: PostfixInstance,
    milters: dict[str, MilterProcess],
) -> int:
    print(f"Postfix on loopback, {SESSIONS} sessions, one message per connection; "
          f"milters: {', '.join(milters)}")  # fmt: skip
    best: dict[tuple[str, str], Result] = {}
    for case in cases:
        message_file = mime_message_file(work, case.mime_size) if case.mime_size else None
        for _ in range(args.rounds):
            for name in CONTENDERS:
                port = postfix.ports[name]
                warm_up(sink, port, case, message_file, SESSIONS)
                result = measure(sink, port, case, message_file, milters.get(name))
                print(
                    f"  {case.label:14} {name:14} {result.delivered_rate:7.0f} msgs/s", flush=True
                )
                kept = best.get((case.label, name))
                if kept is None or result.delivered_rate > kept.delivered_rate:
                    best[case.label, name] = result
        print_table(
            f"{case.label}, {case.count} messages, {SESSIONS} sessions",
            [
                "contender",
                "messages",
                "accepted/s",
                "delivered/s",
                "milter CPU ms/msg (main + workers)",
                "host CPU busy %",
            ],
            [
                [name, case.count, r.accepted_rate, r.delivered_rate, r.cpu, r.host_busy]
                for name in CONTENDERS
                for r in [best[case.label, name]]
            ],
        )

    latency: dict[str, float] = {}
    for _ in range(args.rounds):
        for name in CONTENDERS:
            port = postfix.ports[name]
            smtp_source(port, count=10, sessions=1, size=LATENCY_SIZE)
            elapsed = smtp_source(port, count=args.latency_count, sessions=1, size=LATENCY_SIZE)
            ms = elapsed / args.latency_count * 1000
            latency[name] = min(ms, latency.get(name, ms))
    print_table(
        f"Single-session latency: 1 session, {args.latency_count} messages of 10 KB, "
        "one per connection",
        ["contender", "mean ms/message"],
        [[name, latency[name]] for name in CONTENDERS],
    )

    def rate(case: Case, name: str) -> float:
        return best[case.label, name].delivered_rate

    print_table(
        "Ratios (delivered/s)",
        ["case", "mailgate/noop (unix)", "mailgate/postfix (unix)", "inet/unix (mailgate)"],
        [
            [
                case.label,
                rate(case, "mailgate-unix") / rate(case, "noop"),
                rate(case, "mailgate-unix") / rate(case, "postfix"),
                rate(case, "mailgate-inet") / rate(case, "mailgate-unix"),
            ]
            for case in cases
        ],
    )
    print(f"single-session latency inet/unix (mailgate): "
          f"{latency['mailgate-inet'] / latency['mailgate-unix']:.2f}")  # fmt: skip
    print(f"target (issue 4): mailgate-unix >= 0.80 x noop; 10 KB: "
          f"{rate(cases[0], 'mailgate-unix') / rate(cases[0], 'noop'):.2f}")  # fmt: skip

    if args.profile:
        args.profile.mkdir(parents=True, exist_ok=True)
        case = replace(cases[0], count=args.profile_count)
        milter = milters["mailgate-unix"]
        profile = args.profile / "milter-10k.txt"
        with py_spy(milter.child.pid, profile):
            measure(sink, postfix.ports["mailgate-unix"], case, None, milter)
        summarise_profile(profile, f"py-spy, mailgate-unix milter and workers, {case.label}")
    for milter in milters.values():
        milter.child.check_alive()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

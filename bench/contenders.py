"""mailgate beside the MTA it sits next to, and beside its peers, in one run (issue 12).

    sudo .venv/bin/python -m bench.contenders [--repetitions 3] [--scale 1.0] [--sessions 20]

Needs root (Postfix's master), the postfix package (`smtp-source`, `smtp-sink`, a private
Postfix instance) and Debian's rspamd 3.4 (`apt-get install rspamd`; run privately here, never
the system service). `smtp-source` → contender → `smtp-sink`, all on loopback:

  postfix  Postfix alone as a relay, no filter
  relay    `mailgate relay`, the default configuration (only the addresses, folders and the
           next hop are set: relay.processes and engine.workers are the defaults)
  milter   Postfix + `mailgate milter`, the default configuration, unix socket
  rspamd   Postfix + rspamd 3.4 as a milter (proxy worker, self_scan), with the like-for-like
           compliance policy in bench/peers/rspamd/ (see its README), unix socket
  noop     Postfix + a pymilter milter that only parses (bench/noop_milter.py), unix socket

One Postfix instance, one smtpd listener per Postfix contender, differing only in
`smtpd_milters`. Messages: multipart/mixed with a text part, its HTML alternative and a small
real PDF (a page of text), about 10 KB and 100 KB; 20 sessions, one message per connection.

Every repetition runs every size and contender, the contenders in a rotating order, so the
machine's other work falls on all of them alike; each figure is the median of the repetitions.
Reported per size: msgs/s (messages delivered to smtp-sink per second, everything the load and
the latency probe sent), p50/p99 reply latency under load (a probe of the bench's own sends one
message per connection, sequentially, during the load: connect to the reply to the message),
the CPU ms per message of everything on the path (Postfix's processes, the filter's, reaped
children included; not smtp-source and smtp-sink), of which the filter's own processes (filter
ms: the relay or milter and its scan workers, rspamd and its workers) and its main process
alone (main ms: the relay's SMTP front end, the milter's libmilter process), and the ratios to
Postfix alone, to rspamd and to the no-op milter. relay-2 (only with --contenders) is the
relay with two front ends of one scan worker each.

Before measuring, each filter is shown to act: the EICAR example is refused by mailgate (relay
and milter) and rspamd, and passed by Postfix alone and the no-op milter.

--profile DIR: afterwards record the relay and the milter with py-spy (--gil) at each size.
"""

from __future__ import annotations

import argparse
import base64
import os
import random
import shutil
import smtplib
import statistics
import subprocess
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

from bench.common import (
    PYTHON,
    RECIPIENT,
    REPO,
    SENDER,
    SmtpSinkProgram,
    bench_postfix,
    percentile,
    print_table,
    py_spy,
    remove_tree,
    summarise_profile,
    warm_up,
)
from bench.common import Case as SourceCase
from bench.engine import prose
from bench.relay import LatencyProbe
from tests.support.cli import mailgate_argv
from tests.support.net import free_port, port_open
from tests.support.pdfs import make_pdf, show
from tests.support.postfix import PostfixInstance, missing_binaries, shared_temp_dir
from tests.support.processes import ChildProcess
from tests.support.smtp_client import send_to
from tests.support.waiting import wait_until

CONTENDERS = ("postfix", "relay", "milter", "rspamd", "noop")
OPTIONAL = ("relay-2",)  # only when asked for (--contenders)
MILTERS = ("milter", "rspamd", "noop")
PEER_CONFIG = Path(__file__).resolve().parent / "peers" / "rspamd"
EICAR_EXAMPLE = REPO / "rules" / "examples" / "eicar-attachment.eml"
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
RSPAMD_START = 300  # seconds: the first start compiles its Hyperscan databases


@dataclass(frozen=True)
class Size:
    label: str
    size: int
    count: int  # messages per measurement


@dataclass
class Sample:
    rate: float
    latencies: list[float]  # seconds
    cpu_ms: float  # CPU per message of everything on the path (the sink and load aside)
    filter_ms: float | None = None  # of which the filter's processes (main and children)
    main_ms: float | None = None  # of which the filter's main process alone


@dataclass
class Contender:
    """Where a contender listens and, for a filter, its process."""

    name: str
    port: int = 0
    process: ChildProcess | None = None
    path_pids: list[int] = field(default_factory=list)  # the trees on its path: Postfix, filter
    samples: dict[str, list[Sample]] = field(default_factory=dict)


# ------------------------------------------------------------------------ the messages


def bench_message(size: int, seed: int = 12) -> bytes:
    """multipart/mixed: text/plain and its text/html alternative, and a small real PDF (one
    page of text, compressed); the text grows to make the size."""
    rng = random.Random(seed)
    pdf = make_pdf([show(prose(rng, 80)[:80]), show("Quarterly figures, page 2")], compress=True)
    attachment = base64.encodebytes(pdf).decode().replace("\n", "\r\n")
    text_size = max(200, (size - len(attachment) - 700) * 10 // 21)
    text = prose(rng, text_size)
    html = "".join(f"<p>{line}</p>\r\n" for line in text.split("\n"))
    return (
        "From: Alice <alice@corp.example>\r\nTo: Bob <bob@partner.example>\r\n"
        f"Subject: Report {rng.randint(1, 9999)}\r\nMessage-ID: <{rng.random()}@corp.example>\r\n"
        "Date: Fri, 27 Nov 2026 10:00:00 +0000\r\nMIME-Version: 1.0\r\n"
        'Content-Type: multipart/mixed; boundary="m1"\r\n\r\n'
        '--m1\r\nContent-Type: multipart/alternative; boundary="a1"\r\n\r\n'
        "--a1\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n"
        + text.replace("\n", "\r\n")
        + "\r\n--a1\r\nContent-Type: text/html; charset=utf-8\r\n\r\n"
        + "<html><body>\r\n"
        + html
        + "</body></html>\r\n--a1--\r\n"
        '--m1\r\nContent-Type: application/pdf; name="figures.pdf"\r\n'
        'Content-Disposition: attachment; filename="figures.pdf"\r\n'
        "Content-Transfer-Encoding: base64\r\n\r\n" + attachment + "--m1--\r\n"
    ).encode()


# ------------------------------------------------------------------------ the contenders


def mailgate_config(folder: Path, door: str) -> Path:
    """The default configuration with only what a site must set: rules, folders, where the
    door listens and (relay) the next hop. The rules are the bench's copy of the default pack
    (made in main), so an edit in the checkout cannot reload the pack mid-run."""
    folder.mkdir(mode=0o755)
    config = folder / "mailgate.yaml"
    config.write_text(
        f"rules: {folder.parent / 'rules'}\nquarantine:\n  path: {folder / 'quarantine'}\n"
        f"audit:\n  path: {folder / 'audit.log'}\n{door}"
    )
    return config


def relay_process(work: Path, name: str, port: int, sink_port: int) -> ChildProcess:
    """`mailgate relay`: the default configuration, or for relay-2 two front ends with one
    scan worker each (what the README advised for two cores before issue 12)."""
    folder = work / name
    front_ends = "  processes: 2\nengine:\n  workers: 1\n" if name == "relay-2" else ""
    config = mailgate_config(
        folder,
        f"relay:\n  listen: 127.0.0.1:{port}\n  hostname: relay.bench.test\n"
        f"  next_hop: {{host: 127.0.0.1, port: {sink_port}, tls: none}}\n"
        f"  outbox: {folder / 'outbox'}\n{front_ends}",
    )
    argv = mailgate_argv("relay", "--config", str(config))
    return ChildProcess(name, argv, folder / "relay.log", ready=lambda: port_open(port))


def milter_process(work: Path, socket: Path) -> ChildProcess:
    folder = work / "milter"
    config = mailgate_config(folder, f"milter:\n  socket: unix:{socket}\n  socket_mode: '0666'\n")
    argv = mailgate_argv("milter", "--config", str(config))
    return ChildProcess("milter", argv, folder / "milter.log", ready=socket.exists)


def noop_process(work: Path, socket: Path) -> ChildProcess:
    argv = [str(PYTHON), "-m", "bench.noop_milter", f"unix:{socket}"]
    return ChildProcess("noop", argv, work / "noop.log", ready=socket.exists)


def rspamd_process(work: Path) -> tuple[ChildProcess, Path]:
    """A private rspamd on the bench's copy of the peer configuration: its own run, database
    and log folders, in the foreground, as Debian's _rspamd user; the stock configuration
    under it (/etc/rspamd) is only read. Returns the process and its milter socket."""
    folder = work / "rspamd"
    confdir = folder / "conf"
    shutil.copytree(PEER_CONFIG, confdir)
    for name in ("run", "db", "log"):
        (folder / name).mkdir(parents=True)
        shutil.chown(folder / name, "_rspamd", "_rspamd")
    folder.chmod(0o755)
    socket = folder / "run" / "milter.sock"
    argv = ["rspamd", "-f", "-u", "_rspamd", "-g", "_rspamd", "-c", "/etc/rspamd/rspamd.conf"]
    argv += [f"--var=LOCAL_CONFDIR={confdir}", f"--var=RUNDIR={folder / 'run'}"]
    argv += [f"--var=DBDIR={folder / 'db'}", f"--var=LOGDIR={folder / 'log'}"]
    child = ChildProcess(
        "rspamd", argv, folder / "rspamd.out", ready=socket.exists, ready_timeout=RSPAMD_START
    )
    return child, socket


def wait_for_hyperscan(folder: Path) -> None:
    """rspamd's hs_helper compiles the regular expressions after the workers start; until it
    is done they scan without Hyperscan. Done: no new database file for 3 s."""
    db = folder / "db"
    last: tuple[int, float] = (-1, time.monotonic())

    def settled() -> bool:
        nonlocal last
        count = len(list(db.glob("*.hs*")))
        if count != last[0]:
            last = (count, time.monotonic())
        return count > 0 and time.monotonic() - last[1] >= 3

    wait_until(settled, RSPAMD_START, "rspamd's Hyperscan databases", interval=0.5)


# ------------------------------------------------------------------------ measuring


def show_they_act(contenders: dict[str, Contender]) -> None:
    """The EICAR example: refused by every filter with the policy, passed by the others. A
    contender that silently does nothing would otherwise win."""
    raw = EICAR_EXAMPLE.read_bytes().replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
    for name, contender in contenders.items():
        try:
            code, text = send_to(contender.port, raw, SENDER, (RECIPIENT,))
        except smtplib.SMTPResponseException as exc:
            code, text = exc.smtp_code, exc.smtp_error
        refused = 500 <= code < 600
        if refused != (name in ("relay", "relay-2", "milter", "rspamd")):
            raise RuntimeError(f"{name} answered the EICAR example {code} {text!r}")
        print(f"  {name:8} EICAR example: {code} {text.decode(errors='replace')[:70]}")


def path_cpu(roots: list[int]) -> float:
    """CPU seconds of the process trees under `roots`, the living processes and those they
    have reaped (Postfix's smtpd and cleanup processes come and go): utime, stime, cutime
    and cstime of each living process, so every process counts once."""
    table: dict[int, tuple[int, float]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = entry.joinpath("stat").read_text()
            except OSError:
                continue  # exited meanwhile
            fields = stat[stat.rindex(")") + 2 :].split()
            ticks = sum(int(v) for v in fields[11:15])
            table[int(entry.name)] = (int(fields[1]), ticks / CLOCK_TICKS)
    tree, frontier = set(roots), list(roots)
    while frontier:
        parent = frontier.pop()
        children = [p for p, (ppid, _) in table.items() if ppid == parent and p not in tree]
        tree.update(children)
        frontier += children
    return sum(table[p][1] for p in tree if p in table)


def main_cpu(pid: int) -> float:
    """CPU seconds of one process itself (utime and stime; not its children)."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def measure(
    sink: SmtpSinkProgram, contender: Contender, size: Size, message_file: Path, sessions: int
) -> Sample:
    case = SourceCase(size.label, size.count)
    warm_up(sink, contender.port, case, message_file, sessions)
    base = sink.messages
    cpu_before = path_cpu(contender.path_pids)
    filter_pid = contender.process.pid if contender.process is not None else None
    if filter_pid is not None:
        filter_before, main_before = path_cpu([filter_pid]), main_cpu(filter_pid)
    start = time.monotonic()
    with LatencyProbe(contender.port, message_file.read_bytes().replace(b"\n", b"\r\n")) as probe:
        _smtp_source(contender.port, size.count, sessions, message_file)
    if probe.errors:
        raise RuntimeError(f"{contender.name}: latency probe failed: {probe.errors[0]}")
    total = size.count + len(probe.samples)
    done = sink.wait_for(base + total, timeout=300)
    cpu_ms = (path_cpu(contender.path_pids) - cpu_before) / total * 1000
    sample = Sample(total / (done - start), probe.samples, cpu_ms)
    if filter_pid is not None:
        sample.filter_ms = (path_cpu([filter_pid]) - filter_before) / total * 1000
        sample.main_ms = (main_cpu(filter_pid) - main_before) / total * 1000
    return sample


def _smtp_source(port: int, count: int, sessions: int, message_file: Path) -> None:
    argv = ["smtp-source", "-s", str(sessions), "-m", str(count), "-f", SENDER, "-t", RECIPIENT]
    argv += ["-M", "client.bench.test", "-F", str(message_file), f"127.0.0.1:{port}"]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=600)
    # smtp-source exits 0 even after some refusals; any complaint means the run is void.
    if result.returncode != 0 or result.stderr.strip():
        raise RuntimeError(f"{' '.join(argv)}: exit {result.returncode}: {result.stderr[-2000:]}")


def median_of(samples: list[Sample]) -> tuple[float, float, float, float]:
    """(msgs/s, p50 ms, p99 ms, CPU ms/msg): medians over the repetitions."""
    rate = statistics.median(s.rate for s in samples)
    p50 = statistics.median(percentile(s.latencies, 0.5) * 1000 for s in samples)
    p99 = statistics.median(percentile(s.latencies, 0.99) * 1000 for s in samples)
    return rate, p50, p99, statistics.median(s.cpu_ms for s in samples)


def report(contenders: dict[str, Contender], sizes: list[Size], repetitions: int) -> None:
    rates: dict[tuple[str, str], float] = {}
    for size in sizes:
        rows = []
        for name, contender in contenders.items():
            samples = contender.samples[size.label]
            rate, p50, p99, cpu = median_of(samples)
            rates[size.label, name] = rate
            filter_ms = [s.filter_ms for s in samples if s.filter_ms is not None]
            main_ms = [s.main_ms for s in samples if s.main_ms is not None]
            rows.append([name, rate, p50, p99, cpu,
                         statistics.median(filter_ms) if filter_ms else None,
                         statistics.median(main_ms) if main_ms else None])  # fmt: skip
        for row in rows:
            postfix = rates.get((size.label, "postfix"))
            row.append(row[1] / postfix if postfix else None)
        print_table(
            f"{size.label}: {size.count} messages, medians of {repetitions}",
            [
                *("contender", "msgs/s", "p50 ms", "p99 ms", "path CPU ms/msg"),
                *("filter ms/msg", "main ms/msg", "x postfix"),
            ],
            rows,
        )

    def ratio(size: Size, a: str, b: str) -> float | None:
        if (size.label, a) not in rates or (size.label, b) not in rates:
            return None
        return rates[size.label, a] / rates[size.label, b]

    print_table(
        "Ratios (msgs/s)",
        ["size", "relay/postfix", "milter/rspamd", "milter/noop", "rspamd/noop"],
        [
            [
                size.label,
                ratio(size, "relay", "postfix"),
                ratio(size, "milter", "rspamd"),
                ratio(size, "milter", "noop"),
                ratio(size, "rspamd", "noop"),
            ]
            for size in sizes
        ],
    )
    print("goals (issue 12): relay/postfix >= 1.00, milter/rspamd > 1.00, milter/noop >= 0.90")


def run(
    args: argparse.Namespace,
    work: Path,
    sink: SmtpSinkProgram,
    contenders: dict[str, Contender],
    sizes: list[Size],
) -> None:
    files = {}
    for size in sizes:
        files[size.label] = work / f"message-{size.size}.eml"
        # smtp-source -F adds CRLF to each line itself.
        files[size.label].write_bytes(bench_message(size.size).replace(b"\r\n", b"\n"))
        print(f"{size.label}: {files[size.label].stat().st_size} bytes")
    names = list(contenders)
    print(f"{args.sessions} sessions, one message per connection, {args.repetitions} "
          f"repetitions, contenders interleaved; load {os.getloadavg()[0]:.1f}")  # fmt: skip
    for repetition in range(args.repetitions):
        order = names[repetition % len(names) :] + names[: repetition % len(names)]
        for size in sizes:
            for name in order:
                contender = contenders[name]
                sample = measure(sink, contender, size, files[size.label], args.sessions)
                contender.samples.setdefault(size.label, []).append(sample)
                p99 = percentile(sample.latencies, 0.99) * 1000
                print(f"  {repetition + 1}  {size.label:6} {name:8} {sample.rate:7.0f} msgs/s  "
                      f"p99 {p99:6.1f} ms", flush=True)  # fmt: skip
    report(contenders, sizes, args.repetitions)
    print(f"load average at the end: {os.getloadavg()[0]:.1f}")
    if args.profile:
        args.profile.mkdir(parents=True, exist_ok=True)
        for name in ("relay", "relay-2", "milter"):
            contender = contenders.get(name)
            if contender is None or contender.process is None:
                continue
            for size in sizes:
                out = args.profile / f"{name}-{size.size}.txt"
                with py_spy(contender.process.pid, out):
                    measure(sink, contender, replace(size, count=args.profile_count),
                            files[size.label], args.sessions)  # fmt: skip
                summarise_profile(out, f"py-spy, {name}, {size.label}")
    for contender in contenders.values():
        if contender.process is not None:
            contender.process.check_alive()


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repetitions", type=int, default=3, help="medians of this many")
    parser.add_argument("--scale", type=float, default=1.0, help="multiply every message count")
    parser.add_argument("--sessions", type=int, default=20)
    parser.add_argument("--contenders", default=",".join(CONTENDERS), help="a subset, in order")
    parser.add_argument("--profile", type=Path, help="folder for py-spy profiles afterwards")
    parser.add_argument("--profile-count", type=int, default=3000, help="messages profiled")
    args = parser.parse_args()
    if os.geteuid() != 0:
        parser.error("needs root: Postfix's master starts as root (run it with sudo)")
    if missing := missing_binaries():
        parser.error(f"needs Postfix (apt-get install postfix): missing {', '.join(missing)}")
    chosen = args.contenders.split(",")
    if unknown := set(chosen) - set(CONTENDERS) - set(OPTIONAL):
        parser.error(f"unknown contenders: {', '.join(sorted(unknown))}")
    if "rspamd" in chosen and shutil.which("rspamd") is None:
        parser.error("needs Debian's rspamd 3.4 for the rspamd contender: apt-get install rspamd")

    def scaled(n: int) -> int:
        return max(args.sessions, round(n * args.scale))

    sizes = [Size("10 KB", 10 * 1024, scaled(1500)), Size("100 KB", 100 * 1024, scaled(600))]
    work = shared_temp_dir("mailgate-bench-contenders-")
    (work / "run").mkdir(mode=0o755)
    shutil.copytree(REPO / "rules", work / "rules", ignore=shutil.ignore_patterns("__*"))
    sink = SmtpSinkProgram()
    contenders = {name: Contender(name) for name in chosen}
    postfix: PostfixInstance | None = None
    sockets: dict[str, Path] = {}
    try:
        sink.start()
        for name in ("relay", "relay-2"):
            if name in contenders:
                contenders[name].port = free_port()
                contenders[name].process = relay_process(
                    work, name, contenders[name].port, sink.port
                )
        if "milter" in contenders:
            sockets["milter"] = work / "run" / "milter.sock"
            contenders["milter"].process = milter_process(work, sockets["milter"])
        if "noop" in contenders:
            sockets["noop"] = work / "run" / "noop.sock"
            contenders["noop"].process = noop_process(work, sockets["noop"])
        if "rspamd" in contenders:
            contenders["rspamd"].process, sockets["rspamd"] = rspamd_process(work)
        for contender in contenders.values():
            if contender.process is not None:
                contender.process.start()
        if "rspamd" in contenders:
            wait_for_hyperscan(work / "rspamd")
        listeners = {
            name: {"smtpd_milters": f"unix:{sockets[name]}" if name in MILTERS else ""}
            for name in contenders
            if not name.startswith("relay")
        }
        if listeners:
            postfix = bench_postfix(sink.port, listeners)
            postfix.start()
            master = postfix.master_pid()
            assert master is not None
            for name, port in postfix.ports.items():
                contenders[name].port = port
                contenders[name].path_pids.append(master)
        for contender in contenders.values():
            if contender.process is not None:
                contender.path_pids.append(contender.process.pid)
        print("Each filter acts:")
        show_they_act(contenders)
        run(args, work, sink, contenders, sizes)
        return 0
    except Exception:
        if postfix is not None:
            print(f"--- postfix log (tail) ---\n{postfix.log_text()[-3000:]}")
        for contender in contenders.values():
            if contender.process is not None:
                print(f"--- {contender.name} log (tail) ---\n{contender.process.log_tail()}")
        raise
    finally:
        try:
            if postfix is not None:
                postfix.stop()
        finally:
            for contender in contenders.values():
                if contender.process is not None:
                    contender.process.stop()
            sink.stop()
            remove_tree(work)


if __name__ == "__main__":
    raise SystemExit(main())

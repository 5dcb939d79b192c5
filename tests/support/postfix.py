"""A private Postfix instance for tests: its own config, queue and data directories under one
temporary folder, smtpd listeners on loopback ports, everything relayed to a test sink.

Needs root (Postfix's master starts as root and drops to `mail_owner`) and the postfix
binaries. It never touches the system instance: `postfix -c DIR` for every command, a
separate data_directory (master.lock) and queue_directory (pid file), no chroot.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

POSTFIX_BINARIES = ("postfix", "postconf", "postqueue", "postsuper")

# Services the instance needs: no local delivery, no TLS; pickup only because postqueue
# takes a missing public/pickup for "mail system is down".
_MASTER_SERVICES = """\
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
smtp      unix  -       -       n       -       -       smtp
relay     unix  -       -       n       -       -       smtp
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
"""


def missing_binaries() -> list[str]:
    return [name for name in POSTFIX_BINARIES if shutil.which(name) is None]


def free_port() -> int:
    """A loopback port free right now (the small race until Postfix binds it is acceptable
    in a test)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PostfixError(RuntimeError):
    """The private Postfix instance could not be set up, started or stopped."""


@dataclass
class PostfixInstance:
    """`listeners` maps a name to the main.cf overrides of one smtpd on its own port,
    e.g. {"accept": {"milter_default_action": "accept"}}; `ports[name]` is its port."""

    relayhost_port: int
    settings: dict[str, str] = field(default_factory=dict)
    listeners: dict[str, dict[str, str]] = field(default_factory=lambda: {"smtp": {}})
    root: Path = field(init=False)
    ports: dict[str, int] = field(init=False, default_factory=dict)

    def __post_init__(self) -> None:
        # Not under pytest's tmp_path: Postfix daemons run as `postfix` and must be able to
        # traverse every parent folder (pytest's are 0700).
        self.root = Path(tempfile.mkdtemp(prefix="mailgate-postfix-"))
        self.root.chmod(0o755)
        self.config_dir = self.root / "etc"
        self.queue_dir = self.root / "spool"
        self.data_dir = self.root / "data"
        self.log_file = self.root / "postfix.log"
        self.ports = {name: free_port() for name in self.listeners}

    # ---------------------------------------------------------------- configuration

    def main_cf(self) -> dict[str, str]:
        settings = {
            "compatibility_level": "3.6",
            "queue_directory": str(self.queue_dir),
            "data_directory": str(self.data_dir),
            "mail_owner": "postfix",
            "setgid_group": "postdrop",
            "myhostname": "postfix.mailgate.test",
            "mydomain": "mailgate.test",
            "mydestination": "",
            "local_recipient_maps": "",
            "alias_maps": "",
            "alias_database": "",
            "relay_domains": "",
            "relayhost": f"[127.0.0.1]:{self.relayhost_port}",
            "mynetworks": "127.0.0.0/8",
            "inet_interfaces": "127.0.0.1",
            "inet_protocols": "ipv4",
            "smtpd_relay_restrictions": "permit_mynetworks, reject_unauth_destination",
            "smtpd_peername_lookup": "no",
            "smtp_dns_support_level": "disabled",
            "smtp_tls_security_level": "none",
            "smtpd_tls_security_level": "none",
            "biff": "no",
            "maillog_file_prefixes": str(self.root),
            "maillog_file": str(self.log_file),
            # Fast retries, so a deferred message does not stall a test run.
            "queue_run_delay": "1s",
            "minimal_backoff_time": "1s",
            "maximal_backoff_time": "2s",
            "smtp_connect_timeout": "5s",
        }
        settings.update(self.settings)
        return settings

    def master_cf(self) -> str:
        lines = []
        for name, overrides in self.listeners.items():
            lines.append(f"127.0.0.1:{self.ports[name]} inet n - n - - smtpd")
            lines += [f"  -o {key}={value}" for key, value in overrides.items()]
        return "\n".join(lines) + "\n" + _MASTER_SERVICES

    def write_config(self) -> None:
        self.config_dir.mkdir(mode=0o755)
        # postfix-script creates the queue's subfolders; the top ones must exist.
        self.queue_dir.mkdir(mode=0o755)
        self.data_dir.mkdir(mode=0o700)
        shutil.chown(self.data_dir, "postfix", "postfix")
        main = "".join(f"{key} = {value}\n" for key, value in self.main_cf().items())
        (self.config_dir / "main.cf").write_text(main)
        (self.config_dir / "master.cf").write_text(self.master_cf())
        # Debian's postfix-script expects the dynamic map registry in the config directory.
        registry = Path("/etc/postfix/dynamicmaps.cf")
        if registry.exists():
            shutil.copy(registry, self.config_dir / "dynamicmaps.cf")
            if Path("/etc/postfix/dynamicmaps.cf.d").is_dir():
                (self.config_dir / "dynamicmaps.cf.d").mkdir()

    # ------------------------------------------------------------------ life cycle

    def run(self, *args: str, check: bool = True, timeout: float = 60) -> str:
        result = subprocess.run(
            [*args[:1], "-c", str(self.config_dir), *args[1:]],
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if check and result.returncode != 0:
            raise PostfixError(
                f"{' '.join(args)} failed ({result.returncode}): {result.stderr or result.stdout}"
                f"\n--- postfix log ---\n{self.log_text()[-4000:]}"
            )
        return result.stdout + result.stderr

    def start(self) -> None:
        self.write_config()
        self.run("postfix", "start")
        wait_until(lambda: self.master_pid() is not None, 20, "Postfix master to start")
        for name, port in self.ports.items():
            wait_until(lambda port=port: _port_open(port), 20, f"Postfix listener {name}")

    def master_pid(self) -> int | None:
        try:
            pid = int((self.queue_dir / "pid" / "master.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        return pid

    def stop(self) -> None:
        """Stop this instance whatever state it is in: stop, then abort, then kill its own
        master by the pid it wrote; then remove the folder."""
        try:
            pid = self.master_pid()
            if pid is not None:
                self.run("postfix", "stop", check=False, timeout=30)
                if not _wait_gone(pid, 10):
                    self.run("postfix", "abort", check=False, timeout=30)
                    if not _wait_gone(pid, 5):
                        os.kill(pid, signal.SIGKILL)
                        _wait_gone(pid, 5)
        finally:
            shutil.rmtree(self.root, ignore_errors=True)

    def queue_ids(self) -> list[str]:
        """Ids of every message still in this instance's queue (any state)."""
        out = self.run("postqueue", "-j", check=False)
        return re.findall(r'"queue_id":\s*"([0-9A-Za-z]+)"', out)

    def log_text(self) -> str:
        try:
            return self.log_file.read_text(errors="replace")
        except OSError:
            return ""


def wait_until(condition: Callable[[], object], timeout: float, what: str) -> None:
    """Poll `condition` until true; PostfixError after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise PostfixError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(0.05)


def _port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


def _wait_gone(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.05)
    return False


class MilterProcess:
    """`mailgate milter --config FILE` as a child process, as an operator would run it."""

    def __init__(self, config: Path, socket: Path, log: Path) -> None:
        self.config, self.socket, self.log = config, socket, log
        self.process: subprocess.Popen[bytes] | None = None

    def command(self) -> list[str]:
        script = Path(sys.executable).with_name("mailgate")
        if script.exists():
            return [str(script), "milter", "--config", str(self.config)]
        return [sys.executable, "-c", "from mailgate.filter.cli.main import main; main()", "milter",
                "--config", str(self.config)]  # fmt: skip

    def start(self) -> None:
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(self.command(), stdout=log, stderr=log)
        process = self.process

        def ready() -> bool:
            if process.poll() is not None:
                raise AssertionError(f"mailgate milter exited:\n{self.log.read_text()}")
            return self.socket.exists()

        wait_until(ready, 90, "mailgate milter's socket")

    def stop(self) -> int | None:
        """SIGTERM and wait; the exit status (None if it had to be killed)."""
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return process.returncode if process else None
        process.send_signal(signal.SIGTERM)
        try:
            return process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)
            return None

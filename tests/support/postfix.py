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
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from tests.support.net import free_port, port_open
from tests.support.processes import running
from tests.support.waiting import wait_until

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


def milter_settings(socket: Path, **more: str) -> dict[str, str]:
    """main.cf settings for an instance that asks the milter on the unix `socket` about every
    message (protocol 6) and answers 4xx while it cannot reach it; `more` adds or overrides."""
    return {
        "smtpd_milters": f"unix:{socket}",
        "milter_protocol": "6",
        "milter_default_action": "tempfail",
        **more,
    }


def shared_temp_dir(prefix: str) -> Path:
    """A fresh folder that Postfix's daemons (user postfix) can traverse: not under pytest's
    tmp_path, whose folders are 0700. The caller removes it."""
    path = Path(tempfile.mkdtemp(prefix=prefix))
    path.chmod(0o755)
    return path


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
        self.root = shared_temp_dir("mailgate-postfix-")
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
            wait_until(lambda port=port: port_open(port), 20, f"Postfix listener {name}")

    def master_pid(self) -> int | None:
        try:
            pid = int((self.queue_dir / "pid" / "master.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None
        return pid if running(pid) else None

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


def _wait_gone(pid: int, timeout: float) -> bool:
    try:
        wait_until(lambda: not running(pid), timeout, f"process {pid} to exit")
    except AssertionError:
        return False
    return True

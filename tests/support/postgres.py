"""A private PostgreSQL for tests: `initdb` into a temporary folder, `pg_ctl` on a loopback port
with its socket in that folder, run as the unprivileged `postgres` user when the tests run as
root (PostgreSQL refuses to run as root), always stopped at the end.

It never touches a system cluster: its own data folder, port and socket folder. Host
connections need a password (scram-sha-256), so the tests see the password travel in the URL
and can check it is never printed.
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import glob
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.net import free_port
from tests.support.processes import children_of

SKIP_REASON = "needs PostgreSQL's initdb and pg_ctl (see README: Testing)"
PASSWORD = "pg-test-Secr3t"  # the `mailgate` role's; tests check it is never shown
SERVER_USER = "postgres"  # Debian's package creates it


def binaries() -> Path | None:
    """The folder holding initdb and pg_ctl: on PATH, else Debian's versioned folder."""
    found = shutil.which("pg_ctl")
    if found and shutil.which("initdb"):
        return Path(found).resolve().parent
    for folder in sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True):
        if Path(folder, "initdb").exists() and Path(folder, "pg_ctl").exists():
            return Path(folder)
    return None


class PostgresInstance:
    def __init__(self, settings: dict[str, str] | None = None) -> None:
        folder = binaries()
        if folder is None:
            raise RuntimeError(SKIP_REASON)
        self.bin = folder
        self.port = free_port()
        self.settings = settings or {}
        self.root = Path(tempfile.mkdtemp(prefix="mailgate-pg-"))
        self.data = self.root / "data"
        self.log = self.root / "server.log"
        self.as_user: str | None = SERVER_USER if os.geteuid() == 0 else None
        if self.as_user is not None:
            entry = pwd.getpwnam(self.as_user)
            os.chown(self.root, entry.pw_uid, entry.pw_gid)

    def _run(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            args, capture_output=True, text=True, timeout=timeout, user=self.as_user, cwd=self.root
        )
        if result.returncode != 0:
            raise RuntimeError(f"{' '.join(args)}: {result.stderr or result.stdout}{self.tail()}")
        return result

    def tail(self) -> str:
        with contextlib.suppress(OSError):
            return "\n--- server log ---\n" + self.log.read_text()[-3000:]
        return ""

    def init(self) -> None:
        """A copy of one cluster made by initdb for the whole run: initdb's bootstrap costs
        about a second of CPU per server, a copy of its 40 MB a quarter of that."""
        self._run("cp", "-a", str(_template_cluster(self.bin, self.as_user)), str(self.data))

    def start(self) -> None:
        options = {
            "listen_addresses": "127.0.0.1",
            "port": str(self.port),
            "unix_socket_directories": str(self.root),
            "max_connections": "100",
            "shared_buffers": "32MB",
            **self.settings,
        }
        opts = " ".join(f"-c {key}={value}" for key, value in options.items())
        self._run(
            str(self.bin / "pg_ctl"), "-D", str(self.data), "-l", str(self.log), "-w",
            "-t", "60", "-o", opts, "start",
        )  # fmt: skip

    def stop(self, mode: str = "fast") -> None:
        self._run(str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", mode, "-w", "stop")

    def running(self) -> bool:
        return self.postmaster_pid() is not None

    def postmaster_pid(self) -> int | None:
        try:
            pid = int((self.data / "postmaster.pid").read_text().split()[0])
            os.kill(pid, 0)
        except (OSError, ValueError, IndexError):
            return None
        return pid

    def pause(self) -> list[int]:
        """SIGSTOP the server and every backend: a database that accepts TCP and never
        answers (a frozen VM, a commit waiting on a lost synchronous standby)."""
        pids = self._server_pids()
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):  # a backend that just ended
                os.kill(pid, signal.SIGSTOP)
        return pids

    def resume(self, pids: list[int]) -> None:
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)

    def _server_pids(self) -> list[int]:
        master = self.postmaster_pid()
        return [] if master is None else [master, *children_of(master)]

    def psql_url(self, dbname: str = "postgres") -> str:
        """The superuser over the socket (trust): for setting up roles and databases."""
        return f"postgresql:///{dbname}?host={self.root}&port={self.port}&user=postgres"

    def admin(self, sql: str, dbname: str = "postgres") -> None:
        import psycopg

        with psycopg.connect(self.psql_url(dbname), autocommit=True) as conn:
            conn.execute(sql)  # type: ignore[arg-type]

    def create_database(self, name: str | None = None) -> str:
        """A new database owned by the `mailgate` role; its URL (with the password)."""
        name = name or f"mg_{uuid.uuid4().hex[:12]}"
        self.admin(f"CREATE DATABASE {name} OWNER mailgate")
        return self.url(name)

    def url(self, dbname: str) -> str:
        return f"postgresql://mailgate:{PASSWORD}@127.0.0.1:{self.port}/{dbname}"

    def setup(self) -> PostgresInstance:
        self.init()
        self.start()
        self.admin(f"CREATE ROLE mailgate LOGIN PASSWORD '{PASSWORD}'")
        return self

    def destroy(self) -> None:
        """Stop whatever state it is in (resumed first if paused), then remove the folder."""
        try:
            pids = self._server_pids()
            self.resume(pids)
            if self.running():
                try:
                    self.stop("fast")
                except (RuntimeError, subprocess.TimeoutExpired):
                    self.stop("immediate")
        finally:
            master = self.postmaster_pid()
            if master is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(master, signal.SIGKILL)
            shutil.rmtree(self.root, ignore_errors=True)


@functools.cache
def _template_cluster(bin_folder: Path, as_user: str | None) -> Path:
    """initdb once into a folder of its own (removed when the run ends); no fsync: nothing
    here survives a power cut anyway."""
    root = Path(tempfile.mkdtemp(prefix="mailgate-pg-template-"))
    atexit.register(shutil.rmtree, root, ignore_errors=True)
    data = root / "data"
    pwfile = root / "pw"
    pwfile.write_text("postgres-superuser\n")
    if as_user is not None:
        shutil.chown(root, as_user)
        shutil.chown(pwfile, as_user)
    result = subprocess.run(
        [
            str(bin_folder / "initdb"), "-D", str(data), "-U", "postgres", "-E", "UTF8",
            "--locale=C", "--auth-local=trust", "--auth-host=scram-sha-256",
            f"--pwfile={pwfile}", "--no-sync",
        ],
        capture_output=True, text=True, timeout=120, user=as_user, cwd=root,
    )  # fmt: skip
    pwfile.unlink()
    if result.returncode != 0:
        raise RuntimeError(f"initdb: {result.stderr or result.stdout}")
    return data


requires_postgres = pytest.mark.skipif(binaries() is None, reason=SKIP_REASON)


@pytest.fixture(name="pg_server", scope="session")
def pg_server_fixture() -> Iterator[PostgresInstance]:
    """One private server for the session; each test takes a database of its own."""
    if binaries() is None:
        pytest.skip(SKIP_REASON)
    server = PostgresInstance({"fsync": "off"})  # nothing here survives a power cut anyway
    try:
        yield server.setup()
    finally:
        server.destroy()


@pytest.fixture(name="database_url")
def database_url_fixture(pg_server: PostgresInstance) -> str:
    return pg_server.create_database()


@pytest.fixture(name="private_pg")
def private_pg_fixture() -> Iterator[PostgresInstance]:
    """A server of the test's own, for tests that stop, pause or kill it."""
    if binaries() is None:
        pytest.skip(SKIP_REASON)
    server = PostgresInstance({"fsync": "off"})
    try:
        yield server.setup()
    finally:
        server.destroy()

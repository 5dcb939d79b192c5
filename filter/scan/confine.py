"""Least privilege for scan workers: they parse hostile files, so they get nothing else.

A worker runs PDFium, YARA, py7zr, olefile and libmagic on whatever a sender attaches. A parser
exploit there must not reach the quarantine, the release key or the TLS key. Once a worker has
built its engine (the pack arrives as bytes over the pipe, so nothing is left to open), it:

1. drops to an unprivileged user (`engine.user`, default `nobody`) when started as root, with
   no supplementary groups;
2. sets no_new_privs, so nothing it executes can gain privileges again;
3. where the kernel offers Landlock (Linux 5.13+; the `landlock` package binds it), restricts
   itself to reading and executing the Python installation, mailgate's own code and the system
   libraries: no write anywhere, no read of anything else (keys, quarantine, /etc).

Each step is applied when possible and reported; none is skipped silently.
"""

from __future__ import annotations

import ctypes
import importlib
import mimetypes
import os
import pkgutil
import pwd
import sys
from dataclasses import dataclass
from pathlib import Path

import landlock

PR_SET_NO_NEW_PRIVS = 38
# Read-only system locations a worker may still load code or data from: shared libraries
# loaded late (dlopen), libmagic's databases (a handle is opened per thread and mode; denied
# /etc/magic, libmagic calls every file `data`), timezone data, machine facts. Nothing here
# is a secret; tests/test_confine.py runs every golden example through confined workers.
SYSTEM_READ_ONLY = (
    "/usr",
    "/lib",
    "/lib64",
    "/etc/ld.so.cache",
    "/etc/localtime",
    "/etc/magic",
    "/etc/magic.mime",
    # what a library asks of the machine (py7zr sizes its buffers from these)
    "/proc/stat",
    "/proc/meminfo",
    "/proc/cpuinfo",
    "/sys/devices/system/cpu",
)


@dataclass(frozen=True)
class Confinement:
    user: str | None = "nobody"  # used only when the worker starts as root
    landlock: bool = True


def readable_paths() -> list[str]:
    """What a confined worker may read: the interpreter, installed packages, mailgate's code."""
    paths = {sys.base_prefix, sys.prefix, *SYSTEM_READ_ONLY}
    paths.add(str(Path(__file__).resolve().parents[1]))  # the filter package
    paths.update(p for p in sys.path if p and Path(p).is_dir() and "site-packages" in p)
    return sorted(p for p in paths if os.path.exists(p))


def _no_new_privs() -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_NO_NEW_PRIVS) failed")


def _preload_stdlib() -> None:
    """Load now what the standard library reads lazily from disk: every codec (a message in
    a rare charset imports its codec on first use, and the worker's user may not be able to
    read the Python installation: a pyenv under a mode-700 /root) and the MIME types tables
    (/etc/mime.types, read at the first guess from a file name)."""
    import encodings

    for module in pkgutil.iter_modules(encodings.__path__):
        try:
            importlib.import_module(f"encodings.{module.name}")
        except ImportError:  # the Windows-only code pages
            continue
    mimetypes.init()


def _drop_user(name: str) -> None:
    entry = pwd.getpwnam(name)
    os.setgroups([])
    os.setgid(entry.pw_gid)
    os.setuid(entry.pw_uid)


def landlock_available() -> bool:
    try:
        return landlock.landlock_abi_version() >= 1
    except (OSError, landlock.LandlockError):
        return False


def _file_ruleset() -> landlock.Ruleset:
    """Read and execute beneath `readable_paths`, nothing else. Built before the user drop:
    the new user may not be able to open the paths (a pyenv under a mode-700 /root)."""
    ruleset = landlock.Ruleset()  # handles every file-system access right the kernel knows
    read = landlock.FSAccess.READ_FILE | landlock.FSAccess.READ_DIR | landlock.FSAccess.EXECUTE
    for path in readable_paths():
        rights = read if os.path.isdir(path) else read & ~landlock.FSAccess.READ_DIR
        ruleset.allow(path, rules=rights)
    return ruleset


def confine(confinement: Confinement) -> list[str]:
    """Confine the calling process for good; returns what was applied, for the log.
    Raises OSError or KeyError (no such user) if a step that applies here fails: a worker that
    cannot be confined as configured must not scan."""
    applied = []
    _preload_stdlib()
    ruleset = _file_ruleset() if confinement.landlock and landlock_available() else None
    if confinement.user and os.geteuid() == 0:
        _drop_user(confinement.user)
        applied.append(f"user {confinement.user}")
    _no_new_privs()
    applied.append("no_new_privs")
    if ruleset is not None:
        ruleset.apply()
        applied.append("landlock")
    return applied

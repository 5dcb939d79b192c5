"""The `mailgate` command in tests and benches, one way each: in this process by its entry
point where only its output matters (`run_in_process`), or as a child of this interpreter where
a real process is the point: exit statuses, signals, a service that keeps running
(`mailgate_argv`, `run_mailgate`, `mailgate_process`)."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from mailgate.filter.cli.main import main
from tests.support.processes import ChildProcess

if TYPE_CHECKING:
    import pytest


def mailgate_argv(*args: str, without: Iterable[str] = ()) -> list[str]:
    """The command line of `mailgate ARGS` on this interpreter (the installed `mailgate` script
    does the same). `without` names modules the child cannot import, as on an install that
    lacks them."""
    hide = "".join(f"sys.modules[{name!r}] = None; " for name in without)
    code = f"import sys; {hide}from mailgate.filter.cli.main import main; main()"
    return [sys.executable, "-c", code, *args]


def run_mailgate(
    *args: str,
    without: Iterable[str] = (),
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    timeout: float = 120,
) -> subprocess.CompletedProcess[str]:
    """`mailgate ARGS` run to its end as a child process; its output captured as text."""
    return subprocess.run(
        mailgate_argv(*args, without=without),
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd,
        timeout=timeout,
    )


def mailgate_process(
    *args: str, log: Path, ready: Callable[[], object] | None = None, ready_timeout: float = 90
) -> ChildProcess:
    """`mailgate ARGS` as a long-running child (`relay`, `milter`), not started yet."""
    return ChildProcess(f"mailgate {args[0]}", mailgate_argv(*args), log, ready, ready_timeout)


def run_in_process(
    capsys: pytest.CaptureFixture[str], *args: str
) -> subprocess.CompletedProcess[str]:
    """`mailgate ARGS` through its entry point in this process, where only its exit status
    and output matter; the same result as `run_mailgate` gives."""
    capsys.readouterr()
    try:
        main(list(args))
    except SystemExit as done:
        status = done.code
    else:
        raise AssertionError("mailgate's main() returned instead of exiting")
    out, err = capsys.readouterr()
    assert isinstance(status, int), status
    return subprocess.CompletedProcess(["mailgate", *args], status, out, err)

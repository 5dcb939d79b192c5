"""Waiting for something to happen, bounded: the one poll loop of the tests and benches."""

from __future__ import annotations

import time
from collections.abc import Callable


def wait_until(
    condition: Callable[[], object], timeout: float, what: str, interval: float = 0.05
) -> None:
    """Poll `condition` every `interval` seconds until it is true; AssertionError naming `what`
    after `timeout` seconds. Whatever `condition` raises goes through (a process that died)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what}")
        time.sleep(interval)

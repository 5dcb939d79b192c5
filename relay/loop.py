"""The relay's event loop: uvloop (libuv) when it is installed, else asyncio's own.

Every byte of the relay's SMTP goes through the event loop's transports and its select; uvloop
does that work in C. The relay runs the same on either (the tests run it on both):
MAILGATE_EVENT_LOOP=asyncio chooses asyncio's loop even where uvloop is installed.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

T = TypeVar("T")

CHOICE = "MAILGATE_EVENT_LOOP"  # uvloop (the default) or asyncio


def loop_factory() -> Callable[[], asyncio.AbstractEventLoop]:
    """What makes the relay's event loop, as MAILGATE_EVENT_LOOP and the installation say."""
    choice = os.environ.get(CHOICE, "uvloop").strip().lower() or "uvloop"
    if choice not in ("uvloop", "asyncio"):
        raise ValueError(f"{CHOICE}={choice!r}: uvloop or asyncio")
    if choice == "uvloop":
        try:
            import uvloop
        except ImportError:  # an optional speed-up: asyncio's loop does the same work
            pass
        else:
            return uvloop.new_event_loop
    return asyncio.new_event_loop


def run(main: Coroutine[Any, Any, T]) -> T:
    """asyncio.run on the relay's event loop."""
    with asyncio.Runner(loop_factory=loop_factory()) as runner:
        return runner.run(main)


def loop_name(loop: asyncio.AbstractEventLoop) -> str:
    """For the log: which loop serves."""
    return "uvloop" if type(loop).__module__.startswith("uvloop") else "asyncio"

"""An asyncio event loop in a daemon thread, for the servers and pools tests run beside their
own synchronous code (the relay, the test SMTP sink, a scan pool). The loop is the relay's
choice (relay/loop.py): uvloop, or asyncio's own with MAILGATE_EVENT_LOOP=asyncio."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

from mailgate.relay.loop import loop_factory

T = TypeVar("T")


class BackgroundLoop:
    def __init__(self) -> None:
        self.loop = loop_factory()()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 30.0) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(5)
        self.loop.close()

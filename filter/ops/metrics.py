"""Prometheus metrics and the health endpoints, on a loopback port (`metrics.listen`).

Each `Metrics` has its own registry (no process-global state), so two doors in one test
process never share counts. `MetricsServer` serves it over HTTP from one thread, with a
deadline for every request and a cap on connections (a flood of half-sent requests costs
neither threads nor the health check):
  /metrics  the Prometheus text format
  /healthz  200 while the process runs
  /readyz   200 once `ready()` says so (pack loaded; for the relay, the next hop answered)
"""

from __future__ import annotations

import asyncio
import logging
import socket
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from http import HTTPStatus
from typing import TYPE_CHECKING

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    generate_latest,
)

from mailgate.filter.ops.config import Config, Endpoint
from mailgate.filter.policy.verdict import Verdict

if TYPE_CHECKING:
    from mailgate.filter.scan.reload import ReloadResult

log = logging.getLogger("mailgate.metrics")

# Scans take milliseconds; the tail up to the default 10 s time budget matters for alerts.
SCAN_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.messages = Counter(
            "mailgate_messages",
            "Messages judged, by door and the action taken",
            ["door", "action"],
            registry=self.registry,
        )
        self.rule_hits = Counter(
            "mailgate_rule_hits",
            "Messages a rule hit, by rule id and mode (enforce or monitor)",
            ["rule", "mode"],
            registry=self.registry,
        )
        self.scan_seconds = Histogram(
            "mailgate_scan_seconds",
            "Time the engine took to judge a message",
            ["door"],
            buckets=SCAN_BUCKETS,
            registry=self.registry,
        )
        self.unscannable = Counter(
            "mailgate_unscannable",
            "Messages the engine could not look into, by reason (timeout, over_budget, ...)",
            ["reason"],
            registry=self.registry,
        )
        self.engine_failures = Counter(
            "mailgate_engine_failures",
            "Messages the engine gave no verdict for (the door's fail mode applied)",
            ["door"],
            registry=self.registry,
        )
        self.next_hop_errors = Counter(
            "mailgate_next_hop_errors",
            "Failures talking to the next hop, by kind (connect, timeout, tls, lost, other)",
            ["kind"],
            registry=self.registry,
        )
        self.quarantine_held = Gauge(
            "mailgate_quarantine_held",
            "Messages held in the quarantine awaiting review",
            registry=self.registry,
        )
        self.pack = Info("mailgate_pack", "The rule pack serving verdicts", registry=self.registry)
        self.reloads = Counter(
            "mailgate_reloads",
            "Rule pack reloads, by result (success, failure, unchanged)",
            ["result"],
            registry=self.registry,
        )
        self._pack_version = ""
        self._lock = threading.Lock()

    def observe(self, door: str, verdict: Verdict) -> None:
        """Count one judged message (the doors call this through `Reporter`)."""
        self.messages.labels(door, str(verdict.action)).inc()
        for rule in verdict.rules:
            self.rule_hits.labels(rule, "enforce").inc()
        for rule in verdict.monitor:
            self.rule_hits.labels(rule, "monitor").inc()
        if "total" in verdict.timings:
            self.scan_seconds.labels(door).observe(verdict.timings["total"])
        for reason in verdict.unscannable:
            self.unscannable.labels(reason).inc()
        if verdict.engine_error:
            self.engine_failures.labels(door).inc()
        if verdict.pack_version:
            self.set_pack(verdict.pack_version)

    @property
    def pack_version(self) -> str:
        """The pack serving verdicts, as last reported ("" before the first)."""
        return self._pack_version

    def set_pack(self, version: str) -> None:
        with self._lock:
            if version != self._pack_version:
                self._pack_version = version
                self.pack.info({"version": version})

    def observe_reload(self, result: ReloadResult) -> None:
        """`PackReloader`'s on_result: count the attempt, show the pack now serving."""
        self.reloads.labels(result.result).inc()
        if result.version:
            self.set_pack(result.version)

    def bind_quarantine_count(self, count: Callable[[], int]) -> None:
        """Read the held count at scrape time (one indexed query) rather than tracking it:
        releases and deletes happen in other processes."""

        def held() -> float:
            try:
                return float(count())
            except Exception as exc:  # a scrape must not fail because the store is busy
                log.warning("quarantine count unavailable: %s", exc)
                return float("nan")

        self.quarantine_held.set_function(held)

    def render(self) -> bytes:
        return generate_latest(self.registry)


# A scraper or health checker sends its request at once; a connection that has not sent a
# whole request head by then is dropped, as is one that does not take the answer in time.
REQUEST_TIMEOUT = 10.0
# Connections open at once. At the cap, the one that has waited longest for its request gives
# way to the newcomer: half-sent requests can fill the slots but never keep a health check out.
MAX_CONNECTIONS = 64
MAX_REQUEST_HEAD = 8192  # bytes of request line and headers
ANSWER_THREADS = 2  # /metrics and /readyz run their callbacks (a store query) off the loop


class MetricsServer:
    """/metrics, /healthz and /readyz on `listen`, served by one daemon thread running its own
    event loop: a connection costs a little memory, not a thread, whatever clients do."""

    def __init__(
        self,
        listen: Endpoint | tuple[str, int],
        ready: Callable[[], bool],
        metrics: Metrics,
        *,
        request_timeout: float = REQUEST_TIMEOUT,
        max_connections: int = MAX_CONNECTIONS,
    ) -> None:
        self.listen = Endpoint(*listen)
        self.ready = ready
        self.metrics = metrics
        self.request_timeout = request_timeout
        self.max_connections = max_connections
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._address: Endpoint | None = None
        self._answering = ThreadPoolExecutor(ANSWER_THREADS, thread_name_prefix="mailgate-metrics")
        # Open connections (insertion order: oldest first) -> whether the request is still due.
        self._open: dict[asyncio.StreamWriter, bool] = {}

    @classmethod
    def for_config(
        cls, config: Config, ready: Callable[[], bool], metrics: Metrics
    ) -> MetricsServer | None:
        """The server `metrics.listen` asks for, started; None when it asks for none."""
        if config.metrics.listen is None:
            return None
        server = cls(config.metrics.listen, ready, metrics)
        server.start()
        return server

    def start(self) -> None:
        """Bind and serve; OSError when the address cannot be bound."""
        try:
            sock = socket.create_server((self.listen.host, self.listen.port))
        except OSError as exc:
            raise OSError(exc.errno, f"metrics on {self.listen}: {exc.strerror}") from exc
        host, port = sock.getsockname()[:2]
        self._address = Endpoint(str(host), int(port))
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._run, args=(sock,), name="mailgate-metrics", daemon=True
        )
        self._thread.start()
        log.info("metrics on http://%s/metrics", self.address)

    @property
    def address(self) -> Endpoint:
        assert self._address is not None
        return self._address

    def stop(self) -> None:
        if self._loop is None or self._thread is None:
            return
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()
        self._loop = self._thread = None
        self._answering.shutdown(wait=False, cancel_futures=True)

    def _run(self, sock: socket.socket) -> None:
        loop = self._loop
        assert loop is not None
        asyncio.set_event_loop(loop)
        server = loop.run_until_complete(
            asyncio.start_server(self._connection, sock=sock, limit=MAX_REQUEST_HEAD)
        )
        loop.run_forever()
        server.close()
        pending = asyncio.all_tasks(loop)
        for task in pending:
            task.cancel()  # connections still open end here, each closing its own
        loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
        loop.close()

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if not self._admit():
            writer.close()
            return
        self._open[writer] = True
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), self.request_timeout)
            self._open[writer] = False
            status, body, content_type = await self._answer(head)
            writer.write(_response(status, body, content_type))
            await asyncio.wait_for(writer.drain(), self.request_timeout)
        except (TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, OSError):
            pass  # too slow, too long, or gone: nothing to answer
        finally:
            self._open.pop(writer, None)
            writer.close()

    def _admit(self) -> bool:
        """Room for one more connection: at the cap, the oldest still waiting for its request
        is closed; False when every open connection is being answered."""
        if len(self._open) < self.max_connections:
            return True
        waiting = next((w for w, due in self._open.items() if due), None)
        if waiting is None:
            return False
        del self._open[waiting]
        waiting.close()  # its read ends with IncompleteReadError
        return True

    async def _answer(self, head: bytes) -> tuple[int, bytes, str]:
        method, _, rest = head.partition(b" ")
        path = rest.split(b" ", 1)[0].split(b"?", 1)[0]
        if method != b"GET":
            return 405, b"only GET\n", "text/plain"
        if path == b"/healthz":
            return 200, b"ok\n", "text/plain"
        loop = asyncio.get_running_loop()
        if path == b"/metrics":
            body = await loop.run_in_executor(self._answering, self.metrics.render)
            return 200, body, CONTENT_TYPE_LATEST
        if path == b"/readyz":
            ready = await loop.run_in_executor(self._answering, _safely, self.ready)
            return (200, b"ready\n", "text/plain") if ready else (503, b"not ready\n", "text/plain")
        return 404, b"not found\n", "text/plain"


def _response(status: int, body: bytes, content_type: str) -> bytes:
    head = (
        f"HTTP/1.1 {status} {HTTPStatus(status).phrase}\r\n"
        f"Content-Type: {content_type}\r\nContent-Length: {len(body)}\r\n"
        "Connection: close\r\n\r\n"
    )
    return head.encode("ascii") + body


def _safely(ready: Callable[[], bool]) -> bool:
    try:
        return bool(ready())
    except Exception:
        log.exception("readiness check failed")
        return False

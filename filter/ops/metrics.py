"""Prometheus metrics and the health endpoints, on a loopback port (`metrics.listen`).

Each `Metrics` has its own registry (no process-global state), so two doors in one test
process never share counts. `MetricsServer` serves it with a small threaded HTTP server:
  /metrics  the Prometheus text format
  /healthz  200 while the process runs
  /readyz   200 once `ready()` says so (pack loaded; for the relay, the next hop answered)
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
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

from mailgate.filter.ops.config import Endpoint
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


class MetricsServer:
    """/metrics, /healthz and /readyz on `listen`, served from a daemon thread."""

    def __init__(
        self, listen: Endpoint | tuple[str, int], ready: Callable[[], bool], metrics: Metrics
    ) -> None:
        self.listen = Endpoint(*listen)
        self.ready = ready
        self.metrics = metrics
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Bind and serve; OSError when the address cannot be bound."""
        try:
            server = ThreadingHTTPServer((self.listen.host, self.listen.port), self._handler())
        except OSError as exc:
            raise OSError(exc.errno, f"metrics on {self.listen}: {exc.strerror}") from exc
        server.daemon_threads = True
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever, name="mailgate-metrics", daemon=True
        )
        self._thread.start()
        log.info("metrics on http://%s/metrics", self.address)

    @property
    def address(self) -> Endpoint:
        assert self._server is not None
        host, port = self._server.server_address[:2]
        return Endpoint(str(host), int(port))

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                path = self.path.split("?", 1)[0]
                if path == "/metrics":
                    self._send(200, owner.metrics.render(), CONTENT_TYPE_LATEST)
                elif path == "/healthz":
                    self._send(200, b"ok\n")
                elif path == "/readyz":
                    ready = _safely(owner.ready)
                    self._send(200 if ready else 503, b"ready\n" if ready else b"not ready\n")
                else:
                    self._send(404, b"not found\n")

            def _send(self, status: int, body: bytes, content_type: str = "text/plain") -> None:
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                pass  # a scrape every 15 s is not worth a log line

        return Handler


def _safely(ready: Callable[[], bool]) -> bool:
    try:
        return bool(ready())
    except Exception:
        log.exception("readiness check failed")
        return False

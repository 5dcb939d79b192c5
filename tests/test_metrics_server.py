"""The metrics HTTP server under hostile clients (issue 10 #12): half-sent requests cost no
thread, never lock the health check out, and are closed by the server, in this process and in a
real `mailgate relay`."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from mailgate.filter.ops.metrics import ANSWER_THREADS, Metrics, MetricsServer
from tests.support.cli import mailgate_process
from tests.support.net import free_port
from tests.support.relay_harness import write_config
from tests.support.scrape import get

pytestmark = pytest.mark.timeout(120)

HALF_SENT = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n"  # the blank line never comes


def half_open(port: int, count: int) -> list[socket.socket]:
    """`count` connections, each with a request that is never finished."""
    opened = []
    for _ in range(count):
        sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        sock.sendall(HALF_SENT)
        opened.append(sock)
    return opened


def closed_by_server(sock: socket.socket, within: float) -> bool:
    sock.settimeout(within)
    try:
        return sock.recv(100) == b""
    except TimeoutError:
        return False
    except ConnectionResetError:
        return True


def threads_of(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Threads:"):
            return int(line.split()[1])
    raise AssertionError("no Threads: line")


@pytest.fixture
def serve() -> Iterator:
    started: list[MetricsServer] = []

    def start(ready=lambda: True, **limits: float) -> MetricsServer:
        server = MetricsServer(("127.0.0.1", 0), ready, Metrics(), **limits)
        server.start()
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


def test_half_sent_requests_cost_no_thread_and_the_health_check_still_answers(serve) -> None:
    server = serve(request_timeout=3.0)
    port = server.address.port
    assert get(port, "/metrics")[0] == 200  # the answering threads exist from here on
    before = threading.active_count()
    opened = half_open(port, 300)
    try:
        assert get(port, "/healthz") == (200, "ok\n")
        assert threading.active_count() <= before + ANSWER_THREADS
        # All of them closed by the server: most at once to make room, the rest on the
        # deadline.
        assert all(closed_by_server(sock, within=15) for sock in opened)
    finally:
        for sock in opened:
            sock.close()


def test_at_the_cap_the_longest_waiting_connection_gives_way(serve) -> None:
    server = serve(request_timeout=60.0, max_connections=8)
    port = server.address.port
    opened = half_open(port, 8)
    try:
        assert get(port, "/healthz") == (200, "ok\n")  # the ninth connection got in
        assert closed_by_server(opened[0], within=5)  # long before its 60 s deadline
        assert not closed_by_server(opened[-1], within=0.5)
    finally:
        for sock in opened:
            sock.close()


def test_a_client_that_sends_nothing_is_closed_at_the_deadline(serve) -> None:
    server = serve(request_timeout=0.5)
    with socket.create_connection(("127.0.0.1", server.address.port), timeout=10) as idle:
        started = time.monotonic()
        assert closed_by_server(idle, within=10)
        assert time.monotonic() - started < 8  # the deadline, not the test's own timeout


def test_endpoints_and_methods(serve) -> None:
    def broken() -> bool:
        raise RuntimeError("readiness check crashed")

    port = serve(ready=broken).address.port
    assert get(port, "/readyz") == (503, "not ready\n")
    assert get(port, "/nothing") == (404, "not found\n")
    status, text = get(port, "/metrics?name=x")
    assert status == 200 and "mailgate_messages_total" in text
    with socket.create_connection(("127.0.0.1", port), timeout=10) as client:
        client.sendall(b"POST /healthz HTTP/1.1\r\nContent-Length: 0\r\n\r\n")
        assert client.recv(100).startswith(b"HTTP/1.1 405 ")
    with socket.create_connection(("127.0.0.1", port), timeout=10) as client:
        client.sendall(b"GET /" + b"x" * 10_000)  # a request head past the limit
        assert closed_by_server(client, within=10)


def test_a_real_relay_keeps_its_threads_and_health_under_a_flood(tmp_path: Path) -> None:
    relay_port, metrics_port = free_port(), free_port()
    (tmp_path / "rules").mkdir()
    (tmp_path / "rules" / "rules.yaml").write_text("rules: []\n")
    config = write_config(
        tmp_path,
        tmp_path / "rules",
        {"listen": f"127.0.0.1:{relay_port}"},
        engine={"workers": 1},
        metrics={"listen": f"127.0.0.1:{metrics_port}"},
    )
    relay = mailgate_process(
        "relay",
        "--config",
        str(config.source),
        log=tmp_path / "relay.log",
        ready=lambda: get(metrics_port, "/readyz")[0] == 200,
    ).start()
    try:
        assert get(metrics_port, "/metrics")[0] == 200
        before = threads_of(relay.pid)
        opened = half_open(metrics_port, 400)
        try:
            assert get(metrics_port, "/healthz") == (200, "ok\n")
            assert threads_of(relay.pid) <= before + ANSWER_THREADS
        finally:
            for sock in opened:
                sock.close()
        assert relay.stop() == 0, relay.log_tail()
    finally:
        relay.stop()

"""Loopback ports: a free one to listen on, and whether something listens on one."""

from __future__ import annotations

import socket


def free_port() -> int:
    """A 127.0.0.1 port with nothing listening on it right now: for a server a test starts
    (the short race until it binds is acceptable in a test), or a next hop that is down."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def port_open(port: int) -> bool:
    """Something accepts connections on 127.0.0.1:`port`."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False

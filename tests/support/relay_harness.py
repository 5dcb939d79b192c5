"""Run a real mailgate relay (real ScanPool workers, real quarantine) on 127.0.0.1 in a
background loop, with a configuration written to a real mailgate.yaml."""

from __future__ import annotations

import contextlib
import smtplib
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

from mailgate.filter.ops.config import Config, load_config
from mailgate.filter.scan.pool import ScanPool
from mailgate.filter.store.quarantine import LocalQuarantine
from mailgate.relay.server import Relay
from tests.support.background_loop import BackgroundLoop
from tests.support.certs import Pki
from tests.support.smtp_client import connect


def start_pool(loop: BackgroundLoop, rules: Path) -> ScanPool:
    async def start() -> ScanPool:
        pool = ScanPool(rules, workers=2, time_budget=10.0)
        await pool.start()
        return pool

    return loop.run(start(), timeout=120)


def write_config(
    folder: Path, rules: Path, relay: dict[str, Any] | None = None, **sections: Any
) -> Config:
    """mailgate.yaml in `folder`; RunningRelay listens on an ephemeral port of its own."""
    folder.mkdir(parents=True, exist_ok=True)
    data: dict[str, Any] = {
        "rules": str(rules),
        "quarantine": {"path": "quarantine"},
        "relay": {
            "hostname": "mailgate.example.test",
            "outbox": "outbox",
            **(relay or {}),
        },
        **sections,
    }
    path = folder / "mailgate.yaml"
    path.write_text(yaml.safe_dump(data))
    return load_config(path)


def tls_relay_settings(pki: Pki, next_hop_port: int, **tls: object) -> dict[str, Any]:
    """`relay:` settings offering STARTTLS with the test server certificate (`tls` adds to
    them: require, client_ca, ...) and passing mail on, in clear, to a local next hop."""
    return {
        "tls": {"cert": str(pki.right_name.cert), "key": str(pki.right_name.key), **tls},
        "next_hop": {"host": "127.0.0.1", "port": next_hop_port, "tls": "none", "timeout": 5},
    }


class RunningRelay:
    def __init__(self, loop: BackgroundLoop, config: Config, scanner: Any) -> None:
        self.loop = loop
        self.config = config
        self.store = LocalQuarantine(config.quarantine.path)
        self.relay = Relay.from_config(config, scanner, self.store)
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        loop.run(self.relay.start(sock=sock))
        self.port = self.relay.address[1]

    def client(self, source: str = "127.0.0.1", timeout: float = 30.0) -> smtplib.SMTP:
        return connect(self.port, source, timeout)

    def outbox_files(self) -> list[Path]:
        return sorted(self.config.relay.outbox.glob("*.eml"))

    def stop(self) -> None:
        self.loop.run(self.relay.stop(grace=1.0))


@contextlib.contextmanager
def relay_on_pack(
    folder: Path, rules: Path, relay: dict[str, Any] | None = None, **sections: Any
) -> Iterator[RunningRelay]:
    """A relay judging with a pool of its own on `rules` (e.g. the shipped pack), in a loop of
    its own, configured as `write_config` does in `folder`; all stopped on the way out."""
    loop = BackgroundLoop()
    try:
        pool = start_pool(loop, rules)
        try:
            running = RunningRelay(loop, write_config(folder, rules, relay, **sections), pool)
            try:
                yield running
            finally:
                running.stop()
        finally:
            loop.run(pool.close())
    finally:
        loop.close()

"""The review console for tests: a configuration in a folder, messages held by the real engine
on the default pack, users, a signed-in client, and the real server on 127.0.0.1."""

from __future__ import annotations

import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import Any

import uvicorn
import yaml
from starlette.applications import Starlette
from starlette.testclient import TestClient

from mailgate.filter import Engine, Envelope, ScanPool
from mailgate.filter.console.app import create_app
from mailgate.filter.console.users import UsersFile
from mailgate.filter.ops.config import Config, load_config, packaged_rules_dir
from mailgate.filter.ops.notices import SenderNotices
from mailgate.filter.ops.service import scan_pool_for
from mailgate.filter.store.quarantine import QuarantineStore
from mailgate.relay.release import release_message
from tests.support.cli import mailgate_process
from tests.support.net import port_open
from tests.support.processes import ChildProcess

CARD = "4111 1111 1111 1111"
MASKED_CARD = "**** **** **** 1111"
PASSWORD = "correct horse battery"
USERS = {"rita": "reviewer", "audrey": "auditor", "adam": "admin"}
# Argon2id at its lowest cost: every sign-in verifies a real hash, in about a millisecond
# instead of the production cost's quarter second (test_console_users checks the default).
CHEAP_HASHING = {"time_cost": 1, "memory_kib": 8, "parallelism": 1}


def card_message(subject: str = "Invoice for ACME", extra: str = "") -> bytes:
    return (
        "From: Alice <alice@example.com>\r\n"
        "To: bob@partner.example\r\n"
        f"Subject: {subject}\r\n"
        "Message-ID: <card-1@example.com>\r\n"
        "MIME-Version: 1.0\r\n"
        'Content-Type: multipart/mixed; boundary="b1"\r\n'
        "\r\n"
        "--b1\r\n"
        "Content-Type: text/plain; charset=utf-8\r\n"
        "\r\n"
        f"Please charge card {CARD} for the order.\r\n{extra}"
        "--b1\r\n"
        'Content-Type: text/csv; name="order.csv"\r\n'
        'Content-Disposition: attachment; filename="order.csv"\r\n'
        "\r\n"
        "item,qty\r\nwidget,3\r\n"
        "--b1--\r\n"
    ).encode()


def hostile_html_message(remote: str) -> bytes:
    """HTML with a script, a remote image, a javascript: link and a card number."""
    html = (
        "<html><body><p>Quarterly report</p>"
        "<script>document.title='pwned'; alert('pwned')</script>"
        f'<img src="{remote}/pixel.png" alt="tracker">'
        '<a href="javascript:alert(1)">open me</a>'
        f"<p>Card {CARD}</p></body></html>"
    )
    return (
        "From: Mallory <mallory@example.com>\r\n"
        "To: bob@partner.example\r\n"
        "Subject: <script>alert('subject')</script> report\r\n"
        "MIME-Version: 1.0\r\n"
        "Content-Type: text/html; charset=utf-8\r\n"
        "\r\n" + html + "\r\n"
    ).encode()


def write_config(
    folder: Path,
    next_hop_port: int,
    *,
    database: str | None = None,
    quarantine: dict[str, Any] | None = None,
    **console: Any,
) -> Config:
    """mailgate.yaml in `folder`: the default pack, the next hop on 127.0.0.1, `console:`
    settings; with `database`, the fleet's store."""
    folder.mkdir(parents=True, exist_ok=True)
    data: dict[str, Any] = {
        "rules": str(packaged_rules_dir()),
        "quarantine": {"path": "quarantine", **(quarantine or {})},
        "relay": {
            "hostname": "mailgate.example.test",
            "outbox": "outbox",
            "next_hop": {"host": "127.0.0.1", "port": next_hop_port, "tls": "none"},
        },
        "engine": {"workers": 1},
        "audit": {"path": "audit.jsonl"},
        "console": {
            "listen": "127.0.0.1:8025",
            "users": "console-users.yaml",
            "password_hashing": CHEAP_HASHING,
            **console,
        },
    }
    if database is not None:
        data.update(database=database, node="gw-console")
    (folder / "mailgate.yaml").write_text(yaml.safe_dump(data))
    return load_config(folder / "mailgate.yaml")


def add_users(config: Config, users: dict[str, str] = USERS) -> None:
    file = UsersFile(config.console.users, config.console.password_hashing)
    for name, role in users.items():
        file.set_user(name, role, PASSWORD)


def hold(store: QuarantineStore, engine: Engine, raw: bytes, **envelope: Any) -> str:
    """Judge `raw` with the real engine and keep it as a door would."""
    env = Envelope(
        mail_from=envelope.get("mail_from", "alice@example.com"),
        rcpt_tos=tuple(envelope.get("rcpt_tos", ("bob@partner.example",))),
        client_address="127.0.0.1",
        door="relay",
    )
    verdict = engine.scan(raw, env)
    assert str(verdict.action) == "quarantine", verdict
    return store.put(raw, env, verdict)


async def _start_pool(config: Config) -> ScanPool:
    pool = scan_pool_for(config, workers=1)
    await pool.start()
    return pool


def console_app(
    config: Config, store: QuarantineStore, notices: SenderNotices | None = None
) -> Starlette:
    """The console as `mailgate console` builds it (release and delete tell the sender through
    `notices`), without the scan pool: see `with_pool`."""
    release = partial(release_message, config, store, notices=notices)
    return create_app(config, store, release, notices=notices)


@contextmanager
def with_pool(client: TestClient, config: Config) -> Iterator[ScanPool]:
    """The scan pool of "Try a message", started on the event loop of `client` (entered: its
    loop runs the application) and closed at the end."""
    pool = client.portal.call(_start_pool, config)
    client.app.state.console.pool = pool  # type: ignore[attr-defined]
    try:
        yield pool
    finally:
        client.portal.call(pool.close)


def form_token(html: str) -> str:
    found = re.search(r'name="csrf" value="([^"]+)"', html)
    assert found, "no CSRF token in the page"
    return found.group(1)


def sign_in(client: TestClient, name: str, password: str = PASSWORD) -> Any:
    token = form_token(client.get("/login").text)
    return client.post(
        "/login",
        data={"username": name, "password": password, "csrf": token},
        follow_redirects=False,
    )


class RunningConsole:
    """The console under uvicorn on 127.0.0.1 in a thread, as `mailgate console` serves it."""

    def __init__(self, app: Starlette) -> None:
        self.port = 0  # the kernel's choice, read once the server listens
        self.server = uvicorn.Server(
            uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning")
        )
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> RunningConsole:
        self.thread.start()
        for _ in range(300):
            if self.server.started:
                self.port = self.server.servers[0].sockets[0].getsockname()[1]
                return self
            self.thread.join(0.1)
        raise AssertionError("the console did not start within 30 s")

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(30)


@contextmanager
def console_process(config: Config) -> Iterator[ChildProcess]:
    """`mailgate console --config` as a real process, serving once this yields (its log in
    the configuration's folder); stopped with SIGTERM at the end."""
    assert config.source is not None
    port = config.console.listen.port
    process = mailgate_process(
        "console", "--config", str(config.source), log=config.source.with_name("console.log"),
        ready=lambda: port_open(port),
    )  # fmt: skip
    process.start()
    try:
        yield process
    finally:
        process.stop()


@contextmanager
def running_console(app: Starlette) -> Iterator[RunningConsole]:
    server = RunningConsole(app).start()
    try:
        yield server
    finally:
        server.stop()

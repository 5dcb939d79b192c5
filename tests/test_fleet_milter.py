"""The milter door of a fleet node behind a real Postfix, its quarantine in a private
PostgreSQL: while the database is stopped, a message that must be held is tempfailed (Postfix
answers 4xx, the sender retries) and clean mail is delivered; once it is back, held again,
and every message's audit record reaches the database."""

from __future__ import annotations

import shutil
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import psycopg
import pytest
import yaml

from mailgate.filter.store.database import Database
from mailgate.filter.store.dburl import parse_database_url
from mailgate.filter.store.postgres import PostgresQuarantine
from tests.support.cli import mailgate_process
from tests.support.packs import write_pack
from tests.support.postfix import PostfixInstance, milter_settings, shared_temp_dir
from tests.support.postgres import (  # noqa: F401
    PostgresInstance,
    private_pg_fixture,
    requires_postgres,
)
from tests.support.processes import ChildProcess
from tests.support.samples import message
from tests.support.skips import needs_root_and_postfix
from tests.support.smtp_client import send_to
from tests.support.smtp_sink import SmtpSink
from tests.support.waiting import wait_until

pytestmark = [needs_root_and_postfix, requires_postgres, pytest.mark.timeout(240)]


@dataclass
class MilterNode:
    postfix: PostfixInstance
    milter: ChildProcess
    sink: SmtpSink
    store: PostgresQuarantine
    url: str


@pytest.fixture
def node(private_pg: PostgresInstance) -> Iterator[MilterNode]:
    database = private_pg.create_database()
    work = shared_temp_dir("mailgate-fleet-milter-")  # smtpd (user postfix) reaches the socket
    sink = SmtpSink()
    postfix: PostfixInstance | None = None
    milter: ChildProcess | None = None
    try:
        sink.start()
        socket = work / "run" / "milter.sock"
        postfix = PostfixInstance(
            relayhost_port=sink.port,
            settings=milter_settings(socket, milter_content_timeout="60s"),
            listeners={"smtp": {}},
        )
        write_pack(work / "pack")
        config = work / "mailgate.yaml"
        config.write_text(
            yaml.safe_dump(
                {
                    "database": database,
                    "node": "mx1",
                    "rules": "pack",
                    "milter": {"socket": f"unix:{socket}", "socket_mode": "0666"},
                    "engine": {"workers": 1},
                }
            )
        )
        milter = mailgate_process(
            "milter", "--config", str(config), log=work / "milter.log", ready=socket.exists
        ).start()
        postfix.start()
        handle = Database(parse_database_url(database), "test")
        yield MilterNode(postfix, milter, sink, PostgresQuarantine(handle), database)
    finally:
        try:
            if postfix is not None:
                postfix.stop()
        finally:
            if milter is not None:
                milter.stop()
            sink.stop()
            shutil.rmtree(work, ignore_errors=True)


def test_database_down_tempfails_held_mail_and_clean_mail_flows(
    node: MilterNode, private_pg: PostgresInstance
) -> None:
    port = node.postfix.ports["smtp"]
    token = uuid.uuid4().hex[:12]
    private_pg.stop()
    code, text = send_to(port, message("quarantine-me now", message_id=f"<h{token}@x.example>"))
    assert code == 451 and b"could not be held" in text, (code, text)
    code, _ = send_to(port, message("all fine", message_id=f"<c{token}@x.example>"))
    assert code == 250
    assert node.sink.wait_for(1)[0].message["Subject"] == "all fine"
    private_pg.start()
    code, _ = send_to(port, message("quarantine-me later", message_id=f"<l{token}@x.example>"))
    assert code == 250  # DISCARD: Postfix says 250, mailgate's store owns the message
    [record] = node.store.list()  # the tempfailed one was never half-written
    assert (record.subject, record.node, record.door) == ("quarantine-me later", "mx1", "milter")
    assert len(node.sink.received) == 1

    # The audit copy: every message's record reaches the database, those made while it was
    # away included (they waited in the door's spool).
    def records() -> dict[str, tuple[str, str, str]]:
        with psycopg.connect(node.url) as conn:
            rows = conn.execute(
                "SELECT record->>'message_id', node, door, action FROM audit_records"
            ).fetchall()
        return {message_id: (n, door, action) for message_id, n, door, action in rows}

    wait_until(lambda: len(records()) == 3, 90, "three audit records in the database")
    assert records() == {
        f"<h{token}@x.example>": ("mx1", "milter", "quarantine"),
        f"<c{token}@x.example>": ("mx1", "milter", "accept"),
        f"<l{token}@x.example>": ("mx1", "milter", "quarantine"),
    }
    node.milter.check_alive()

"""Sender notices (`quarantine.notify_sender`): the sender of a held message hears that it is
held, then released or deleted (with the reviewer's reason where the reviewer shares it),
through the real next hop (a sink), from the template in the pack folder, and never with a
card number in it: through `mailgate relay` and `mailgate quarantine` as real processes, the
milter door, and the console."""

from __future__ import annotations

import functools
import re
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from starlette.testclient import TestClient

from mailgate.filter import Engine, ScanPool
from mailgate.filter.ops.config import Config, load_config, packaged_rules_dir
from mailgate.filter.ops.notices import SenderNotices
from mailgate.filter.store.quarantine import LocalQuarantine
from mailgate.relay.release import send_notice
from tests.support.cli import mailgate_process, run_mailgate
from tests.support.console import (
    CARD,
    MASKED_CARD,
    add_users,
    card_message,
    console_app,
    form_token,
    hold,
    sign_in,
    write_config,
)
from tests.support.net import free_port
from tests.support.relay_harness import write_config as write_relay_config
from tests.support.skips import NEEDS_PYMILTER
from tests.support.smtp_client import banner, connect
from tests.support.smtp_sink import Received, SmtpSink

pytestmark = pytest.mark.timeout(180)
SENDER = "alice@example.com"
# The card number in the Subject, in two RFC 2047 words folded over two lines.
SUBJECT = "=?utf-8?B?T3JkZXIgNDExMSAxMTEx?=\r\n =?utf-8?B?IDExMTEgMTExMSB0b2RheQ==?="
SHOWN_SUBJECT = f"Order {MASKED_CARD} today"


@pytest.fixture
def sink() -> Iterator[SmtpSink]:
    server = SmtpSink().start()
    yield server
    server.stop()


def notice_of(received: Received, kind: str) -> str:
    """The notice's body, after checking it is one: from the null sender to the held
    message's sender, marked as automatic, and without the card number anywhere."""
    message = received.message
    assert received.mail_from == "" and received.rcpt_tos == (SENDER,), received
    assert message["X-Mailgate-Notice"] == kind
    assert message["Auto-Submitted"] == "auto-generated"
    assert message["To"] == SENDER
    body = message.get_content()  # decoded: a soft line break cannot hide a number
    for text in (received.content.decode("utf-8", "replace"), body, message["Subject"]):
        assert CARD not in text and CARD.replace(" ", "") not in text, text
    return body


def send(port: int, subject: str = SUBJECT, sender: str = SENDER) -> str:
    """A card message through the relay; the quarantine id its 250 names."""
    with connect(port) as client:
        client.ehlo()
        assert client.mail(sender)[0] == 250
        assert client.rcpt("bob@partner.example")[0] == 250
        code, reply = client.data(card_message(subject))
    assert code == 250, reply
    found = re.search(rb"quarantine as (\S+)", reply)
    assert found, reply
    return found.group(1).decode()


@pytest.fixture
def relay(tmp_path: Path, sink: SmtpSink) -> Iterator[tuple[int, Config]]:
    """`mailgate relay` with the default pack and notify_sender, next hop the sink."""
    port = free_port()
    config = write_relay_config(
        tmp_path,
        packaged_rules_dir(),
        {
            "listen": f"127.0.0.1:{port}",
            "next_hop": {"host": "127.0.0.1", "port": sink.port, "tls": "none", "timeout": 10},
        },
        quarantine={"path": "quarantine", "notify_sender": True},
        engine={"workers": 1},
    )
    process = mailgate_process(
        "relay", "--config", str(config.source), log=tmp_path / "relay.log",
        ready=lambda: banner(port).startswith(b"220"),
    )  # fmt: skip
    process.start()
    try:
        yield port, config
    finally:
        process.stop()


def test_held_released_and_deleted_through_the_relay(
    relay: tuple[int, Config], sink: SmtpSink
) -> None:
    port, config = relay
    # A bounce (null sender) that is held tells nobody: the first notice is the next one's.
    send(port, "bounce", sender="")
    first = send(port)
    received = sink.wait_for(1)
    body = notice_of(received[0], "held")
    assert received[0].message["Subject"] == f'Your message "{SHOWN_SUBJECT}" is held for review'
    assert f"Reference: {first}" in body and SHOWN_SUBJECT in body
    assert "bob@partner.example" in body and "Reviewer's note" not in body

    reason = f"Customer confirmed, card {CARD}"
    released = run_mailgate(
        "quarantine", "release", first, "--reason", reason, "--share-reason",
        "--config", str(config.source),
    )  # fmt: skip
    assert released.returncode == 0, released.stderr
    # The original to its recipient, then the notice (sent once the release is done).
    received = sink.wait_for(3)
    assert received[1].rcpt_tos == ("bob@partner.example",) and CARD in received[1].content.decode()
    body = notice_of(received[2], "released")
    assert f"Reviewer's note: Customer confirmed, card {MASKED_CARD}" in body
    assert f"Reference: {first}" in body

    second = send(port, "Invoice")
    notice_of(sink.wait_for(4)[3], "held")
    deleted = run_mailgate(
        "quarantine", "delete", second, "--reason", "not business mail",
        "--config", str(config.source),
    )  # fmt: skip
    assert deleted.returncode == 0, deleted.stderr
    body = notice_of(sink.wait_for(5)[4], "deleted")
    assert "was reviewed and deleted" in body and f"Reference: {second}" in body
    assert "Reviewer's note" not in body and "not business mail" not in body  # not shared
    time.sleep(0.5)  # anything more would have arrived by now
    assert len(sink.received) == 5


def test_the_milter_door_tells_the_sender_through_the_same_notifier(
    tmp_path: Path, sink: SmtpSink, bg: Any
) -> None:
    Milter = pytest.importorskip("Milter", reason=NEEDS_PYMILTER, exc_type=ImportError)
    from mailgate.filter.milter.door import MilterDoor
    from tests.support.milter_ctx import feed, no_reply_is_continue

    monkeypatch = pytest.MonkeyPatch()
    no_reply_is_continue(monkeypatch)
    config = notify_config(tmp_path, sink)
    store = LocalQuarantine(config.quarantine.path)
    notices = SenderNotices(config, store, functools.partial(send_notice, config))
    pool = ScanPool(packaged_rules_dir(), workers=1, time_budget=10)
    bg.run(pool.start(), timeout=60)
    try:
        door = MilterDoor(scanner=pool, store=store, notices=notices)
        rc, _ = feed(door, card_message(SUBJECT), ("bob@partner.example",))
        notices.close(timeout=30)
    finally:
        bg.run(pool.close(), timeout=30)
        monkeypatch.undo()
    assert rc == Milter.DISCARD  # held: Postfix drops its copy
    (qid,) = [r.id for r in store.list()]
    body = notice_of(sink.wait_for(1)[0], "held")
    assert f"Reference: {qid}" in body and SHOWN_SUBJECT in body


def notify_config(folder: Path, sink: SmtpSink, **quarantine: Any) -> Config:
    return write_config(folder, sink.port, quarantine={"notify_sender": True, **quarantine})


def test_the_console_shares_the_reason_only_when_asked(tmp_path: Path, sink: SmtpSink) -> None:
    config = notify_config(tmp_path, sink, notify_from="compliance@corp.example")
    add_users(config)
    store = LocalQuarantine(config.quarantine.path)
    notices = SenderNotices(config, store, functools.partial(send_notice, config))
    engine = Engine.load(packaged_rules_dir())
    client = TestClient(console_app(config, store, notices))
    assert sign_in(client, "rita").status_code == 303
    shared, kept = (hold(store, engine, card_message(SUBJECT)) for _ in range(2))
    page = client.get(f"/message/{shared}").text
    assert "Tell the sender this reason" in page
    token = form_token(page)
    reason = f"approved, card {CARD}"
    answer = client.post(
        f"/message/{shared}/release", data={"csrf": token, "reason": reason, "share": "1"}
    )
    assert answer.status_code == 200 and 'id="state" class="state-released">released' in answer.text
    answer = client.post(f"/message/{kept}/delete", data={"csrf": token, "reason": reason})
    assert answer.status_code == 200
    notices.close(timeout=30)
    released, deleted = (r for r in sink.wait_for(3) if r.mail_from == "")
    assert released.message["From"] == "compliance@corp.example"
    assert f"Reviewer's note: approved, card {MASKED_CARD}" in notice_of(released, "released")
    assert "Reviewer's note" not in notice_of(deleted, "deleted")


def test_the_pack_folder_template_is_used_and_a_broken_one_stops_the_start(
    tmp_path: Path, sink: SmtpSink
) -> None:
    pack = tmp_path / "pack"
    shutil.copytree(packaged_rules_dir(), pack)
    (pack / "notices" / "held.txt").write_text(
        "Subject: On hold: $subject\n\nDear sender, $id waits ($rule_reason).\n"
    )
    config = notify_config(tmp_path / "a", sink)
    config = config.model_copy(update={"rules": pack})
    store = LocalQuarantine(config.quarantine.path)
    notices = SenderNotices(config, store, functools.partial(send_notice, config))
    qid = hold(store, Engine.load(pack), card_message(SUBJECT))
    notices.held(qid)
    notices.close(timeout=30)
    received = sink.wait_for(1)[0]
    assert received.message["Subject"] == f"On hold: {SHOWN_SUBJECT}"
    assert notice_of(received, "held").startswith(f"Dear sender, {qid} waits (")

    (pack / "notices" / "held.txt").write_text("Subject: $subject\n\nYour $card_number\n")
    folder = tmp_path / "b"
    broken = write_relay_config(
        folder, pack, {"listen": f"127.0.0.1:{free_port()}"},
        quarantine={"path": "quarantine", "notify_sender": True},
    )  # fmt: skip
    refused = run_mailgate("relay", "--config", str(broken.source), timeout=60)
    assert refused.returncode == 2
    assert "notices/held.txt: unknown placeholder $card_number" in refused.stderr


def test_notify_from_must_be_an_address(tmp_path: Path) -> None:
    (tmp_path / "mailgate.yaml").write_text(
        "quarantine: {notify_sender: true, notify_from: 'Compliance <c@corp.example>'}\n"
    )
    with pytest.raises(Exception, match="not an address"):
        load_config(tmp_path / "mailgate.yaml")

"""`mailgate milter` behind a real Postfix: a private instance on loopback ports whose
smtpd_milters is the milter's unix socket and whose relayhost is a recording sink in this
process. Mail goes in with smtplib; what Postfix answers and what reaches the sink is checked.

Two smtpd listeners share the instance: "tempfail" and "accept" differ only in
milter_default_action, which decides what Postfix does while mailgate is down.
"""

from __future__ import annotations

import re
import shutil
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from mailgate.filter.store.quarantine import LocalQuarantine, QuarantineRecord
from mailgate.filter.store.release_mark import RELEASE_HEADER
from tests.support.cli import mailgate_process, run_mailgate
from tests.support.packs import write_pack
from tests.support.postfix import PostfixInstance, milter_settings, shared_temp_dir
from tests.support.processes import ChildProcess
from tests.support.samples import message
from tests.support.skips import needs_root_and_postfix
from tests.support.smtp_client import send_to
from tests.support.smtp_sink import SmtpSink
from tests.support.waiting import wait_until

pytestmark = needs_root_and_postfix

WAIT = 30  # seconds: upper bound for anything to reach the sink or the log


@dataclass
class Stack:
    postfix: PostfixInstance
    milter: ChildProcess
    socket: Path
    sink: SmtpSink
    store: LocalQuarantine
    config: Path


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    # smtpd runs as `postfix` and must reach the socket's folder.
    work = shared_temp_dir("mailgate-milter-test-")
    sink = SmtpSink()
    postfix: PostfixInstance | None = None
    milter: ChildProcess | None = None
    try:
        sink.start()
        socket = work / "run" / "milter.sock"
        postfix = PostfixInstance(
            relayhost_port=sink.port,
            settings=milter_settings(
                socket,
                milter_connect_timeout="5s",
                milter_command_timeout="10s",
                milter_content_timeout="60s",
            ),
            listeners={"tempfail": {}, "accept": {"milter_default_action": "accept"}},
        )
        write_pack(work / "pack")
        config = work / "mailgate.yaml"
        config.write_text(
            f"""\
rules: pack
quarantine:
  path: quarantine
  release_to: {{host: 127.0.0.1, port: {postfix.ports["tempfail"]}, tls: none}}
relay:
  hostname: release.mailgate.test
milter:
  socket: unix:{socket}
  socket_mode: '0666'
  fail_mode: tempfail
  time_budget: 20s
engine:
  workers: 1
"""
        )
        milter = mailgate_process(
            "milter", "--config", str(config), log=work / "milter.log", ready=socket.exists
        )
        milter.start()
        postfix.start()
        yield Stack(postfix, milter, socket, sink, LocalQuarantine(work / "quarantine"), config)
    finally:
        try:
            if postfix is not None:
                postfix.stop()
        finally:
            if milter is not None:
                milter.stop()
            sink.stop()
            shutil.rmtree(work, ignore_errors=True)


@pytest.fixture
def token() -> str:
    return uuid.uuid4().hex[:12]


def compose(subject: str, token: str, body: str = "Hello Bob,\r\nnumbers attached.\r\n") -> bytes:
    """A message the sink finds by `token`, its Message-ID."""
    return message(subject, body, message_id=f"<{token}@client.example.com>")


def delivered_body(text: str) -> str:
    # The sink keeps the wire's CRLF line ends.
    return text.replace("\r\n", "\n")


def held(store: LocalQuarantine, token: str) -> list[QuarantineRecord]:
    return [r for r in store.list() if token in r.message_id]


# --------------------------------------------------------------------------------- verdicts


@pytest.mark.parametrize(
    ("subject", "reply"),
    [
        ("please reject-me", "550 5.7.1 Subject contains a blocked word"),
        ("please tempfail-me", "451 4.7.1 Try later"),
    ],
)
def test_refused_in_the_smtp_session_with_the_rules_text(
    stack: Stack, token: str, subject: str, reply: str
) -> None:
    code, text = send_to(stack.postfix.ports["tempfail"], compose(subject, token))
    assert f"{code} {text.decode()}" == reply
    assert not stack.sink.with_header("Message-ID", token)


def test_tagged_message_arrives_with_header_and_subject(stack: Stack, token: str) -> None:
    code, text = send_to(stack.postfix.ports["tempfail"], compose("please tag-me", token))
    assert code == 250, text
    message = stack.sink.wait_for_header("Message-ID", token, WAIT).message
    assert message["X-Mailgate-Test"] == "yes"
    assert message["Subject"] == "[TAGGED] please tag-me"
    assert delivered_body(message.get_content()) == "Hello Bob,\nnumbers attached.\n"


def test_quarantined_message_is_held_and_release_delivers_it(stack: Stack, token: str) -> None:
    body = "Quarterly figures, confidential.\r\n"
    code, text = send_to(stack.postfix.ports["tempfail"], compose("quarantine-me", token, body))
    assert code == 250, text  # the sender sees success ...
    queue_id = re.search(r"queued as (\w+)", text.decode())
    [record] = held(stack.store, token)  # ... because it is stored before the 250
    assert record.state == "held"
    assert record.door == "milter"
    assert record.rules == ("hold-word",)
    assert queue_id is not None and record.queue_id == queue_id.group(1)
    assert record.client_address == "127.0.0.1"
    # ... and Postfix dropped its copy: nothing queued, nothing delivered.
    discard = f"{record.queue_id}: milter-discard"
    wait_until(lambda: discard in stack.postfix.log_text(), WAIT, "Postfix to log the discard")
    assert record.queue_id not in stack.postfix.queue_ids()
    assert not stack.sink.with_header("Message-ID", token)
    raw_held = stack.store.raw(record.id)
    assert raw_held.endswith(compose("quarantine-me", token, body).split(b"\r\n\r\n", 1)[1])

    release = run_mailgate("quarantine", "release", record.id, "--config", str(stack.config))
    assert release.returncode == 0, release.stdout + release.stderr

    delivered = stack.sink.wait_for_header("Message-ID", token, WAIT)
    assert delivered.message["Subject"] == "quarantine-me"
    assert delivered.message[RELEASE_HEADER] is None  # the milter strips the spent mark
    assert delivered.content.replace(b"\r\n", b"\n").endswith(body.replace("\r\n", "\n").encode())
    # The release went back through Postfix and the milter, and was not held again.
    [after] = held(stack.store, token)
    assert after.state == "released"
    assert stack.postfix.log_text().count("milter-discard") == 1
    assert len(stack.sink.with_header("Message-ID", token)) == 1


# ------------------------------------------------------------------------- mailgate down


def test_concurrent_sessions_all_get_their_verdict(stack: Stack, token: str) -> None:
    """20 sessions at once, each message with an id and a subject that the door reads and
    masks from libmilter's threads: every one judged and delivered, none answered by
    milter_default_action, and the milter still serving afterwards."""
    from concurrent.futures import ThreadPoolExecutor

    port = stack.postfix.ports["tempfail"]
    stack.milter.stop()  # a fresh milter: the burst is its first traffic
    stack.milter.start()
    subjects = [f"load {n} card 4111 1111 1111 1111" for n in range(60)]
    with ThreadPoolExecutor(max_workers=20) as clients:
        replies = list(
            clients.map(lambda s: send_to(port, compose(s, f"{token}-{s.split()[1]}")), subjects)
        )
    assert [code for code, _ in replies] == [250] * len(subjects)
    assert stack.milter.process is not None and stack.milter.process.poll() is None
    for subject in subjects:  # each judged by mailgate and delivered
        stack.sink.wait_for_header("Message-ID", f"{token}-{subject.split()[1]}@", WAIT)
    assert send_to(port, compose("please reject-me", token))[0] == 550  # still serving


def test_with_mailgate_stopped_milter_default_action_applies(stack: Stack, token: str) -> None:
    status = stack.milter.stop()
    try:
        assert status == 0, stack.milter.log_text()  # SIGTERM is a clean stop
        assert not stack.socket.exists()

        code, text = send_to(stack.postfix.ports["tempfail"], compose("hello", token))
        assert 400 <= code < 500, f"{code} {text}"
        assert not stack.sink.with_header("Message-ID", token)

        # milter_default_action=accept: delivered unscanned, even what the rules would refuse.
        code, text = send_to(stack.postfix.ports["accept"], compose("please reject-me", token))
        assert code == 250, text
        message = stack.sink.wait_for_header("Message-ID", token, WAIT).message
        assert message["Subject"] == "please reject-me"
    finally:
        stack.milter.start()

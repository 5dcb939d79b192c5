"""Masking reads text as the detectors read it, through the one header decoder: what the engine
holds for a card number is masked wherever mailgate writes it (the quarantine index,
`mailgate quarantine list/show`, the audit record, log lines), and what comes from outside
reaches a terminal or a log escaped."""

from __future__ import annotations

import base64
import json
import logging
import re
import socket
import sys
import threading
from pathlib import Path
from typing import Any

import pytest

from mailgate.filter.detect.masking import mask_field, mask_sensitive
from mailgate.filter.message.mime import parse_message
from mailgate.filter.message.rawheaders import decoded_headers
from mailgate.filter.ops.audit import AuditLog, audit_record
from mailgate.filter.ops.logs import SafeFormatter, json_line, printable
from mailgate.filter.ops.report import message_id_of
from mailgate.filter.policy.envelope import Envelope
from mailgate.filter.policy.verdict import Action
from mailgate.filter.scan.engine import Engine
from mailgate.filter.store.quarantine import LocalQuarantine
from tests.support.cards import unmasked_cards
from tests.support.cli import mailgate_process, run_in_process, run_mailgate
from tests.support.net import free_port, port_open
from tests.support.packs import write_pack
from tests.support.smtp_client import connect
from tests.support.smtp_sink import SmtpSink

RULES = Path(__file__).resolve().parent.parent / "rules"
FULLWIDTH_DIGITS = str.maketrans("0123456789", "".join(map(chr, range(0xFF10, 0xFF1A))))
FULLWIDTH_CARD = "4111 1111 1111 1111".translate(FULLWIDTH_DIGITS)
FULLWIDTH_1111 = "1111".translate(FULLWIDTH_DIGITS)
FULLWIDTH_B64 = base64.b64encode(f"Card {FULLWIDTH_CARD}".encode()).decode()
ENVELOPE = Envelope("alice@corp.example", ("bob@partner.example",), door="relay")


@pytest.fixture(scope="module")
def engine() -> Engine:
    return Engine.load(RULES)


def raw_message(*headers: str, body: str = "See you Monday.\r\n") -> bytes:
    lines = ["From: alice@corp.example", "To: bob@partner.example", *headers]
    return ("\r\n".join(lines) + "\r\n\r\n" + body).encode()


def card_forms(text: str) -> list[str]:
    """Card numbers left readable in `text`, in any of the spellings used here: digit runs
    with spaces or dashes (any script), and with dots, underscores or mixed separators."""
    found = unmasked_cards(text)
    found += re.findall(r"4111\W?1111\W?1111\W?1111", text)
    found += re.findall(r"4111_1111_1111_1111", text)
    return found


# --------------------------------------------------------------------- the reading itself


@pytest.mark.parametrize(
    ("text", "masked"),
    [
        (f"Card {FULLWIDTH_CARD}", f"Card **** **** **** {FULLWIDTH_1111}"),
        ("Card 4111\u00a01111 1111\u00a01111", "Card ****\u00a0**** ****\u00a01111"),
        ("Card 4111\u20631111\u034f1111\u180e1111", "Card ****\u2063****\u034f****\u180e1111"),
        ("IBAN DE89\u00a03704\u00a00044\u00a00532\u00a00130\u00a000",
         "IBAN ****\u00a0****\u00a0****\u00a0****\u00a0**30\u00a000"),
    ],
)  # fmt: skip
def test_masking_reads_text_as_the_detectors_do(text: str, masked: str) -> None:
    """Lookalike digits, no-break spaces and invisible characters: masked where they stand,
    the rest of the text as written."""
    assert mask_sensitive(text) == masked


@pytest.mark.parametrize(
    "value",
    [
        "=?x-unknown?Q?Card_4111_1111_1111_1111?=",
        "=?utf-8?B?Q2FyZCA0MTExIDExMTEgMTExMSAxMTEx?=",
        "Card 4111 1111\r\n 1111 1111",
        "=?utf-8?Q?Card_4111_11?=\r\n =?utf-8?Q?11_1111_1111?=",
    ],
)
def test_header_values_are_masked_decoded_and_unfolded(value: str) -> None:
    assert mask_field(value) == "Card **** **** **** 1111"


@pytest.mark.parametrize(
    ("identifier", "masked"),
    [
        ("4111111111111111@corp.example", "************1111@corp.example"),
        ("4111.1111.1111.1111@corp.example", "****.****.****.1111@corp.example"),
        ("card_4111_1111_1111_1111@corp.example", "card_****_****_****_1111@corp.example"),
        ("DE89370400440532013000@bank.example", "******************3000@bank.example"),
        ("ssn-536-90-4187@corp.example", "ssn-***-**-4187@corp.example"),
        # A folded Message-ID, its groups joined by a dash, then the fold's space, then a dot.
        ("<4111-1111\r\n 1111.1111@mx.example>", "<****-**** ****.1111@mx.example>"),
        # What is not a card, an IBAN or an SSN stays as it is.
        ("alice.smith+2024@corp.example", "alice.smith+2024@corp.example"),
        ("<20240101120000.123456789@mx.example>", "<20240101120000.123456789@mx.example>"),
    ],
)
def test_identifiers_keep_all_but_the_sensitive_run(identifier: str, masked: str) -> None:
    assert mask_field(identifier) == masked


@pytest.mark.parametrize(
    "value",
    [
        "=?x-unknown?Q?Card_4111_1111_1111_1111?=",
        "=?utf-8?B?4pyTIGRvbmU=?= =?utf-8?B?IGFnYWlu?=",
        "=?utf-8?Q?caf=C3?= =?utf-8?Q?=A9?=",  # a character split between two words
        "=?utf-8?B?bad base64?= tail",
        "Na\xefve 8-bit",
        "first\r\n\tsecond",
    ],
)
def test_raw_headers_decode_as_the_engine_does(value: str) -> None:
    """One decoder: the headers read straight from the bytes (quarantine, audit) are the
    headers the engine judged."""
    raw = f"Subject: {value}\r\n\r\nbody\r\n".encode("latin-1")
    assert decoded_headers(raw) == parse_message(raw).headers


# ------------------------------------------------------------ the quarantine and its CLI


def quarantine_config(tmp_path: Path, **relay: object) -> Path:
    config = tmp_path / "mailgate.yaml"
    text = f"quarantine: {{path: {tmp_path / 'q'}}}\n"
    if relay:
        text += f"relay: {json.dumps(relay)}\n"
    config.write_text(text)
    return config


def cli(capsys: pytest.CaptureFixture[str], config: Path, *args: str) -> str:
    """What `mailgate quarantine ARGS` prints on stdout, through its entry point in this process
    (a child process would spend a second importing mailgate for each)."""
    done = run_in_process(capsys, "quarantine", *args, "--config", str(config))
    assert done.returncode == 0, done.stderr
    return done.stdout


@pytest.mark.parametrize(
    "subject",
    [
        "=?x-unknown?Q?Card_4111_1111_1111_1111?=",  # the engine decodes an unknown charset
        f"Card {FULLWIDTH_CARD}",  # 8-bit UTF-8, as the engine reads it
        f"=?utf-8?B?{FULLWIDTH_B64}?=",
    ],
)
def test_a_subject_the_engine_holds_is_masked_in_the_index_and_the_cli(
    engine: Engine, tmp_path: Path, subject: str, capsys: pytest.CaptureFixture[str]
) -> None:
    raw = raw_message(f"Subject: {subject}", "Message-ID: <a1@corp.example>")
    verdict = engine.scan(raw, ENVELOPE)
    assert verdict.rules == ["card-number"] and verdict.action is Action.QUARANTINE
    store = LocalQuarantine(tmp_path / "q")
    qid = store.put(raw, ENVELOPE, verdict)  # as both doors call it: the Subject from the bytes
    assert (
        store.get(qid).subject.translate(FULLWIDTH_DIGITS)
        == f"Card **** **** **** {FULLWIDTH_1111}"
    )
    index = b"".join(p.read_bytes() for p in (tmp_path / "q").glob("index.sqlite3*"))
    assert card_forms(index.decode("utf-8", "replace")) == []
    config = quarantine_config(tmp_path)
    listed = cli(capsys, config, "list", "--json")
    shown = cli(capsys, config, "show", qid, "--json")
    table = cli(capsys, config, "show", qid)
    assert json.loads(listed)["subject"] == store.get(qid).subject
    assert json.loads(shown)["subject"] == store.get(qid).subject
    for output in (listed, shown, table):
        assert card_forms(output) == [], output


def test_show_masks_folded_and_encoded_headers_and_the_message_id(
    engine: Engine, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A card number split by a fold, inside an encoded word, in an X- header, in a display
    name, in a folded Message-ID with mixed separators: `show` prints the headers decoded and
    unfolded, masked; the index and the audit record hold the Message-ID masked."""
    raw = raw_message(
        "Subject: Card 4111 1111\r\n 1111 1111",
        "X-Note: =?utf-8?B?Q2FyZCA0MTExIDExMTEgMTExMSAxMTEx?=",
        'Reply-To: "Card 4111-1111-1111-1111" <alice@corp.example>',
        "Message-ID: <4111-1111\r\n 1111.1111@mx.corp.example>",
    )
    verdict = engine.scan(raw, ENVELOPE)
    assert verdict.action is Action.QUARANTINE
    store = LocalQuarantine(tmp_path / "q")
    qid = store.put(raw, ENVELOPE, verdict)
    assert store.get(qid).message_id == "<****-**** ****.1111@mx.corp.example>"
    record = audit_record("relay", ENVELOPE, message_id_of(raw), len(raw), verdict, {})
    assert record["message_id"] == "<****-**** ****.1111@mx.corp.example>"
    config = quarantine_config(tmp_path)
    table = cli(capsys, config, "show", qid)
    shown = json.loads(cli(capsys, config, "show", qid, "--json"))
    assert "  Subject: Card **** **** **** 1111" in table
    assert "  X-Note: Card **** **** **** 1111" in table
    assert ["X-Note", "Card **** **** **** 1111"] in shown["headers"]
    for output in (table, json.dumps(shown), json.dumps(record)):
        assert card_forms(output) == [], output


def test_envelope_addresses_are_masked_where_shown_and_exact_where_stored(
    engine: Engine, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A card number, an IBAN or an SSN in an address is masked in the audit record and the
    listing, the rest of the address kept; the stored envelope (what a release uses) is exact."""
    envelope = Envelope(
        "4111.1111.1111.1111@corp.example",
        ("DE89370400440532013000@bank.example", "ssn-536-90-4187@partner.example"),
        door="relay",
    )
    raw = raw_message("Subject: Card 4111 1111 1111 1111", "Message-ID: <a2@corp.example>")
    verdict = engine.scan(raw, envelope)
    masked = (
        "****.****.****.1111@corp.example",
        ["******************3000@bank.example", "ssn-***-**-4187@partner.example"],
    )
    record = audit_record("relay", envelope, message_id_of(raw), len(raw), verdict, {})
    assert (record["sender"], record["recipients"]) == masked
    store = LocalQuarantine(tmp_path / "q")
    qid = store.put(raw, envelope, verdict)
    assert (store.get(qid).sender, store.get(qid).recipients) == (
        envelope.mail_from,
        envelope.rcpt_tos,
    )
    config = quarantine_config(tmp_path)
    listed = json.loads(cli(capsys, config, "list", "--json"))
    assert (listed["sender"], listed["recipients"]) == masked
    table = cli(capsys, config, "list") + cli(capsys, config, "show", qid)
    for address in (*envelope.rcpt_tos, envelope.mail_from):
        assert address not in table
    assert masked[0] in table and masked[1][1] in table


def test_release_prints_the_next_hops_reply_escaped_and_masked(
    tmp_path: Path, sink: SmtpSink, capsys: pytest.CaptureFixture[str]
) -> None:
    """A next hop's reply with terminal escape sequences and a card number: the operator's
    terminal gets it escaped and masked, and so do the record and `show`."""
    config = quarantine_config(
        tmp_path, next_hop={"host": "127.0.0.1", "port": sink.port, "tls": "none"}
    )
    store = LocalQuarantine(tmp_path / "q")
    raw = raw_message("Subject: hello", "Message-ID: <a3@corp.example>")
    qid = store.put(raw, ENVELOPE, Engine.load(RULES).scan(raw, ENVELOPE))
    sink.faults.rcpt = {"bob@partner.example": "550 5.1.1 \x1b[2J\x1b]0;owned\x07 4111111111111111"}
    released = run_mailgate("quarantine", "release", qid, "--config", str(config))
    assert released.returncode == 1
    assert "\\u001b[2J\\u001b]0;owned\\u0007 ************1111" in released.stderr
    shown = cli(capsys, config, "show", qid) + cli(capsys, config, "show", qid, "--json")
    for output in (released.stdout, released.stderr, shown):
        assert "\x1b" not in output and "\x07" not in output
        assert card_forms(output) == []
    assert "************1111" in store.get(qid).events[-1].reply  # stored masked too


# --------------------------------------------------------------------------- logs


def test_one_sanitiser_escapes_what_does_not_print_and_keeps_json_valid() -> None:
    hostile = "a\x1b[2Jb\rc\nd\u202ee\x9bf\u2028g\U000e0041h ünïcödé"
    assert printable(hostile) == (
        "a\\u001b[2Jb\\u000dc\\u000ad\\u202ee\\u009bf\\u2028g\\udb40\\udc41h ünïcödé"
    )
    line = json_line({"reply": hostile})
    assert line.isprintable() and json.loads(line) == {"reply": hostile}


def test_audit_lines_hold_no_control_characters(tmp_path: Path) -> None:
    log = AuditLog(tmp_path / "audit.jsonl")
    envelope = Envelope("a\u202e@corp.example", ("b@x.example",))
    verdict = Engine.load(RULES).scan(b"Subject: x\r\n\r\nhi\r\n", envelope)
    log.write(audit_record("relay", envelope, "<a\x9b1@x>", 10, verdict, {"reply": "550 \x1b[2J"}))
    log.close()
    [line] = (tmp_path / "audit.jsonl").read_text().splitlines()
    assert line.isprintable()
    assert json.loads(line)["outcome"]["reply"] == "550 \x1b[2J"


def test_log_lines_are_masked_and_escaped_tracebacks_too() -> None:
    formatter = SafeFormatter("%(levelname)s %(message)s")
    line = ("\x1b[2J", "4111 1111 1111 1111\rX")
    record = logging.LogRecord("x", logging.WARNING, __file__, 1, "got %s %s", line, None)
    assert formatter.format(record) == "WARNING got \\u001b[2J **** **** **** 1111\\u000dX"
    try:
        raise ValueError("card 4111 1111 1111 1111\x1b[31m")
    except ValueError:
        record = logging.LogRecord("x", logging.ERROR, __file__, 1, "failed", (), sys.exc_info())
    text = formatter.format(record)
    assert "\x1b" not in text and "4111 1111 1111 1111" not in text
    assert text.splitlines()[-1] == "ValueError: card **** **** **** 1111\\u001b[31m"


def test_relay_log_escapes_command_words_the_client_sent(tmp_path: Path) -> None:
    """aiosmtpd logs an unrecognised command word as it came: through the relay's log format
    ESC and CR arrive escaped and a card number masked."""
    port = free_port()
    write_pack(tmp_path / "rules")
    config = tmp_path / "mailgate.yaml"
    config.write_text(
        f"rules: rules\nquarantine: {{path: q}}\nengine: {{workers: 1}}\n"
        f"relay: {{listen: '127.0.0.1:{port}', outbox: outbox}}\n"
    )
    relay = mailgate_process(
        "relay", "--config", str(config), log=tmp_path / "relay.log", ready=lambda: port_open(port)
    ).start()
    try:
        with connect(port) as client:
            client.send(b"\x1b[2J\rFORGED4111111111111111 x\r\n")
            assert client.getreply()[0] == 500
    finally:
        assert relay.stop() == 0
    log = relay.log_text()
    assert "unrecognised: \\u001b[2J\\u000dFORGED************1111" in log
    assert "\x1b" not in log and "\r" not in log


def test_check_prints_a_senders_file_name_escaped(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`mailgate check` names the attachment a rule hit: a name with terminal escapes (RFC 2231
    lets a sender spell any byte) reaches the terminal escaped, its card number masked."""
    from tests.support import samples

    name = "filename*=utf-8''%1B%5D0%3Bowned%07card%204111111111111111.exe"
    raw = samples.mime_message(
        samples.text_part("See attached.\n"),
        samples.attachment_part(b"MZ" + b"\0" * 200, "x.exe", disposition=f"attachment; {name}"),
    )
    (tmp_path / "m.eml").write_bytes(raw)
    # its stdout is the point: through its entry point in this process
    plain = run_in_process(capsys, "check", "--rules", str(RULES), str(tmp_path / "m.eml"))
    as_json = run_in_process(
        capsys, "check", "--json", "--rules", str(RULES), str(tmp_path / "m.eml")
    )
    assert "\\u001b]0;owned\\u0007card ************1111.exe" in plain.stdout
    for output in (plain.stdout, as_json.stdout):
        assert "\x1b" not in output and "\x07" not in output and card_forms(output) == []
    assert json.loads(as_json.stdout)["action"] == "reject"


class HostileNextHop:
    """A next hop whose banner and EHLO lines carry terminal escape sequences: a real server
    on 127.0.0.1, one thread, every connection closed after QUIT or a 10 s silence."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while not self.stopped.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            with conn:
                conn.settimeout(10)
                self._session(conn.makefile("rwb"))

    @staticmethod
    def _session(stream: Any) -> None:
        stream.write(b"220 mx.example \x1b[2J\x1b]0;owned\x07 ready\r\n")
        stream.flush()
        for line in stream:
            verb = line[:4].upper()
            if verb == b"EHLO":
                stream.write(b"250-mx.example\r\n250 X-\x1b[31mRED\r\n")
            elif verb == b"QUIT":
                stream.write(b"221 bye\r\n")
                stream.flush()
                return
            else:
                stream.write(b"250 ok\r\n")
            stream.flush()

    def stop(self) -> None:
        self.stopped.set()
        self.thread.join(10)
        self.sock.close()


def test_check_next_hop_prints_the_next_hops_words_escaped(tmp_path: Path) -> None:
    next_hop = HostileNextHop()
    try:
        config = quarantine_config(
            tmp_path, next_hop={"host": "127.0.0.1", "port": next_hop.port, "tls": "none"}
        )
        checked = run_mailgate("relay", "--config", str(config), "--check-next-hop", timeout=60)
    finally:
        next_hop.stop()
    assert checked.returncode == 0, checked.stderr
    assert "mx.example \\u001b[2J\\u001b]0;owned\\u0007 ready" in checked.stdout
    assert "X-\\u001b[31mRED" in checked.stdout
    assert "\x1b" not in checked.stdout + checked.stderr


def test_an_address_a_rule_names_as_evidence_is_masked(tmp_path: Path) -> None:
    (tmp_path / "rules.yaml").write_text(
        "rules:\n  - id: from-corp\n    when: [{sender: {domain: [corp.example]}}]\n"
        "    action: quarantine\n"
    )
    envelope = Envelope("4111.1111.1111.1111@corp.example", ("bob@partner.example",))
    verdict = Engine.load(tmp_path).scan(raw_message("Subject: hello"), envelope)
    assert [h.sample for h in verdict.hits] == ["****.****.****.1111@corp.example"]

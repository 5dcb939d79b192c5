"""The review console over HTTP (Starlette's TestClient against the real application, a real
store, real users file, the real engine in real worker processes, and a real SMTP next hop):
every page, role, refusal and header of issue 13."""

from __future__ import annotations

import csv
import io
import json
import os
import re
import signal
import stat
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from starlette.testclient import TestClient

from mailgate.filter import Engine
from mailgate.filter.cli.console import refusal
from mailgate.filter.console import app as app_module
from mailgate.filter.console.security import SignInLimiter
from mailgate.filter.ops.config import load_config, packaged_rules_dir
from mailgate.filter.ops.stores import store_for
from mailgate.filter.store import postgres, quarantine
from mailgate.filter.store.database import Database
from mailgate.filter.store.dburl import parse_database_url
from mailgate.filter.store.fleet import write_audit
from mailgate.filter.store.quarantine import HistoryQuery, LocalQuarantine, QuarantineStore
from tests.support.cli import run_in_process
from tests.support.console import (
    CARD,
    MASKED_CARD,
    PASSWORD,
    add_users,
    card_message,
    console_app,
    console_process,
    form_token,
    hold,
    hostile_html_message,
    sign_in,
    with_pool,
    write_config,
)
from tests.support.net import free_port
from tests.support.postgres import SKIP_REASON, binaries, pg_server_fixture  # noqa: F401
from tests.support.smtp_sink import SmtpSink
from tests.support.waiting import wait_until

pytestmark = pytest.mark.timeout(120)
MAILGATE = Path(sys.executable).with_name("mailgate")
CARD_DIGITS = CARD.replace(" ", "")


class Env:
    def __init__(self, folder: Path) -> None:
        self.sink = SmtpSink().start()
        self.config = write_config(folder, self.sink.port)
        self.store = LocalQuarantine(self.config.quarantine.path, node="gw-test")
        self.engine = Engine.load(packaged_rules_dir())
        add_users(self.config)
        self.app = console_app(self.config, self.store)
        self.clients: list[TestClient] = []

    def client(self, role_user: str | None = None, address: str = "127.0.0.1") -> TestClient:
        client = TestClient(self.app, client=(address, 50000))
        self.clients.append(client)
        if role_user is not None:
            assert sign_in(client, role_user).status_code == 303
        return client

    def hold(self, raw: bytes | None = None, **envelope: Any) -> str:
        return hold(self.store, self.engine, raw or card_message(), **envelope)


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    environment = Env(tmp_path_factory.mktemp("console"))
    with (
        TestClient(environment.app, client=("127.0.0.1", 40000)) as main,
        with_pool(main, environment.config),
    ):
        environment.main = main  # type: ignore[attr-defined]
        yield environment
    environment.sink.stop()


def no_full_card(text: str) -> bool:
    return CARD not in text and CARD_DIGITS not in text


# --- headers and sign-in -------------------------------------------------------------------


def test_every_answer_carries_the_security_headers(env: Env) -> None:
    qid = env.hold()
    client = env.client("adam")
    for path in [
        "/login",
        "/",
        f"/message/{qid}",
        f"/message/{qid}/original",
        "/history",
        "/history.csv",
        "/rules",
        "/try",
        "/static/console.css",
        "/no-such-page",
        "/api/messages",
    ]:
        response = client.get(path, follow_redirects=False)
        csp = response.headers["content-security-policy"]
        assert "default-src 'self'" in csp and "frame-ancestors 'none'" in csp, path
        assert "unsafe-inline" not in csp and "unsafe-eval" not in csp, path
        assert response.headers["x-content-type-options"] == "nosniff", path
        assert response.headers["referrer-policy"] == "no-referrer", path
        if response.headers.get("content-type", "").startswith("text/html"):
            assert "<script" not in response.text.lower(), path
            assert "http://" not in response.text and "https://" not in response.text, path


def test_sign_in_form_cookie_flags_and_audit(env: Env) -> None:
    client = env.client()
    page = client.get("/login").text
    assert re.search(r"<label[^>]*>Username</label>", page)
    assert re.search(r"<label[^>]*>Password</label>", page)
    assert re.search(r"<button[^>]*>Sign in</button>", page)
    assert client.get("/", follow_redirects=False).headers["location"] == "/login"

    wrong = sign_in(client, "rita", "not the password")
    assert wrong.status_code == 401 and "Wrong username or password" in wrong.text
    right = sign_in(client, "rita")
    assert right.status_code == 303
    cookie = right.headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie and "Secure" not in cookie
    assert client.get("/").status_code == 200
    kinds = [(e.kind, e.actor) for e in env.store.history(HistoryQuery()).entries[:2]]
    assert kinds == [("signed_in", "rita"), ("sign_in_failed", "rita")]

    page = client.get("/").text
    out = client.post("/logout", data={"csrf": form_token(page)}, follow_redirects=False)
    assert out.status_code == 303
    assert client.get("/", follow_redirects=False).status_code == 303  # signed out


def test_sign_in_needs_the_form_token(env: Env) -> None:
    client = env.client()
    client.get("/login")
    answer = client.post("/login", data={"username": "rita", "password": PASSWORD})
    assert answer.status_code == 403
    assert "set-cookie" not in answer.headers


def test_cookies_are_secure_over_tls(env: Env, tmp_path: Path) -> None:
    config = write_config(tmp_path, env.sink.port, tls={"cert": "c.pem", "key": "k.pem"})
    add_users(config, {"rita": "reviewer"})
    app = console_app(config, LocalQuarantine(config.quarantine.path))
    client = TestClient(app, base_url="https://testserver")  # a Secure cookie needs https
    assert "Secure" in sign_in(client, "rita").headers["set-cookie"]


def test_failed_sign_ins_are_rate_limited_per_user_and_per_client(env: Env) -> None:
    add_users(env.config, {"victim": "auditor"})
    attacker = env.client(address="192.0.2.7")
    for _ in range(5):
        assert sign_in(attacker, "victim", "guess").status_code == 401
    blocked = sign_in(attacker, "victim")  # the right password, all the same
    assert blocked.status_code == 429 and "too many attempts" in blocked.text.lower()
    # That client is blocked for every user; the user is blocked from every client.
    assert sign_in(attacker, "adam").status_code == 429
    assert sign_in(env.client(address="192.0.2.8"), "victim").status_code == 429
    assert sign_in(env.client(address="192.0.2.9"), "adam").status_code == 303
    failures = env.store.history(HistoryQuery(kind="sign_in_failed", actor="victim"))
    assert failures.total == 5 and failures.entries[0].detail == "192.0.2.7"

    limiter = SignInLimiter(limit=2, window=0.5)
    limiter.failed("u", "c")
    limiter.failed("u", "c")
    assert limiter.blocked("u", "other") and limiter.blocked("other", "c")
    time.sleep(0.6)  # the window passes
    assert not limiter.blocked("u", "c")


def test_sessions_expire(env: Env, tmp_path: Path) -> None:
    config = write_config(tmp_path, env.sink.port, session_timeout="1s")
    add_users(config, {"rita": "reviewer"})
    client = TestClient(console_app(config, LocalQuarantine(config.quarantine.path)))
    assert sign_in(client, "rita").status_code == 303
    assert client.get("/", follow_redirects=False).status_code == 200
    time.sleep(1.2)
    assert client.get("/", follow_redirects=False).headers["location"] == "/login"


# --- held mail -----------------------------------------------------------------------------


@pytest.fixture(params=["local", "postgres"])
def fresh_store(request: pytest.FixtureRequest, tmp_path: Path) -> QuarantineStore:
    """An empty store of node gw-b: a local folder, or a database of its own on the private
    PostgreSQL, opened as `mailgate console` opens it (store_for)."""
    settings: dict[str, Any] = {"quarantine": {"path": str(tmp_path / "q")}, "node": "gw-b"}
    if request.param == "postgres":
        if binaries() is None:
            pytest.skip(SKIP_REASON)
        settings["database"] = request.getfixturevalue("pg_server").create_database()
    (tmp_path / "store.yaml").write_text(json.dumps(settings))
    return store_for(load_config(tmp_path / "store.yaml"))


def test_held_mail_lists_filters_counts_and_pages(env: Env, fresh_store: QuarantineStore) -> None:
    store = fresh_store
    config = env.config
    app = console_app(config, store)
    client = TestClient(app)
    assert sign_in(client, "audrey").status_code == 303
    iban = (
        b"From: carol@example.org\r\nTo: dave@bank.example\r\nSubject: wire\r\n\r\n"
        b"IBAN DE89 3704 0044 0532 0130 00 please\r\n"
    )
    first = hold(
        store, env.engine, iban, mail_from="carol@example.org", rcpt_tos=["d@bank.example"]
    )
    cards = [hold(store, env.engine, card_message(f"order {n}")) for n in range(52)]
    page = client.get("/").text
    assert "53 message(s)" in page
    assert page.count('href="/message/') == 2 * 50  # time and subject link each row
    assert f"/message/{cards[-1]}" in page and f"/message/{first}" not in page  # newest first
    assert re.search(r"card-number[^<]*<b>52</b>", page) and re.search(r"iban[^<]*<b>1</b>", page)
    assert "gw-b" in page and "alice@example.com" in page and "bob@partner.example" in page
    second = client.get("/?page=2").text
    assert f"/message/{first}" in second and "page 2 of 2" in second
    oldest = client.get("/?sort=oldest").text
    assert oldest.index(f"/message/{first}") < oldest.index(f"/message/{cards[0]}")
    for params in [
        "rule=iban",
        "sender=CAROL@example.org",
        "recipient=d@bank.example",
        "domain=bank.example",
        "q=wire",
    ]:
        only = client.get(f"/?{params}").text
        assert "1 message(s)" in only and f"/message/{first}" in only, params
    today = datetime.now(UTC).date()
    assert "0 message(s)" in client.get(f"/?since={today + timedelta(days=1)}").text
    assert "53 message(s)" in client.get(f"/?since={today}&until={today}").text
    store.delete(first, "rita", "spam")
    assert "52 message(s)" in client.get("/").text
    assert "1 message(s)" in client.get("/?state=deleted").text
    assert "53 message(s)" in client.get("/?state=any").text
    # An auditor gets no checkboxes and no bulk buttons.
    assert 'type="checkbox"' not in page and "Release selected" not in page


def test_bulk_release_and_delete_with_one_reason(env: Env) -> None:
    a, b, c = env.hold(), env.hold(), env.hold()
    client = env.client("rita")
    page = client.get("/").text
    assert 'type="checkbox"' in page and "Release selected" in page
    token = form_token(page)
    before = len(env.sink.received)
    answer = client.post(
        "/bulk",
        data={"csrf": token, "action": "release", "reason": "customer confirmed", "id": [a, b]},
    )
    assert answer.status_code == 200 and "release: 2 of 2 done" in answer.text
    assert len(env.sink.wait_for(before + 2)) == before + 2
    gone = client.post(
        "/bulk", data={"csrf": token, "action": "delete", "reason": "duplicate", "id": [c]}
    )
    assert "delete: 1 of 1 done" in gone.text
    assert [env.store.get(q).state for q in (a, b, c)] == ["released", "released", "deleted"]
    assert env.store.get(a).events[-1].reason == "customer confirmed"
    assert env.store.get(c).events[-1].reason == "duplicate"
    no_reason = client.post("/bulk", data={"csrf": token, "action": "delete", "id": [a]})
    assert no_reason.status_code == 400


# --- one message ---------------------------------------------------------------------------


def test_message_page_shows_masked_evidence_headers_text_and_attachments(env: Env) -> None:
    raw = card_message(f"Card {CARD} inside").replace(
        b"Message-ID: <card-1@example.com>", f"X-Note: {CARD}".encode()
    )
    qid = env.hold(raw)
    page = env.client("rita").get(f"/message/{qid}").text
    assert no_full_card(page)
    assert MASKED_CARD in page
    assert "card-number" in page and "enforce" in page and "dlp:credit_card" in page
    assert f"X-Note: {MASKED_CARD}" in page  # headers, masked
    assert f"Please charge card {MASKED_CARD} for the order." in page  # the text as read
    assert "order.csv" in page and "text/csv" in page  # attachment, declared and detected
    assert re.search(r'<label for="reason">Reason</label>', page)
    assert re.search(r">Release</button>", page) and re.search(r">Delete</button>", page)
    assert "gw-test" in page and "alice@example.com" in page


def test_release_from_the_message_page_reaches_the_next_hop_once(env: Env) -> None:
    qid = env.hold()
    client = env.client("rita")
    token = form_token(client.get(f"/message/{qid}").text)
    before = len(env.sink.received)
    url = f"/message/{qid}/release"
    assert client.post(url, data={"csrf": token}).status_code == 400  # a reason is required
    assert client.post(url, data={"reason": "ok"}).status_code == 403  # no CSRF token
    assert client.post(url, data={"reason": "ok", "csrf": "forged"}).status_code == 403
    assert len(env.sink.received) == before and env.store.get(qid).state == "held"

    page = client.post(url, data={"csrf": token, "reason": "approved by finance"})
    assert page.status_code == 200 and str(page.url).endswith(f"/message/{qid}")
    assert re.search(r'id="state"[^>]*>released<', page.text)
    assert "next hop replied: 250" in page.text
    got = env.sink.wait_for(before + 1)[before:]
    assert len(got) == 1 and got[0].rcpt_tos == ("bob@partner.example",)
    assert ">Release</button>" not in page.text
    again = client.post(url, data={"csrf": token, "reason": "twice"})
    assert again.status_code == 200
    time.sleep(0.3)
    assert len(env.sink.received) == before + 1  # exactly once
    entry = env.store.history(HistoryQuery(kind="released", text=qid)).entries[0]
    assert (entry.actor, entry.reason) == ("rita", "approved by finance")


def release_refused(env: Env, qid: str, recipient: str) -> Any:
    """Release `qid` as a reviewer from its page while the next hop refuses `recipient`."""
    env.sink.faults.rcpt = {recipient: "550 5.1.1 sink: no such user"}
    try:
        client = env.client("rita")
        token = form_token(client.get(f"/message/{qid}").text)
        return client.post(f"/message/{qid}/release", data={"csrf": token, "reason": "try"})
    finally:
        env.sink.faults.rcpt = {}


def test_a_refused_release_stays_held_and_says_why(env: Env) -> None:
    qid = env.hold(rcpt_tos=["nobody@partner.example"])
    page = release_refused(env, qid, "nobody@partner.example")
    assert "release failed" in page.text and "no such user" in page.text
    assert env.store.get(qid).state == "held"


def test_auditor_reads_but_may_not_act(env: Env) -> None:
    qid = env.hold()
    client = env.client("audrey")
    page = client.get(f"/message/{qid}").text
    assert MASKED_CARD in page and no_full_card(page)
    assert ">Release</button>" not in page and ">Delete</button>" not in page
    assert 'for="reason"' not in page and "/original" not in page
    token = form_token(page)  # the sign-out form's token: a valid one for this session
    for path, data in [
        (f"/message/{qid}/release", {"csrf": token, "reason": "forged"}),
        (f"/message/{qid}/delete", {"csrf": token, "reason": "forged"}),
        ("/bulk", {"csrf": token, "action": "release", "reason": "x", "id": [qid]}),
        ("/purge", {"csrf": token, "days": "0"}),
    ]:
        assert client.post(path, data=data).status_code == 403, path
    assert client.get(f"/message/{qid}/original").status_code == 403
    assert env.store.get(qid).state == "held"
    assert client.get("/history").status_code == 200
    assert client.get("/history.csv").status_code == 200


def test_admin_views_the_original_unmasked_and_each_view_is_recorded(env: Env) -> None:
    qid = env.hold()
    client = env.client("adam")
    assert "/original" in client.get(f"/message/{qid}").text
    view = client.get(f"/message/{qid}/original")
    assert view.headers["content-type"].startswith("text/plain")
    assert CARD in view.text  # unmasked, for the admin only
    download = client.get(f"/message/{qid}/original?download=1")
    assert "attachment" in download.headers["content-disposition"]
    assert download.content == env.store.raw(qid)
    kinds = [e.kind for e in env.store.history(HistoryQuery(actor="adam", text=qid)).entries]
    assert kinds == ["original_downloaded", "original_viewed"]
    reviewer = env.client("rita")
    assert reviewer.get(f"/message/{qid}/original").status_code == 403


def test_message_content_is_inert_text(env: Env) -> None:
    qid = env.hold(hostile_html_message("http://127.0.0.2:9"))
    page = env.client("rita").get(f"/message/{qid}").text
    assert "<script" not in page.lower() and "<img" not in page.lower()
    assert "&lt;script&gt;" in page and "&lt;img src=" in page  # the markup, as text
    tags = re.findall(r"<[a-z][^>]*>", page.lower())
    assert not [t for t in tags if "src=" in t or "javascript:" in t or " on" in t], tags
    assert no_full_card(page)


# --- masking -------------------------------------------------------------------------------

DOTTED = "4111.1111.1111.1111"  # a card number in an address: only mask_field catches it
MASKED_DOTTED = "****.****.****.1111"
# The Subject's card number split over two RFC 2047 words on two lines.
FOLDED_SUBJECT = "=?utf-8?B?T3JkZXIgNDExMSAxMTEx?=\r\n =?utf-8?B?IDExMTEgMTExMSB0b2RheQ==?="


def test_addresses_subject_and_message_id_are_masked_as_in_the_audit_log(
    env: Env, capsys: pytest.CaptureFixture[str]
) -> None:
    """Sender, recipients, Subject and Message-ID go through mask_field, the audit log's
    masking, on the list, the message page (facts and headers), the API, the history page
    and its CSV: a card number inside an address or a folded, encoded Subject is never
    shown in full."""
    raw = card_message(FOLDED_SUBJECT).replace(
        b"From: Alice <alice@example.com>", f"From: <{DOTTED}@example.com>".encode()
    )
    raw = raw.replace(b"<card-1@example.com>", f"<{DOTTED}@mid.example>".encode())
    refused = f"{DOTTED}@partner.example"
    qid = env.hold(raw, mail_from=f"{DOTTED}@example.com", rcpt_tos=[refused])
    # The next hop's refusal quotes the address: in the notice on the page, the message's
    # history and the console's.
    failed = release_refused(env, qid, refused)
    client = env.client("rita")
    assert "release failed" in failed.text and "no such user" in failed.text
    auth = {"Authorization": f"Bearer {_token(env, capsys, 'masking-api')}"}
    texts = {
        "list": client.get(f"/?q={qid}").text,
        "message": client.get(f"/message/{qid}").text,
        "failed": failed.text,
        "history": client.get(f"/history?q={qid}").text,
        "csv": client.get(f"/history.csv?q={qid}").text,
        "api list": client.get(f"/api/messages?q={qid}", headers=auth).text,
        "api show": client.get(f"/api/messages/{qid}", headers=auth).text,
    }
    for name, text in texts.items():
        assert DOTTED not in text and no_full_card(text), name
    assert f"{MASKED_DOTTED}@example.com" in texts["list"]
    assert f"{MASKED_DOTTED}@partner.example" in texts["list"]
    assert "Order **** **** **** 1111 today" in texts["list"]
    message = texts["message"]
    assert f"&lt;{MASKED_DOTTED}@mid.example&gt;" in message  # the Message-ID, among the facts
    assert f"From: &lt;{MASKED_DOTTED}@example.com&gt;" in message  # the headers
    assert "Subject: Order **** **** **** 1111 today" in message
    assert f"{MASKED_DOTTED}@partner.example" in texts["history"]
    assert f"{MASKED_DOTTED}@partner.example" in texts["csv"]
    shown = json.loads(texts["api show"])
    assert shown["sender"] == f"{MASKED_DOTTED}@example.com"
    assert shown["recipients"] == [f"{MASKED_DOTTED}@partner.example"]
    assert shown["subject"] == "Order **** **** **** 1111 today"
    assert shown["message_id"] == f"<{MASKED_DOTTED}@mid.example>"
    assert json.loads(texts["api list"])["messages"][0]["sender"] == shown["sender"]
    # The store keeps the envelope exact: a release needs it.
    assert env.store.get(qid).sender == f"{DOTTED}@example.com"


def _token(env: Env, capsys: pytest.CaptureFixture[str], name: str) -> str:
    made = console_command(
        capsys, "token", name, "--role", "auditor", "--config", str(env.config.source)
    )
    assert made.returncode == 0, made.stderr
    return made.stdout.strip()


# --- history, rules, try -------------------------------------------------------------------


def test_history_filters_and_csv_are_masked(env: Env) -> None:
    qid = env.hold()
    env.store.delete(qid, "rita", f"=HYPERLINK(card {CARD})")
    client = env.client("audrey")
    page = client.get(f"/history?kind=deleted&q={qid}").text
    assert "1 entry" in page and f"=HYPERLINK(card {MASKED_CARD})" in page
    assert no_full_card(page)
    answer = client.get(f"/history.csv?kind=deleted&q={qid}")
    assert answer.headers["content-type"].startswith("text/csv")
    rows = list(csv.reader(io.StringIO(answer.text)))
    assert rows[0] == ["time", "kind", "actor", "node", "id", "reason", "detail"]
    assert rows[1][1:6] == ["deleted", "rita", "gw-test", qid, f"'=HYPERLINK(card {MASKED_CARD})"]
    assert no_full_card(answer.text)


def test_history_and_text_search_over_both_stores(
    env: Env, fresh_store: QuarantineStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The history (filters, CSV, masked reasons) and a text search past the count limit, the
    same over the fleet's store as over the local one."""
    store = fresh_store
    client = TestClient(console_app(env.config, store))
    assert sign_in(client, "rita").status_code == 303
    kept, gone = (hold(store, env.engine, card_message(f"order {n}")) for n in range(2))
    token = form_token(client.get(f"/message/{gone}").text)
    reason = f"=HYPERLINK(card {CARD})"
    deleted = client.post(f"/message/{gone}/delete", data={"csrf": token, "reason": reason})
    assert deleted.status_code == 200
    page = client.get(f"/history?kind=deleted&actor=rita&q={gone}").text
    assert "1 entry" in page and f"=HYPERLINK(card {MASKED_CARD})" in page
    assert "<td>signed_in</td>" not in page and no_full_card(page)
    assert "<td>signed_in</td>" in client.get("/history?kind=signed_in").text
    rows = list(csv.reader(io.StringIO(client.get(f"/history.csv?q={gone}").text)))
    assert rows[1][1:6] == ["deleted", "rita", "gw-b", gone, f"'=HYPERLINK(card {MASKED_CARD})"]
    assert len(rows) == 2
    assert "0 entries" in client.get("/history?kind=released").text

    for module in (quarantine, postgres, app_module):
        monkeypatch.setattr(module, "TEXT_COUNT_LIMIT", 1)
    more = client.get("/?q=order&state=any").text
    assert "More than 1 messages match this text" in more and "<b>2</b>" not in more
    assert f"/message/{kept}" in more and f"/message/{gone}" in more
    assert "1 message(s)" in client.get(f"/?q={kept[-12:]}").text


def test_admin_purges_and_the_purge_is_in_the_history(env: Env, tmp_path: Path) -> None:
    store = LocalQuarantine(tmp_path / "q")
    hold(store, env.engine, card_message())
    client = TestClient(console_app(env.config, store))
    assert sign_in(client, "adam").status_code == 303
    page = client.get("/history").text
    assert "Purge" in page
    answer = client.post("/purge", data={"csrf": form_token(page), "days": "0"})
    assert "purged 1 message(s)" in answer.text
    assert store.count() == 0
    assert store.history(HistoryQuery(kind="purged")).entries[0].actor == "adam"


def test_rules_page_charts_hits_from_the_audit_log(env: Env, tmp_path: Path) -> None:
    now = datetime.now(UTC)
    lines = []
    for days_ago, rule, version, node in [
        (0, "card-number", "aaa111", "gw1"),
        (0, "card-number", "bbb222", "gw2"),
        (3, "card-number", "aaa111", "gw1"),
        (20, "card-number", "aaa111", "gw1"),  # outside the 14 days
    ]:
        when = (now - timedelta(days=days_ago)).isoformat(timespec="milliseconds")
        record = {"time": when, "action": "quarantine", "rules": [rule], "monitor": []}
        lines.append(json.dumps({**record, "pack_version": version, "node": node}))
    env.config.audit.path.write_text("\n".join(lines) + "\nnot json\n")
    page = env.client("audrey").get("/rules").text
    version = env.app.state.console.pool.engine.version
    assert f'id="pack-version">{version}<' in page
    for rule in env.engine.pack.rules:
        assert f'id="rule-{rule.id}"' in page
    row = page.split('id="rule-card-number"', 1)[1].split("</tr>", 1)[0]
    assert row.count("<rect") == 14
    assert "<title>" + now.date().isoformat() + ": 2</title>" in row
    assert (now - timedelta(days=3)).date().isoformat() + ": 1</title>" in row
    assert "Nodes are on different pack versions" in page and "bbb222" in page


def test_rules_page_charts_the_fleet_from_its_database(
    env: Env, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """With `database`, the charts and counts are every node's, read from the database, not
    from this gateway's audit file (which is left empty here)."""
    if binaries() is None:
        pytest.skip(SKIP_REASON)
    url = request.getfixturevalue("pg_server").create_database()
    config = write_config(tmp_path, env.sink.port, database=url)
    add_users(config, {"audrey": "auditor"})
    store = store_for(config)
    assert isinstance(store, postgres.PostgresQuarantine)
    now = datetime.now(UTC)
    for node, entries in {
        "gw1": [(0, ["card-number"], []), (3, ["card-number"], []), (20, ["card-number"], [])],
        "gw2": [(0, [], ["card-number"]), (0, ["iban"], [])],
    }.items():
        database = Database(parse_database_url(url), node)
        lines, days = [], set()
        for days_ago, rules, monitor in entries:
            when = now - timedelta(days=days_ago)
            stamp = when.isoformat(timespec="milliseconds")
            record = {"time": stamp, "door": "relay", "action": "quarantine", "rules": rules,
                      "monitor": monitor, "pack_version": f"pack-of-{node}"}  # fmt: skip
            lines.append(json.dumps({"k": str(uuid.uuid4()), "t": stamp, "r": record}))
            days.add(when.astimezone(UTC).date())
        assert write_audit(database, lines, days).added == len(lines)
        database.close()
    with TestClient(console_app(config, store)) as client, with_pool(client, config):
        assert sign_in(client, "audrey").status_code == 303
        page = client.get("/rules").text
    row = page.split('id="rule-card-number"', 1)[1].split("</tr>", 1)[0]
    assert "<title>" + now.date().isoformat() + ": 2</title>" in row  # gw1 and gw2 (monitor)
    assert (now - timedelta(days=3)).date().isoformat() + ": 1</title>" in row
    assert row.count("<rect") == 14  # the 20-day-old record is outside the chart
    assert "Nodes are on different pack versions" in page
    assert "pack-of-gw1" in page and "pack-of-gw2" in page


def test_try_a_message_explains_like_check_and_stores_nothing(env: Env) -> None:
    client = env.main  # type: ignore[attr-defined]
    assert sign_in(client, "rita").status_code == 303
    page = client.get("/try").text
    held = env.store.count()
    answer = client.post(
        "/try",
        data={"csrf": form_token(page)},
        files={"message": ("card.eml", card_message(), "message/rfc822")},
    )
    assert answer.status_code == 200
    assert re.search(r'id="verdict">quarantine<', answer.text)
    assert "card.eml: QUARANTINE" in answer.text
    assert "rule card-number (enforce)" in answer.text and MASKED_CARD in answer.text
    assert no_full_card(answer.text)
    assert env.store.count() == held
    assert client.post("/try", files={"message": ("x.eml", b"x", "text/plain")}).status_code == 403


# --- the JSON API --------------------------------------------------------------------------


def mailgate(*args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(MAILGATE), *args], input=stdin, capture_output=True, text=True, timeout=60
    )


def console_command(
    capsys: pytest.CaptureFixture[str], *args: str
) -> subprocess.CompletedProcess[str]:
    """`mailgate console ARGS` through its entry point in this process, where its output and
    status are what is checked (a child spends a second or more importing mailgate)."""
    return run_in_process(capsys, "console", *args)


def test_json_api_with_hashed_tokens(env: Env, capsys: pytest.CaptureFixture[str]) -> None:
    config_file = str(env.config.source)
    made = console_command(capsys, "token", "soar", "--role", "reviewer", "--config", config_file)
    assert made.returncode == 0, made.stderr
    token = made.stdout.strip()
    reader = console_command(capsys, "token", "siem", "--role", "auditor", "--config", config_file)
    read_token = reader.stdout.strip()
    kept = env.config.console.users.read_text()
    assert token not in kept and read_token not in kept  # hashed at rest
    qid = env.hold()
    api = env.client()
    assert api.get("/api/messages").status_code == 401
    auth = {"Authorization": f"Bearer {token}"}
    listing = api.get(f"/api/messages?q={qid}", headers=auth).json()
    assert listing["total"] == 1 and listing["messages"][0]["id"] == qid
    shown = api.get(f"/api/messages/{qid}", headers=auth)
    assert shown.json()["hits"][0]["sample"] == MASKED_CARD and no_full_card(shown.text)
    read_only = {"Authorization": f"Bearer {read_token}"}
    assert api.get(f"/api/messages/{qid}", headers=read_only).status_code == 200
    refused = api.post(f"/api/messages/{qid}/release", headers=read_only, json={"reason": "x"})
    assert refused.status_code == 403
    assert api.post(f"/api/messages/{qid}/release", headers=auth, json={}).status_code == 400
    before = len(env.sink.received)
    done = api.post(f"/api/messages/{qid}/release", headers=auth, json={"reason": "ticket 42"})
    assert done.status_code == 200 and done.json()["state"] == "released"
    assert len(env.sink.wait_for(before + 1)) == before + 1
    assert env.store.get(qid).events[-1].actor == "token:soar"
    bad = {"Authorization": "Bearer mgc_not-a-token"}
    assert api.get("/api/messages", headers=bad).status_code == 401
    deleted = console_command(
        capsys, "token", "siem", "--role", "auditor", "--delete", "--config", config_file
    )
    assert deleted.returncode == 0
    assert api.get("/api/messages", headers=read_only).status_code == 401


# --- users, refusal, the trusted proxy -----------------------------------------------------


def test_adduser_and_deluser(env: Env, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = write_config(tmp_path, env.sink.port)
    config_file = str(config.source)
    added = mailgate(
        "console",
        "adduser",
        "nina",
        "--role",
        "auditor",
        "--config",
        config_file,
        stdin="s3cret-pass\n",
    )
    assert added.returncode == 0, added.stderr
    users = config.console.users
    assert stat.S_IMODE(os.stat(users).st_mode) == 0o600
    assert "$argon2id$" in users.read_text() and "s3cret-pass" not in users.read_text()
    again = mailgate(
        "console",
        "adduser",
        "nina",
        "--role",
        "admin",
        "--config",
        config_file,
        stdin="an0ther-pass\n",
    )
    assert again.returncode == 0 and "updated nina (admin)" in again.stdout
    client = TestClient(console_app(config, LocalQuarantine(config.quarantine.path)))
    assert sign_in(client, "nina", "s3cret-pass").status_code == 401
    assert sign_in(client, "nina", "an0ther-pass").status_code == 303
    assert "nina (admin)" in client.get("/").text
    assert (
        mailgate(
            "console", "adduser", "x", "--role", "admin", "--config", config_file, stdin="short\n"
        ).returncode
        == 2
    )
    # adduser reads the password from a pipe above, as a process; deluser asks nothing
    assert console_command(capsys, "deluser", "nina", "--config", config_file).returncode == 0
    assert "nina" not in users.read_text()
    assert console_command(capsys, "deluser", "nina", "--config", config_file).returncode == 2


def test_refuses_to_listen_off_loopback_without_tls_or_proxy(env: Env, tmp_path: Path) -> None:
    config = write_config(tmp_path, env.sink.port, listen="0.0.0.0:8025")
    answer = mailgate("console", "--config", str(config.source))
    assert answer.returncode == 2
    assert "refusing to start" in answer.stderr and "console.tls" in answer.stderr
    assert refusal(config) is not None
    tls = write_config(tmp_path / "tls", 1, listen="0.0.0.0:8025", tls={"cert": "c", "key": "k"})
    assert refusal(tls) is None
    proxied = write_config(
        tmp_path / "proxy", 1, listen="10.1.1.1:8025", trusted_proxy={"from": ["10.0.0.0/8"]}
    )
    assert refusal(proxied) is None
    assert refusal(write_config(tmp_path / "v6", 1, listen="[::1]:8025")) is None


def test_the_console_process_runs_on_the_service_runner(env: Env, tmp_path: Path) -> None:
    """`mailgate console` as a process: it serves; SIGHUP re-reads console.trusted_proxy (a
    proxy's header is believed from then on) and keeps serving; SIGTERM stops it with 0; a
    port in use stops the start with 2, saying which."""
    import httpx

    port = free_port()
    config = write_config(tmp_path, env.sink.port, listen=f"127.0.0.1:{port}")
    add_users(config, {"pat": "reviewer"})
    url = f"http://127.0.0.1:{port}"
    proxied = {"X-Forwarded-User": "pat"}
    with console_process(config) as process:
        assert httpx.get(f"{url}/login").status_code == 200
        assert httpx.get(f"{url}/", headers=proxied).status_code == 303  # not believed
        write_config(
            tmp_path, env.sink.port, listen=f"127.0.0.1:{port}",
            trusted_proxy={"header": "X-Forwarded-User", "from": ["127.0.0.0/8"]},
        )  # fmt: skip
        assert process.process is not None
        process.process.send_signal(signal.SIGHUP)
        wait_until(
            lambda: httpx.get(f"{url}/", headers=proxied).status_code == 200, 30, "the reload"
        )
        assert "pat (reviewer)" in httpx.get(f"{url}/", headers=proxied).text
        busy = mailgate("console", "--config", str(config.source))
        assert busy.returncode == 2 and f"cannot listen on 127.0.0.1:{port}" in busy.stderr
        assert process.stop() == 0
    assert "stopping on SIGTERM" in config.source.with_name("console.log").read_text()


def test_trusted_proxy_headers_count_only_from_its_networks(env: Env, tmp_path: Path) -> None:
    config = write_config(
        tmp_path,
        env.sink.port,
        trusted_proxy={
            "header": "X-Forwarded-User",
            "role_header": "X-Forwarded-Groups",
            "from": ["10.0.0.0/8"],
        },
    )
    app = console_app(config, env.store)
    headers = {"X-Forwarded-User": "pat", "X-Forwarded-Groups": "staff, reviewer"}
    proxy = TestClient(app, client=("10.2.3.4", 40000))
    page = proxy.get("/", headers=headers)
    assert page.status_code == 200 and "pat (reviewer)" in page.text
    assert "Release selected" in page.text
    elsewhere = TestClient(app, client=("192.0.2.50", 40000))
    assert elsewhere.get("/", headers=headers, follow_redirects=False).status_code == 303
    no_role = proxy.get("/", headers={"X-Forwarded-User": "pat", "X-Forwarded-Groups": "staff"})
    assert no_role.status_code == 403
    qid = env.hold()
    token = form_token(page.text)
    done = proxy.post(
        f"/message/{qid}/delete", data={"csrf": token, "reason": "proxy user"}, headers=headers
    )
    assert done.status_code == 200 and env.store.get(qid).state == "deleted"
    assert env.store.get(qid).events[-1].actor == "pat"

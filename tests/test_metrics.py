"""Metrics and health of a real relay (harness: real worker pool, real sockets, a real next
hop), scraped over HTTP while it runs: the counts the test's own messages must produce."""

from __future__ import annotations

import json

import pytest

from tests.support.net import free_port
from tests.support.samples import message
from tests.support.scrape import get, scrape, value
from tests.support.smtp_client import send
from tests.support.waiting import wait_until

pytestmark = pytest.mark.timeout(120)

# subject -> the action the harness's tiny pack takes
SUBJECTS = {
    "hello": "accept",
    "hello again": "accept",
    "please reject-me": "reject",
    "please quarantine-me": "quarantine",
    "please tag-me": "tag",
    "please tempfail-me": "tempfail",
}


def test_metrics_count_what_the_messages_did(make_relay, sink, pool) -> None:
    port = free_port()
    relay = make_relay(
        relay={"next_hop": {"host": "127.0.0.1", "port": sink.port, "tls": "none"}},
        metrics={"listen": f"127.0.0.1:{port}"},
        audit={"path": "audit.jsonl"},
    )
    assert get(port, "/healthz") == (200, "ok\n")
    wait_until(lambda: get(port, "/readyz")[0] == 200, 30, "the relay to be ready")
    assert get(port, "/nope")[0] == 404

    with relay.client() as client:
        replies = {subject: send(client, message(subject))[0] for subject in SUBJECTS}
    assert replies == {
        "hello": 250,
        "hello again": 250,
        "please reject-me": 550,
        "please quarantine-me": 250,
        "please tag-me": 250,
        "please tempfail-me": 451,
    }

    samples = scrape(port)
    for action in ("accept", "reject", "quarantine", "tag", "tempfail"):
        expected = sum(1 for a in SUBJECTS.values() if a == action)
        assert value(samples, "mailgate_messages_total", door="relay", action=action) == expected
    for rule in ("block-word", "hold-word", "tag-word", "busy-word"):
        assert value(samples, "mailgate_rule_hits_total", rule=rule, mode="enforce") == 1
    assert value(samples, "mailgate_scan_seconds_count", door="relay") == len(SUBJECTS)
    assert value(samples, "mailgate_quarantine_held") == 1
    assert value(samples, "mailgate_pack_info", version=pool.pack_version) == 1
    assert value(samples, "mailgate_next_hop_errors_total", kind="connect") == 0

    # The audit log says the same, one line per message, with what became of each.
    records = [json.loads(line) for line in (relay.config.source.parent / "audit.jsonl").open()]
    assert [r["action"] for r in records] == list(SUBJECTS.values())
    assert all(r["door"] == "relay" and r["pack_version"] == pool.pack_version for r in records)
    [held] = relay.store.list()
    quarantined = records[3]["outcome"]
    assert quarantined["quarantine_id"] == held.id
    assert quarantined["reply"] == f"250 2.0.0 Held for review in quarantine as {held.id}"
    assert records[0]["outcome"]["delivered_to"] == "next_hop"
    assert records[0]["outcome"]["reply"].startswith("250")
    assert records[2]["outcome"]["reply"] == "550 5.7.1 Subject contains a blocked word"
    assert records[2]["queue_id"] and records[2]["client_address"] == "127.0.0.1"


def test_relay_is_not_ready_while_the_next_hop_is_down(make_relay) -> None:
    port = free_port()
    relay = make_relay(
        relay={"next_hop": {"host": "127.0.0.1", "port": free_port(), "tls": "none"}},
        metrics={"listen": f"127.0.0.1:{port}"},
        audit={"path": "audit.jsonl"},
    )
    assert get(port, "/healthz")[0] == 200
    # The startup probe finds nothing listening: counted, and not ready.
    wait_until(
        lambda: value(scrape(port), "mailgate_next_hop_errors_total", kind="connect") >= 1,
        30,
        "the probe's failure to be counted",
    )
    assert get(port, "/readyz") == (503, "not ready\n")
    before = value(scrape(port), "mailgate_next_hop_errors_total", kind="connect")
    with relay.client() as client:
        client.ehlo()
        code, text = client.mail("alice@example.com")
    assert code == 451 and b"unreachable" in text
    after = value(scrape(port), "mailgate_next_hop_errors_total", kind="connect")
    assert after >= before + 1
    assert get(port, "/readyz")[0] == 503

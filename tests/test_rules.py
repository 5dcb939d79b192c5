"""The rule pack format: parsing, lint errors with file and line, and how verdicts combine."""

from __future__ import annotations

import textwrap

import pytest

from mailgate.filter.policy.envelope import Envelope
from mailgate.filter.policy.pack import PackError, PackSource, build_pack
from mailgate.filter.policy.verdict import Action
from mailgate.filter.scan.engine import Engine
from tests.support.samples import message

ENV = Envelope(mail_from="alice@corp.example", rcpt_tos=("bob@partner.example",))


def pack(yaml_text: str, **extra: str) -> PackSource:
    files = {"policy.yaml": textwrap.dedent(yaml_text).encode()}
    files.update({name: text.encode() for name, text in extra.items()})
    return PackSource(files)


def lint_errors(source: PackSource) -> list[str]:
    with pytest.raises(PackError) as info:
        build_pack(source)
    return [str(p) for p in info.value.problems]


FALCON = """
rules:
  - id: merger-codename
    description: Documents of the Falcon merger must not reach the competitor
    mode: enforce
    when:
      - body: {regex: 'FALCON-DOC-\\d{5}'}
      - recipient: {domain: [competitor.example]}
    unless:
      - sender: {domain: [counsel.example.com]}
    action: quarantine
    reason: Falcon merger document addressed to a competitor
"""


def test_contract_example_rule_hits_and_its_exception_cancels() -> None:
    engine = Engine.from_source(pack(FALCON))
    raw = message(body="See FALCON-DOC-12345 attached.\n")
    to_competitor = Envelope("alice@corp.example", ("ceo@sub.competitor.example",))
    verdict = engine.scan(raw, to_competitor)
    assert verdict.action is Action.QUARANTINE
    assert verdict.rules == ["merger-codename"]
    assert verdict.reason == "Falcon merger document addressed to a competitor"
    assert [h.detector for h in verdict.hits] == ["body", "recipient"]
    hit = verdict.hits[0]
    assert "12345" not in hit.sample and hit.sample.endswith("2345")
    assert engine.scan(raw, ENV).action is Action.ACCEPT  # recipient elsewhere
    from_counsel = Envelope("lawyer@counsel.example.com", ("ceo@competitor.example",))
    assert engine.scan(raw, from_counsel).action is Action.ACCEPT  # exception holds
    assert engine.scan(message(body="FALCON-DOC-1234\n"), to_competitor).action is Action.ACCEPT


def test_strongest_action_wins_and_monitor_takes_no_action() -> None:
    engine = Engine.from_source(
        pack("""
        rules:
          - id: tagger
            when: [{subject: {regex: 'x'}}]
            action: tag
            tag: {subject_prefix: '[X] '}
          - id: holder
            when: [{subject: {regex: 'x'}}]
            action: quarantine
          - id: watcher
            mode: monitor
            when: [{subject: {regex: 'x'}}]
            action: reject
            reason: would reject
          - id: blocker
            when: [{subject: {regex: 'block'}}]
            action: reject
            reject: {code: 554, status: 5.7.0}
            reason: blocked
    """)
    )
    verdict = engine.scan(message(subject="x"), ENV)
    assert verdict.action is Action.QUARANTINE
    assert verdict.rules == ["tagger", "holder"]
    assert verdict.monitor == ["watcher"]
    verdict = engine.scan(message(subject="x block"), ENV)
    assert verdict.action is Action.REJECT
    assert (verdict.smtp_code, verdict.smtp_status, verdict.reason) == (554, "5.7.0", "blocked")
    assert engine.scan(message(subject="nothing"), ENV).action is Action.ACCEPT


def test_any_all_not_and_header_conditions() -> None:
    engine = Engine.from_source(
        pack("""
        rules:
          - id: finance-external
            when:
              - header: {name: X-Department, regex: '(?i)^finance'}
              - any:
                  - recipient: {domain: [partner.example]}
                  - recipient: {address: [auditor@else.example]}
              - not: {header: {name: X-Legal-Hold, exists: true}}
            action: tempfail
            reason: later
    """)
    )
    finance = message(extra_headers=[("X-Department", "FINANCE-emea")])
    verdict = engine.scan(finance, ENV)
    assert verdict.action is Action.TEMPFAIL
    assert (verdict.smtp_code, verdict.smtp_status) == (451, "4.7.1")
    held = message(extra_headers=[("X-Department", "finance"), ("X-Legal-Hold", "1")])
    assert engine.scan(held, ENV).action is Action.ACCEPT
    other = Envelope("alice@corp.example", ("x@elsewhere.example",))
    assert engine.scan(finance, other).action is Action.ACCEPT
    auditor = Envelope("alice@corp.example", ("Auditor@Else.Example",))
    assert engine.scan(finance, auditor).action is Action.TEMPFAIL


def test_body_regex_validator_keywords_and_min_count() -> None:
    engine = Engine.from_source(
        pack("""
        rules:
          - id: account-numbers
            when:
              - body: {regex: '\\b\\d{16}\\b', validator: luhn, keywords: [account],
                       proximity: 30, min_count: 2}
            action: quarantine
    """)
    )
    two = "account 4111111111111111 and account 5555555555554444\n"
    assert engine.scan(message(body=two), ENV).action is Action.QUARANTINE
    one = "account 4111111111111111 and 5555555555554445\n"  # second fails Luhn
    assert engine.scan(message(body=one), ENV).action is Action.ACCEPT
    far = "account " + "x" * 60 + " 4111111111111111 5555555555554444\n"
    assert engine.scan(message(body=far), ENV).action is Action.ACCEPT


def test_size_over_and_dlp_min_count() -> None:
    engine = Engine.from_source(
        pack("""
        rules:
          - id: big
            when: [{size_over: 1KB}]
            action: quarantine
          - id: many-cards
            when: [{dlp: {type: credit_card, min_count: 2}}]
            action: reject
    """)
    )
    assert engine.scan(message(body="a" * 2000), ENV).action is Action.QUARANTINE
    assert engine.scan(message(body="a" * 10), ENV).action is Action.ACCEPT
    one = "Card 4111 1111 1111 1111\n"
    assert engine.scan(message(body=one), ENV).action is Action.ACCEPT
    verdict = engine.scan(message(body=one + "Visa 5555-5555-5555-4444\n"), ENV)
    assert verdict.action is Action.REJECT
    assert all("4111 1111 1111 1111" not in h.sample for h in verdict.hits)


def test_yara_conditions_by_rule_tag_and_any() -> None:
    yar = (
        'rule Secret_Marker : secret { meta: owner = "legal" strings: $a = "S3CR3T" condition: $a }'
    )
    engine = Engine.from_source(
        pack(
            """
        rules:
          - id: by-rule
            when: [{yara: {rule: Secret_Marker}}]
            action: quarantine
          - id: by-tag
            when: [{yara: {tag: secret}}]
            action: tag
            tag: {headers: {X-Secret: 'yes'}}
          - id: by-any
            mode: monitor
            when: [{yara: {any: true}}]
            action: reject
    """,
            **{"yara/markers.yar": yar},
        )
    )
    verdict = engine.scan(message(body="the S3CR3T plan\n"), ENV)
    assert verdict.rules == ["by-rule", "by-tag"] and verdict.monitor == ["by-any"]
    hit = next(h for h in verdict.hits if h.rule == "by-rule")
    assert hit.detail["rule"] == "Secret_Marker" and hit.detail["meta"] == {"owner": "legal"}
    assert engine.scan(message(body="nothing\n"), ENV).action is Action.ACCEPT


@pytest.mark.parametrize(
    ("yaml_text", "expected"),
    [
        ("rules:\n  - id: a\n    when: [{subject: {regex: 'x'}}\n", "policy.yaml:4: YAML syntax"),
        (
            "rules:\n  - id: a\n    when:\n      - bdy: {regex: x}\n    action: reject\n",
            "policy.yaml:4: [a] unknown condition 'bdy'",
        ),
        (
            "rules:\n  - id: a\n    when:\n      - body: {regex: '(unclosed'}\n"
            "    action: reject\n",
            "policy.yaml:4: [a] body.regex: bad regex",
        ),
        (
            "rules:\n  - id: a\n    when:\n      - body: {regex: '^(\\d+)+$'}\n"
            "    action: reject\n",
            "policy.yaml:4: [a] body.regex: regex '^(\\\\d+)+$' refused",
        ),
        (
            "rules:\n  - id: a\n    when: [{size_over: 1}]\n    action: reject\n"
            "  - id: a\n    when: [{size_over: 2}]\n    action: reject\n",
            "policy.yaml:5: [a] duplicate rule id",
        ),
        (
            "rules:\n  - id: a\n    when: [{size_over: 1}]\n    action: destroy\n",
            "policy.yaml:4: [a] action must be one of",
        ),
        (
            "rules:\n  - id: Bad_Id\n    when: [{size_over: 1}]\n    action: reject\n",
            "policy.yaml:2: [Bad_Id] rule 'id' is required",
        ),
        (
            "rules:\n  - id: a\n    when: [{dlp: passport}]\n    action: reject\n",
            "policy.yaml:3: [a] dlp: unknown detector 'passport'",
        ),
        (
            "rules:\n  - id: a\n    when: [{size_over: 1}]\n    action: tag\n"
            "    tag: {add_recipients: [not-an-address]}\n",
            "policy.yaml:5: [a] tag: add_recipients: 'not-an-address' is not an address",
        ),
        (
            "rules:\n  - id: a\n    when: [{yara: {rule: Nope}}]\n    action: reject\n",
            "policy.yaml:3: [a] yara: no YARA rule named 'Nope'",
        ),
    ],
)
def test_lint_names_file_line_and_rule(yaml_text: str, expected: str) -> None:
    errors = lint_errors(PackSource({"policy.yaml": yaml_text.encode()}))
    assert any(e.startswith(expected) for e in errors), errors


def test_tag_without_options_names_its_rules_in_one_header() -> None:
    """`action: tag` alone (or with `tag: {}`) is visible: X-Mailgate-Rules names every such
    rule that hit, once, beside what tag rules with options add."""
    from mailgate.filter.policy.actions import plan_for

    engine = Engine.from_source(
        pack("""
        rules:
          - id: big-mail
            when: [{size_over: 10}]
            action: tag
          - id: finance
            when: [{subject: {regex: 'invoice'}}]
            action: tag
            tag: {}
          - id: labelled
            when: [{subject: {regex: 'invoice'}}]
            action: tag
            tag: {headers: {X-Label: 'finance'}}
    """)
    )
    verdict = engine.scan(message(subject="invoice 42"), ENV)
    assert verdict.action is Action.TAG
    out = plan_for(verdict).apply(message(subject="invoice 42"))
    assert out.startswith(b"X-Label: finance\r\nX-Mailgate-Rules: big-mail, finance\r\n")
    assert out.count(b"X-Mailgate-Rules") == 1
    assert b"Subject: invoice 42\r\n" in out
    assert plan_for(engine.scan(message(subject="hello"), ENV)).add_headers == [
        ("X-Mailgate-Rules", "big-mail")
    ]


def test_yara_syntax_error_names_file_and_line() -> None:
    broken = "rule ok { condition: true }\n\nrule broken {\n  strings: $a = \n  condition: $a\n}\n"
    errors = lint_errors(pack("rules: []\n", **{"yara/broken.yar": broken}))
    assert any(e.startswith("yara/broken.yar:") and "YARA" in e for e in errors), errors


def test_pack_version_changes_with_content() -> None:
    a = pack("rules: []\n")
    b = pack("rules: []\n# edited\n")
    assert a.version != b.version and a.version == pack("rules: []\n").version
    assert Engine.from_source(a).scan(message(), ENV).pack_version == a.version


def test_content_conditions_read_the_subject_too() -> None:
    engine = Engine.from_source(
        pack("""
        rules:
          - id: cards
            when: [{dlp: credit_card}]
            action: quarantine
          - id: codename
            when: [{body: {regex: 'FALCON-\\d+'}}]
            action: tag
            tag: {headers: {X-Codename: 'yes'}}
    """)
    )
    verdict = engine.scan(message(subject="Card 4111 1111 1111 1111 for FALCON-7"), ENV)
    assert verdict.rules == ["cards", "codename"]
    assert {h.where for h in verdict.hits} == {"subject"}


def test_a_message_judged_unscannable_is_not_read_again() -> None:
    """After an overrun the doors' own process judges the message: only envelope, headers,
    size and `unscannable` rules, never a detector or YARA over its content."""
    engine = Engine.from_source(
        pack(
            """
        rules:
          - id: held
            when: [{unscannable: [timeout]}]
            action: quarantine
          - id: cards
            when: [{dlp: credit_card}]
            action: reject
          - id: marker
            when: [{yara: {any: true}}]
            action: reject
          - id: subject
            when: [{subject: {regex: 'slow'}}]
            action: tag
            tag: {headers: {X-Slow: 'yes'}}
    """,
            **{"yara/m.yar": 'rule M { strings: $a = "S3CR3T" condition: $a }'},
        )
    )
    raw = message(subject="slow one", body="S3CR3T card 4111 1111 1111 1111\n")
    assert engine.scan(raw, ENV).action is Action.REJECT
    verdict = engine.judge_unscannable(raw, ENV, "timeout")
    assert verdict.rules == ["held", "subject"] and verdict.action is Action.QUARANTINE

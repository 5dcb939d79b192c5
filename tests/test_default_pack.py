"""The shipped rule pack against golden messages, and the check / rules commands around it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mailgate.filter.scan.engine import Engine, envelope_from_headers
from mailgate.filter.scan.examples import run_examples
from tests.support.build_examples import examples
from tests.support.cli import run_in_process

ROOT = Path(__file__).resolve().parent.parent
RULES = ROOT / "rules"

# What the default pack must decide for every golden message (README: The default rule pack).
EXPECTED = {
    "card-plain.eml": "quarantine",
    "card-html-split.eml": "quarantine",
    "card-base64.eml": "quarantine",
    "card-csv-attachment.eml": "quarantine",
    "card-csv-gz-attachment.eml": "quarantine",
    "card-html-hidden-digits.eml": "quarantine",
    "card-html-comment.eml": "quarantine",
    "card-pdf-attachment.eml": "quarantine",
    "card-outlook-msg.eml": "quarantine",
    "card-rtf-attachment.eml": "quarantine",
    "card-odt-attachment.eml": "quarantine",
    "exe-in-outlook-msg.eml": "reject",
    "encrypted-pdf.eml": "quarantine",
    "message-partial.eml": "quarantine",
    "card-docx-attachment.eml": "quarantine",
    "card-attached-message.eml": "quarantine",
    "card-html-attachment.eml": "quarantine",
    # made by other software (tests/data/foreign/README.md)
    "card-pdf-libreoffice.eml": "quarantine",
    "card-docx-libreoffice.eml": "quarantine",
    "card-odt-libreoffice.eml": "quarantine",
    "card-xlsx-libreoffice.eml": "quarantine",
    "card-in-zip-infozip.eml": "quarantine",
    "card-in-7z-p7zip.eml": "quarantine",
    "exe-in-zip-infozip.eml": "reject",
    "exe-in-7z-p7zip.eml": "reject",
    "exe-in-pdf-qpdf.eml": "reject",
    "outlook-msg-with-pdf.eml": "accept",
    "outlook-msg-with-attachments.eml": "accept",
    "numbers-not-cards.eml": "accept",
    "plain-business.eml": "accept",
    "invoice.eml": "accept",
    "newsletter.eml": "accept",
    "calendar-invite.eml": "accept",
    "inline-image.eml": "accept",
    "iban.eml": "quarantine",
    "rf-reference.eml": "accept",
    "ssn.eml": "quarantine",
    "ssn-no-context.eml": "accept",
    "eicar-attachment.eml": "reject",
    "eicar-nested-zip.eml": "reject",
    "exe-attachment.eml": "reject",
    "exe-double-extension.eml": "reject",
    "exe-in-zip.eml": "reject",
    "exe-in-tar-gz.eml": "reject",
    "exe-embedded-in-pdf.eml": "reject",
    "pe-renamed.eml": "reject",
    "exe-rfc2231-name.eml": "reject",
    "encrypted-zip-with-exe.eml": "reject",
    "encrypted-zip.eml": "quarantine",
    "mz-text-file.eml": "accept",
    "pdf-attachment.eml": "accept",
    "docm-macros.eml": "quarantine",
    "macros-renamed-docx.eml": "quarantine",
    "confidential.eml": "tag",
    "too-deep.eml": "quarantine",
    "duplicate-subject.eml": "quarantine",
    "password-zip-card.eml": "quarantine",
    "password-7z-exe.eml": "reject",
    "password-in-subject.eml": "accept",
    "wrong-password-zip.eml": "quarantine",
    "multipart-no-boundary-card.eml": "quarantine",
    "eicar-too-deep.eml": "reject",
}


@pytest.fixture(scope="module")
def engine() -> Engine:
    return Engine.load(RULES)


def test_every_golden_example_is_committed_and_covered() -> None:
    committed = {p.name for p in (RULES / "examples").glob("*.eml")}
    assert committed == set(examples()) == set(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_default_pack_verdict(engine: Engine, name: str) -> None:
    raw = (RULES / "examples" / name).read_bytes()
    verdict = engine.scan(raw, envelope_from_headers(raw))
    assert str(verdict.action) == EXPECTED[name], (verdict.rules, verdict.hits)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_freshly_built_example_gets_the_same_verdict(engine: Engine, name: str) -> None:
    """The builders are the source of the committed files: the same verdict from both."""
    raw = examples()[name]
    assert str(engine.scan(raw, envelope_from_headers(raw)).action) == EXPECTED[name]


def test_every_rule_has_hit_and_miss_examples_and_they_pass(engine: Engine) -> None:
    for rule in engine.pack.rules:
        assert rule.examples["hit"] and rule.examples["miss"], rule.id
    ran, failures = run_examples(engine, RULES)
    assert ran >= 2 * len(engine.pack.rules)
    assert failures == []


def test_tag_plan_for_confidential(engine: Engine) -> None:
    from mailgate.filter.policy.actions import plan_for

    raw = (RULES / "examples" / "confidential.eml").read_bytes()
    out = plan_for(engine.scan(raw, envelope_from_headers(raw))).apply(raw)
    assert b"Subject: [CONFIDENTIAL] Board minutes\r\n" in out
    assert out.startswith(b"X-Classification-Checked: yes\r\n")
    assert out.count(b"Subject:") == 1


def test_check_json_masks_every_sensitive_value(capsys: pytest.CaptureFixture[str]) -> None:
    files = sorted(str(p) for p in (RULES / "examples").glob("*.eml"))
    result = run_in_process(capsys, "check", "--json", "--rules", str(RULES), *files)
    assert result.returncode == 0, result.stderr
    records = [json.loads(line) for line in result.stdout.splitlines()]
    assert len(records) == len(files)
    for record in records:
        assert {"file", "action", "rules", "monitor", "hits"} <= set(record)
        assert record["action"] == EXPECTED[Path(record["file"]).name]
    for secret in (
        "4111 1111 1111 1111",
        "4111111111111111",
        "5555-5555-5555-4444",
        "DE89 3704 0044 0532 0130 00",
        "536-90-4187",
        "Harbour-7731",  # the passwords that opened examples: evidence never names them
        "Sommer2026!",
    ):
        assert secret not in result.stdout
    samples = [h["sample"] for r in records for h in r["hits"] if h["detector"].startswith("dlp")]
    assert samples and all("*" in s for s in samples)


def test_check_explains_in_plain_text(capsys: pytest.CaptureFixture[str]) -> None:
    result = run_in_process(
        capsys, "check", "--rules", str(RULES), str(RULES / "examples" / "card-plain.eml")
    )
    assert result.returncode == 0
    assert "QUARANTINE" in result.stdout and "card-number" in result.stdout
    assert "**** **** **** 1111" in result.stdout
    assert "4111 1111 1111 1111" not in result.stdout


def test_check_missing_file_and_broken_pack_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    result = run_in_process(capsys, "check", "--rules", str(RULES), str(tmp_path / "nope.eml"))
    assert result.returncode == 2 and "nope.eml" in result.stderr
    (tmp_path / "bad.yaml").write_text(
        "rules:\n  - id: x\n    when: [{nope: 1}]\n    action: reject\n"
    )
    eml = RULES / "examples" / "plain-business.eml"
    result = run_in_process(capsys, "check", "--rules", str(tmp_path), str(eml))
    assert result.returncode == 2 and "bad.yaml:3" in result.stderr


def test_lint_and_test_commands(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run_in_process(capsys, "rules", "lint", "--rules", str(RULES)).returncode == 0
    assert run_in_process(capsys, "rules", "test", "--rules", str(RULES)).returncode == 0
    (tmp_path / "p.yaml").write_text(
        "rules:\n  - id: dup\n    when: [{size_over: 1}]\n    action: reject\n"
        "  - id: dup\n    when: [{size_over: 2}]\n    action: reject\n"
        "  - id: slow\n    when: [{subject: {regex: '(a+)+$'}}]\n    action: reject\n"
    )
    lint = run_in_process(capsys, "rules", "lint", "--rules", str(tmp_path))
    assert lint.returncode == 1
    assert "p.yaml:5: [dup] duplicate rule id" in lint.stdout
    assert "p.yaml:9: [slow] subject.regex" in lint.stdout
    (tmp_path / "p.yaml").write_text(
        "rules:\n  - id: big\n    when: [{size_over: 1MB}]\n    action: reject\n"
        "    examples: {hit: [small.eml], miss: [small.eml]}\n"
    )
    (tmp_path / "small.eml").write_bytes(b"Subject: hi\r\n\r\nsmall\r\n")
    test = run_in_process(capsys, "rules", "test", "--rules", str(tmp_path))
    assert test.returncode == 1
    assert "[big]" in test.stdout and "small.eml: expected hit" in test.stdout
    assert "'size_over: 1MB' did not hold" in test.stdout
    assert "1 of 2 examples passed" in test.stdout


def test_attachment_evidence_says_what_held(engine: Engine) -> None:
    """An executable caught by name and by content gives two reasons, not one line twice."""
    raw = (RULES / "examples" / "exe-attachment.eml").read_bytes()
    verdict = engine.scan(raw, envelope_from_headers(raw))
    samples = {h.sample for h in verdict.hits if h.rule == "executable-attachment"}
    assert samples == {"extension exe", "content application/vnd.microsoft.portable-executable"}

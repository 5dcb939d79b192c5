"""Which rule pack a command judges with when none is named: one choice (the configuration's
`rules`, default ./rules when that folder exists, else the shipped pack) for check, lint,
test, the relay and the milter, so `check` explains what the relay does in the same place."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mailgate.filter.cli.check import rules_dir
from mailgate.filter.cli.main import build_parser
from mailgate.filter.ops.config import load_config, packaged_rules_dir
from mailgate.filter.policy.pack import PackSource
from tests.support.cli import run_in_process, run_mailgate

POLICY = """\
rules:
  - id: secret-marker
    when: [{body: {regex: 'S3CR3T'}}]
    action: quarantine
"""
MESSAGE = b"From: a@corp.example\r\nTo: b@partner.example\r\nSubject: x\r\n\r\nS3CR3T\r\n"


def check_choice(*args: str) -> Path | None:
    return rules_dir(build_parser().parse_args(["check", *args, "message.eml"]))


def test_an_empty_rules_folder_is_chosen_by_check_and_relay_alike(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "rules").mkdir()
    (tmp_path / "message.eml").write_bytes(MESSAGE)
    monkeypatch.chdir(tmp_path)
    assert check_choice() == load_config(None).rules == tmp_path / "rules"
    # Neither judges with the shipped pack instead: both say the folder holds no rules.
    # check in this process (its output is the point); the relay as a process of its own
    check = run_in_process(capsys, "check", "message.eml")
    relay = run_mailgate("relay", cwd=tmp_path)
    for result in (check, relay):
        assert result.returncode == 2, result.stderr
        assert f"{tmp_path / 'rules'}: no rule files (*.yaml) found" in result.stderr


def test_a_real_rules_folder_is_chosen_by_check_and_relay_alike(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "rules").mkdir()
    (tmp_path / "rules" / "policy.yaml").write_text(POLICY)
    (tmp_path / "message.eml").write_bytes(MESSAGE)
    monkeypatch.chdir(tmp_path)
    assert check_choice() == load_config(None).rules == tmp_path / "rules"
    result = run_in_process(capsys, "check", "--json", "message.eml")
    record = json.loads(result.stdout)
    assert record["action"] == "quarantine" and record["rules"] == ["secret-marker"]
    assert record["pack_version"] == PackSource.read(tmp_path / "rules").version


def test_check_follows_the_configuration_the_relay_reads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # ./rules here, and a deployment elsewhere whose mailgate.yaml names no pack: the relay
    # with that file judges with the folder beside it, and so does check given the same file.
    (tmp_path / "rules").mkdir()
    (tmp_path / "rules" / "policy.yaml").write_text("rules: []\n")
    deployment = tmp_path / "etc"
    (deployment / "rules").mkdir(parents=True)
    (deployment / "rules" / "policy.yaml").write_text(POLICY)
    (deployment / "mailgate.yaml").write_text("relay: {max_recipients: 10}\n")
    (tmp_path / "message.eml").write_bytes(MESSAGE)
    monkeypatch.chdir(tmp_path)
    config = str(deployment / "mailgate.yaml")
    assert check_choice("--config", config) == load_config(Path(config)).rules
    assert load_config(Path(config)).rules == deployment / "rules"
    result = run_in_process(capsys, "check", "--json", "--config", config, "message.eml")
    assert json.loads(result.stdout)["rules"] == ["secret-marker"]
    # Without a configuration file and without ./rules: the shipped pack, for every command.
    empty = tmp_path / "empty"
    empty.mkdir()
    monkeypatch.chdir(empty)
    assert check_choice() == load_config(None).rules == packaged_rules_dir()


def test_a_broken_configuration_stops_check_with_its_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "mailgate.yaml").write_text("relay:\n  max_recipients: many\n")
    (tmp_path / "message.eml").write_bytes(MESSAGE)
    monkeypatch.chdir(tmp_path)
    result = run_in_process(capsys, "check", "message.eml")
    assert result.returncode == 2
    assert "mailgate.yaml: line 2: relay.max_recipients" in result.stderr

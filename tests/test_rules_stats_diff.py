"""`mailgate rules stats` over audit records written from real verdicts, and `mailgate rules
diff` replaying .eml folders and a real quarantine through two packs."""

from __future__ import annotations

import io
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from mailgate.filter.ops.audit import audit_record
from mailgate.filter.scan.engine import Engine, envelope_from_headers
from mailgate.filter.store.quarantine import LocalQuarantine
from tests.support.cli import run_in_process
from tests.support.packs import subject_rule, write_pack
from tests.support.samples import message

WATCH_WORD = subject_rule("watch-word", "watch-me", "reject", "mode: monitor")
PACK = (
    "rules:\n"
    + subject_rule("block-word", "reject-me", "reject")
    + subject_rule("hold-word", "quarantine-me", "quarantine")
    + WATCH_WORD
)
# Reviewed change: block-word only holds now, hold-word is gone, tag-word is new.
NEW_PACK = (
    "rules:\n"
    + subject_rule("block-word", "reject-me", "quarantine")
    + WATCH_WORD
    + subject_rule("tag-word", "tag-me", "tag", "tag: {subject_prefix: '[T] '}")
)


@pytest.fixture
def packs(tmp_path: Path) -> tuple[Path, Path]:
    return write_pack(tmp_path / "old", PACK), write_pack(tmp_path / "new", NEW_PACK)


# ------------------------------------------------------------------------------ stats


def audit_lines(engine: Engine, subjects: list[str], with_actions: bool = True) -> list[str]:
    actions = {r.id: str(r.action) for r in engine.pack.rules} if with_actions else None
    lines = []
    for subject in subjects:
        raw = message(subject)
        envelope = envelope_from_headers(raw, door="relay")
        verdict = engine.scan(raw, envelope)
        record = audit_record("relay", envelope, "", len(raw), verdict, {}, actions)
        lines.append(json.dumps(record))
    return lines


def test_stats_counts_hits_per_rule_and_mode_and_what_monitor_would_change(
    tmp_path: Path, packs: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    engine = Engine.load(packs[0])
    recent = audit_lines(engine, ["watch-me", "watch-me reject-me", "reject-me", "hello"])
    [old] = audit_lines(engine, ["watch-me quarantine-me"])
    old_record = json.loads(old)
    old_record["time"] = (datetime.now(UTC) - timedelta(days=10)).isoformat()
    log = tmp_path / "audit.jsonl"
    log.write_text(
        "\n".join(
            [
                json.dumps(old_record),
                "INFO mailgate.relay: listening on 127.0.0.1:2525",  # not an audit record
                *recent[:2],
                f"Nov 27 10:00:01 mx mailgate[311]: {recent[2]}",  # journald's prefix
                recent[3],
                "{damaged",
            ]
        )
        + "\n"
    )

    result = run_in_process(
        capsys, "rules", "stats", "--audit", str(log), "--since", "1d", "--json"
    )
    assert result.returncode == 0
    stats = json.loads(result.stdout)
    assert stats["messages"] == 4 and stats["skipped"] == 2
    rows = {(r["rule"], r["mode"]): r for r in stats["rules"]}
    assert set(rows) == {("block-word", "enforce"), ("watch-word", "monitor")}
    assert rows["block-word", "enforce"]["messages"] == 2
    watch = rows["watch-word", "monitor"]
    # Enforcing watch-word would have turned the plain "watch-me" accept into a reject; the
    # other message it hit was rejected anyway.
    assert (watch["messages"], watch["action"], watch["would_change"]) == (2, "reject", 1)

    result = run_in_process(capsys, "rules", "stats", "--audit", str(log), "--json")
    rows = {(r["rule"], r["mode"]): r for r in json.loads(result.stdout)["rules"]}
    assert rows["watch-word", "monitor"]["messages"] == 3
    assert rows["watch-word", "monitor"]["would_change"] == 2  # quarantine -> reject too
    assert rows["hold-word", "enforce"]["messages"] == 1

    result = run_in_process(capsys, "rules", "stats", "--audit", str(log), "--since", "1d")
    assert result.returncode == 0
    lines = result.stdout.splitlines()
    assert lines[0].startswith("4 messages from ") and "2 other lines skipped" in lines[0]
    assert lines[1].split() == ["RULE", "MODE", "MESSAGES", "ACTION", "WOULD", "CHANGE"]
    assert lines[2].split() == ["block-word", "enforce", "2", "reject", "-"]
    assert lines[3].split() == ["watch-word", "monitor", "2", "reject", "1"]


def test_stats_reads_stdin_and_takes_actions_from_a_pack(
    packs: tuple[Path, Path], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    lines = audit_lines(Engine.load(packs[0]), ["watch-me", "hello"], with_actions=False)
    monkeypatch.setattr("sys.stdin", io.StringIO("\n".join(lines) + "\n"))
    result = run_in_process(capsys, "rules", "stats", "--audit", "-", "--json")
    [row] = json.loads(result.stdout)["rules"]
    assert result.returncode == 0 and (row["action"], row["would_change"]) == ("", 0)

    monkeypatch.setattr("sys.stdin", io.StringIO("\n".join(lines) + "\n"))
    result = run_in_process(
        capsys, "rules", "stats", "--audit", "-", "--rules", str(packs[0]), "--json"
    )
    [row] = json.loads(result.stdout)["rules"]
    assert (row["rule"], row["action"], row["would_change"]) == ("watch-word", "reject", 1)


def test_stats_bad_arguments(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run_in_process(capsys, "rules", "stats", "--since", "yesterday-ish").returncode == 2
    result = run_in_process(capsys, "rules", "stats", "--audit", str(tmp_path / "missing.jsonl"))
    assert result.returncode == 2 and "cannot read" in result.stderr


# ------------------------------------------------------------------------------- diff


def test_diff_prints_every_changed_verdict_with_the_rules_responsible(
    tmp_path: Path, packs: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    old, new = packs
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for name in ("reject-me", "quarantine-me", "tag-me", "hello", "watch-me"):
        (corpus / f"{name}.eml").write_bytes(message(name))
    (corpus / "notes.txt").write_text("not a message")
    single = tmp_path / "single.eml"
    single.write_bytes(message("another reject-me"))

    result = run_in_process(capsys, "rules", "diff", str(old), str(new), str(corpus), str(single))
    assert result.returncode == 1
    assert f"{corpus}/reject-me.eml: reject -> quarantine" in result.stdout
    assert (
        "    + block-word (enforce, quarantine)\n    - block-word (enforce, reject)"
        in result.stdout
    )
    assert f"{corpus}/quarantine-me.eml: quarantine -> accept\n    - hold-word" in result.stdout
    assert f"{corpus}/tag-me.eml: accept -> tag\n    + tag-word (enforce, tag)" in result.stdout
    assert f"{single}: reject -> quarantine" in result.stdout
    assert "hello.eml" not in result.stdout and "watch-me.eml" not in result.stdout
    assert result.stdout.splitlines()[-1].startswith("4 of 6 verdicts change")

    result = run_in_process(capsys, "rules", "diff", str(old), str(new), str(corpus), "--json")
    diff = json.loads(result.stdout)
    assert result.returncode == 1 and diff["messages"] == 5
    changed = {Path(c["message"]).name: c for c in diff["changed"]}
    assert set(changed) == {"reject-me.eml", "quarantine-me.eml", "tag-me.eml"}
    assert changed["tag-me.eml"]["new"] == {"action": "tag", "rules": ["tag-word"], "monitor": []}

    result = run_in_process(capsys, "rules", "diff", str(old), str(old), str(corpus))
    assert result.returncode == 0 and result.stdout.splitlines()[-1].startswith(
        "0 of 5 verdicts change"
    )


def test_diff_replays_the_quarantine_with_its_envelopes(
    tmp_path: Path, packs: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    old, new = packs
    store = LocalQuarantine(tmp_path / "quarantine")
    raw = message("quarantine-me")
    envelope = envelope_from_headers(raw, door="relay")
    qid = store.put(raw, envelope, Engine.load(old).scan(raw, envelope), "quarantine-me")
    result = run_in_process(
        capsys, "rules", "diff", str(old), str(new), "--quarantine", str(store.path)
    )
    assert result.returncode == 1
    assert f"quarantine:{qid}: quarantine -> accept" in result.stdout


def test_diff_replays_the_configured_quarantine(
    tmp_path: Path, packs: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    """`--quarantine` without a folder: the store the configuration names (the fleet's, with
    `database`), opened as every other command opens it."""
    old, new = packs
    store = LocalQuarantine(tmp_path / "held")
    raw = message("quarantine-me")
    envelope = envelope_from_headers(raw, door="relay")
    qid = store.put(raw, envelope, Engine.load(old).scan(raw, envelope), "quarantine-me")
    config = tmp_path / "mailgate.yaml"
    config.write_text(f"quarantine:\n  path: {tmp_path / 'held'}\n")
    result = run_in_process(
        capsys, "rules", "diff", str(old), str(new), "--quarantine", "--config", str(config)
    )
    assert result.returncode == 1
    assert f"quarantine:{qid}: quarantine -> accept" in result.stdout


def test_diff_refuses_a_broken_pack_or_a_missing_corpus(
    tmp_path: Path, packs: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    old, _ = packs
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "rules.yaml").write_text("rules:\n  - id: x\n    when: [{nope: 1}]\n")
    result = run_in_process(capsys, "rules", "diff", str(old), str(broken), str(tmp_path))
    assert result.returncode == 2 and "rules.yaml:3" in result.stderr
    result = run_in_process(capsys, "rules", "diff", str(old), str(old), str(tmp_path / "nope"))
    assert result.returncode == 2 and "nope" in result.stderr

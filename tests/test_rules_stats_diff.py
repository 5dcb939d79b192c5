"""`mailgate rules stats` over audit records written from real verdicts, and `mailgate rules
diff` replaying .eml folders and a real quarantine through two packs."""

from __future__ import annotations

import io
import json
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from mailgate.filter.cli.main import build_parser
from mailgate.filter.ops.audit import audit_record
from mailgate.filter.scan.engine import Engine, envelope_from_headers
from mailgate.filter.store.quarantine import LocalQuarantine

PACK = """\
rules:
  - id: block-word
    when: [{subject: {regex: '(?i)reject-me'}}]
    action: reject
  - id: hold-word
    when: [{subject: {regex: '(?i)quarantine-me'}}]
    action: quarantine
  - id: watch-word
    mode: monitor
    when: [{subject: {regex: '(?i)watch-me'}}]
    action: reject
"""
# Reviewed change: block-word only holds now, hold-word is gone, tag-word is new.
NEW_PACK = """\
rules:
  - id: block-word
    when: [{subject: {regex: '(?i)reject-me'}}]
    action: quarantine
  - id: watch-word
    mode: monitor
    when: [{subject: {regex: '(?i)watch-me'}}]
    action: reject
  - id: tag-word
    when: [{subject: {regex: '(?i)tag-me'}}]
    action: tag
    tag: {subject_prefix: '[T] '}
"""


def message(subject: str) -> bytes:
    return (
        f"From: <alice@example.com>\r\nTo: <bob@example.org>\r\nSubject: {subject}\r\n"
        f"Message-ID: <{subject.replace(' ', '.')}@example.com>\r\n\r\nHello.\r\n"
    ).encode()


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    """Exit status and stdout of one command; its stderr stays in `capsys.readouterr().err`."""
    args = build_parser().parse_args(list(argv))
    capsys.readouterr()
    code = args.func(args)
    out, err = capsys.readouterr()
    print(err, end="", file=sys.stderr)
    return code, out


@pytest.fixture
def packs(tmp_path: Path) -> tuple[Path, Path]:
    old, new = tmp_path / "old", tmp_path / "new"
    old.mkdir()
    new.mkdir()
    (old / "rules.yaml").write_text(PACK)
    (new / "rules.yaml").write_text(NEW_PACK)
    return old, new


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

    code, out = run(capsys, "rules", "stats", "--audit", str(log), "--since", "1d", "--json")
    assert code == 0
    stats = json.loads(out)
    assert stats["messages"] == 4 and stats["skipped"] == 2
    rows = {(r["rule"], r["mode"]): r for r in stats["rules"]}
    assert set(rows) == {("block-word", "enforce"), ("watch-word", "monitor")}
    assert rows["block-word", "enforce"]["messages"] == 2
    watch = rows["watch-word", "monitor"]
    # Enforcing watch-word would have turned the plain "watch-me" accept into a reject; the
    # other message it hit was rejected anyway.
    assert (watch["messages"], watch["action"], watch["would_change"]) == (2, "reject", 1)

    code, out = run(capsys, "rules", "stats", "--audit", str(log), "--json")
    rows = {(r["rule"], r["mode"]): r for r in json.loads(out)["rules"]}
    assert rows["watch-word", "monitor"]["messages"] == 3
    assert rows["watch-word", "monitor"]["would_change"] == 2  # quarantine -> reject too
    assert rows["hold-word", "enforce"]["messages"] == 1

    code, out = run(capsys, "rules", "stats", "--audit", str(log), "--since", "1d")
    assert code == 0
    lines = out.splitlines()
    assert lines[0].startswith("4 messages from ") and "2 other lines skipped" in lines[0]
    assert lines[1].split() == ["RULE", "MODE", "MESSAGES", "ACTION", "WOULD", "CHANGE"]
    assert lines[2].split() == ["block-word", "enforce", "2", "reject", "-"]
    assert lines[3].split() == ["watch-word", "monitor", "2", "reject", "1"]


def test_stats_reads_stdin_and_takes_actions_from_a_pack(
    packs: tuple[Path, Path], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    lines = audit_lines(Engine.load(packs[0]), ["watch-me", "hello"], with_actions=False)
    monkeypatch.setattr("sys.stdin", io.StringIO("\n".join(lines) + "\n"))
    code, out = run(capsys, "rules", "stats", "--audit", "-", "--json")
    [row] = json.loads(out)["rules"]
    assert code == 0 and (row["action"], row["would_change"]) == ("", 0)

    monkeypatch.setattr("sys.stdin", io.StringIO("\n".join(lines) + "\n"))
    code, out = run(capsys, "rules", "stats", "--audit", "-", "--rules", str(packs[0]), "--json")
    [row] = json.loads(out)["rules"]
    assert (row["rule"], row["action"], row["would_change"]) == ("watch-word", "reject", 1)


def test_stats_bad_arguments(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        build_parser().parse_args(["rules", "stats", "--since", "yesterday-ish"])
    code, _ = run(capsys, "rules", "stats", "--audit", str(tmp_path / "missing.jsonl"))
    assert code == 2 and "cannot read" in capsys.readouterr().err


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

    code, out = run(capsys, "rules", "diff", str(old), str(new), str(corpus), str(single))
    assert code == 1
    assert f"{corpus}/reject-me.eml: reject -> quarantine" in out
    assert "    + block-word (enforce, quarantine)\n    - block-word (enforce, reject)" in out
    assert f"{corpus}/quarantine-me.eml: quarantine -> accept\n    - hold-word" in out
    assert f"{corpus}/tag-me.eml: accept -> tag\n    + tag-word (enforce, tag)" in out
    assert f"{single}: reject -> quarantine" in out
    assert "hello.eml" not in out and "watch-me.eml" not in out
    assert out.splitlines()[-1].startswith("4 of 6 verdicts change")

    code, out = run(capsys, "rules", "diff", str(old), str(new), str(corpus), "--json")
    result = json.loads(out)
    assert code == 1 and result["messages"] == 5
    changed = {Path(c["message"]).name: c for c in result["changed"]}
    assert set(changed) == {"reject-me.eml", "quarantine-me.eml", "tag-me.eml"}
    assert changed["tag-me.eml"]["new"] == {"action": "tag", "rules": ["tag-word"], "monitor": []}

    code, out = run(capsys, "rules", "diff", str(old), str(old), str(corpus))
    assert code == 0 and out.splitlines()[-1].startswith("0 of 5 verdicts change")


def test_diff_replays_the_quarantine_with_its_envelopes(
    tmp_path: Path, packs: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    old, new = packs
    store = LocalQuarantine(tmp_path / "quarantine")
    raw = message("quarantine-me")
    envelope = envelope_from_headers(raw, door="relay")
    qid = store.put(raw, envelope, Engine.load(old).scan(raw, envelope), "quarantine-me")
    code, out = run(capsys, "rules", "diff", str(old), str(new), "--quarantine", str(store.path))
    assert code == 1
    assert f"quarantine:{qid}: quarantine -> accept" in out


def test_diff_refuses_a_broken_pack_or_a_missing_corpus(
    tmp_path: Path, packs: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    old, _ = packs
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "rules.yaml").write_text("rules:\n  - id: x\n    when: [{nope: 1}]\n")
    code, _ = run(capsys, "rules", "diff", str(old), str(broken), str(tmp_path))
    assert code == 2 and "rules.yaml:3" in capsys.readouterr().err
    code, _ = run(capsys, "rules", "diff", str(old), str(old), str(tmp_path / "nope"))
    assert code == 2 and "nope" in capsys.readouterr().err

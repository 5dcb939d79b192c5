"""Rule packs the tests share: rules keyed by a word in the Subject, the door test pack made of
them (one rule per action), and writing a pack folder."""

from __future__ import annotations

from pathlib import Path


def subject_rule(rule_id: str, word: str, action: str, *more: str) -> str:
    """The YAML of one rule taking `action` on a Subject that contains `word` (any case);
    `more` are further keys of the rule as YAML lines, e.g. "reason: Try later"."""
    lines = [
        f"  - id: {rule_id}",
        f"    when: [{{subject: {{regex: '(?i){word}'}}}}]",
        f"    action: {action}",
        *(f"    {line}" for line in more),
    ]
    return "\n".join(lines) + "\n"


BLOCK_WORD = subject_rule(
    "block-word", "reject-me", "reject", "reason: Subject contains a blocked word"
)
HOLD_WORD = subject_rule("hold-word", "quarantine-me", "quarantine", "reason: Held for review")

DOOR_TEST_PACK = (
    "rules:\n"
    + BLOCK_WORD
    + HOLD_WORD
    + subject_rule(
        "tag-word",
        "tag-me",
        "tag",
        "tag: {subject_prefix: '[TAGGED] ', headers: {X-Mailgate-Test: 'yes'}}",
    )
    + subject_rule("copy-word", "copy-me", "tag", "tag: {add_recipients: [archive@example.org]}")
    + subject_rule("mark-word", "mark-me", "tag")  # no options: X-Mailgate-Rules: mark-word
    + subject_rule("busy-word", "tempfail-me", "tempfail", "reason: Try later")
)


def write_pack(folder: Path, text: str = DOOR_TEST_PACK, name: str = "rules.yaml") -> Path:
    """A rule folder holding `text` as its one file; the folder."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_text(text)
    return folder

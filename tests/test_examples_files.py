"""`rules test` and hot reload read example files bounded: a FIFO or /dev/zero among them is a
clear failure, not a hang."""

from __future__ import annotations

import os
from pathlib import Path

from mailgate.filter.scan.engine import Engine
from mailgate.filter.scan.examples import MAX_EXAMPLE_BYTES, run_examples

PACK = """\
rules:
  - id: word
    when: [{subject: {regex: 'secret'}}]
    action: quarantine
    reason: a word
    examples: {hit: [endless.eml, pipe.eml, huge.eml, good.eml]}
"""


def test_examples_that_are_not_regular_files_fail_clearly(tmp_path: Path) -> None:
    (tmp_path / "policy.yaml").write_text(PACK)
    (tmp_path / "good.eml").write_bytes(b"Subject: secret\r\n\r\nhi\r\n")
    (tmp_path / "endless.eml").symlink_to("/dev/zero")
    os.mkfifo(tmp_path / "pipe.eml")  # no writer: a plain open() would wait for ever
    with open(tmp_path / "huge.eml", "wb") as huge:  # sparse: costs no disk
        huge.truncate(MAX_EXAMPLE_BYTES + 1)
    engine = Engine.load(tmp_path)
    ran, failures = run_examples(engine, tmp_path)
    assert ran == 4
    assert sorted((Path(f.example).name, f.why) for f in failures) == [
        ("endless.eml", "cannot read it: not a regular file"),
        ("huge.eml", "cannot read it: larger than 64 MiB"),
        ("pipe.eml", "cannot read it: not a regular file"),
    ]

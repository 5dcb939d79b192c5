"""What a rule pack may not do: values of the wrong type, control characters that reach a
header or a reply, YARA includes and examples outside the pack, symlinks out of it, and sizes
past the limits. Each is refused by lint with file and line (or the limit), not a traceback."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from mailgate.filter.cli.main import build_parser
from mailgate.filter.policy.actions import plan_for
from mailgate.filter.policy.envelope import Envelope
from mailgate.filter.policy.pack import LIMITS, Pack, PackError, PackLimits, PackSource, build_pack
from mailgate.filter.scan.engine import Engine

ENV = Envelope(mail_from="alice@corp.example", rcpt_tos=("bob@partner.example",))
MESSAGE = b"From: alice@corp.example\r\nTo: bob@partner.example\r\nSubject: Hi\r\n\r\nS3CR3T\r\n"


def problems(yaml_text: str, **extra: str) -> list[str]:
    files = {"policy.yaml": textwrap.dedent(yaml_text).encode()}
    files.update({name: text.encode() for name, text in extra.items()})
    with pytest.raises(PackError) as info:
        build_pack(PackSource(files))
    return [str(p) for p in info.value.problems]


def tag_rule(tag: str) -> str:
    return f"rules:\n  - id: t\n    when: [{{size_over: 1}}]\n    action: tag\n    tag:\n{tag}"


@pytest.mark.parametrize(
    ("tag", "expected"),
    [
        (
            '      subject_prefix: "[X]\\r\\nBcc: leak@evil.example\\r\\n"\n',
            "policy.yaml:6: [t] tag: subject_prefix: control character '\\r' not allowed",
        ),
        (
            '      headers:\n        X-Ok: "yes"\n        X-Bad: "a\\nBcc: leak@evil.example"\n',
            "policy.yaml:8: [t] tag: header X-Bad: control character '\\n' not allowed",
        ),
        (
            '      subject_prefix: "[X]\\u2028"\n',
            "policy.yaml:6: [t] tag: subject_prefix: control character '\\u2028' not allowed",
        ),
        (
            '      add_recipients:\n        - a@corp.example\n        - "b\\x00@corp.example"\n',
            "policy.yaml:8: [t] tag: add_recipients: control character '\\x00' not allowed",
        ),
        (
            "      headers: {X-Checked: yes}\n",
            "policy.yaml:6: [t] tag: header X-Checked: the value is a string (quote it)",
        ),
    ],
)
def test_values_that_reach_a_header_are_refused(tag: str, expected: str) -> None:
    found = problems(tag_rule(tag))
    assert any(p.startswith(expected) for p in found), found


def test_a_clean_tag_still_reaches_the_plan() -> None:
    tag = '      subject_prefix: "[CONFIDENTIAL] "\n      headers: {X-Priority: 1}\n'
    engine = Engine.from_source(PackSource({"policy.yaml": tag_rule(tag).encode()}))
    plan = plan_for(engine.scan(MESSAGE, ENV))
    assert plan.subject_prefix == "[CONFIDENTIAL] " and plan.add_headers == [("X-Priority", "1")]


@pytest.mark.parametrize(
    ("field", "expected"),
    [
        ("description: [a, b]", "policy.yaml:3: [r] description must be a string"),
        ("description: {a: 1}", "policy.yaml:3: [r] description must be a string"),
        ('description: "a\\x1b[2Jb"', "policy.yaml:3: [r] description: control character"),
        ("reason: [a]", "policy.yaml:3: [r] reason must be a string"),
        ('reason: "first\\nsecond"', "policy.yaml:3: [r] reason: control character '\\n'"),
        ("mode: [enforce]", "policy.yaml:3: [r] mode must be 'enforce' or 'monitor'"),
        ("examples: {hit: [../../etc/shadow]}", "policy.yaml:3: [r] examples.hit: '../../etc"),
        ("examples: {miss: [/etc/passwd]}", "policy.yaml:3: [r] examples.miss: '/etc/passwd'"),
    ],
)
def test_rule_fields_are_type_checked(field: str, expected: str) -> None:
    found = problems(
        f"rules:\n  - id: r\n    {field}\n    when: [{{size_over: 1}}]\n    action: reject\n"
    )
    assert any(p.startswith(expected) for p in found), found


@pytest.mark.parametrize(
    ("condition", "expected"),
    [
        ("dlp: {type: [credit_card]}", "dlp: unknown detector ["),
        ("body: {regex: x, validator: [luhn]}", "body.validator: unknown validator ["),
        ("yara: {rule: [A, B]}", "yara.rule: expected a name"),
        ("yara: {any: 'no'}", "yara.any: expected true or false, got 'no'"),
        ("header: {name: X-A, exists: 'no'}", "header.exists: expected true or false"),
        ("attachment: {encrypted: 'false'}", "attachment.encrypted: expected true or false"),
    ],
)
def test_condition_options_are_type_checked(condition: str, expected: str) -> None:
    text = f"rules:\n  - id: c\n    when:\n      - {condition}\n    action: reject\n"
    found = problems(text)
    assert any(p.startswith(f"policy.yaml:4: [c] {expected}") for p in found), found


def test_a_folded_description_stands_in_for_the_reason_on_one_line() -> None:
    text = "rules:\n  - id: r\n    description: >\n      Two\n      lines\n"
    text += "    when: [{size_over: 1}]\n    action: reject\n"
    rule = build_pack(PackSource({"policy.yaml": text.encode()})).rules[0]
    assert rule.description == "Two lines\n" and rule.reason == "Two lines"


YARA_RULE = "rule Uses_Marker {\n  condition: Marker\n}\n"
MARKER = 'private rule Marker {\n  strings: $a = "S3CR3T"\n  condition: $a\n}\n'
YARA_POLICY = "rules:\n  - id: y\n    when: [{yara: {rule: Uses_Marker}}]\n    action: reject\n"


def write_pack(root: Path, include: str, marker: str = MARKER) -> Path:
    (root / "yara" / "common").mkdir(parents=True, exist_ok=True)
    (root / "policy.yaml").write_text(YARA_POLICY)
    (root / "yara" / "main.yar").write_text(f'\ninclude "{include}"\n\n{YARA_RULE}')
    (root / "yara" / "common" / "marker.yar").write_text(marker)
    return root


def test_yara_include_inside_the_pack_works_and_is_part_of_the_version(tmp_path: Path) -> None:
    pack = Pack.load(write_pack(tmp_path, "common/marker.yar"))
    assert Engine(pack).scan(MESSAGE, ENV).rules == ["y"]
    assert pack.yara.files == [str(tmp_path / "yara" / "main.yar")]  # included, not compiled alone
    edited = Pack.load(write_pack(tmp_path, "common/marker.yar", MARKER.replace("S3CR3T", "X")))
    assert edited.version != pack.version
    assert Engine(edited).scan(MESSAGE, ENV).rules == []


@pytest.mark.parametrize("how", ["absolute", "relative"])
def test_yara_include_outside_the_pack_is_refused(tmp_path: Path, how: str) -> None:
    outside = tmp_path / "outside.yar"
    outside.write_text(MARKER)
    pack = tmp_path / "pack"
    pack.mkdir()
    include = str(outside) if how == "absolute" else "../../outside.yar"
    write_pack(pack, include)
    with pytest.raises(PackError) as info:
        Pack.load(pack)
    found = [str(p) for p in info.value.problems]
    expected = f"{pack / 'yara' / 'main.yar'}:2: YARA: include {include!r}: only files inside"
    assert any(p.startswith(expected) for p in found), found


def test_yara_include_of_a_file_the_pack_lacks_is_refused(tmp_path: Path) -> None:
    write_pack(tmp_path, "common/absent.yar")
    with pytest.raises(
        PackError, match=r"main\.yar:2: YARA: include 'common/absent\.yar': no such"
    ):
        Pack.load(tmp_path)


def test_a_file_linking_outside_the_pack_is_refused(tmp_path: Path) -> None:
    secret = tmp_path / "secret.yaml"
    secret.write_text("rules: []\n")
    pack = tmp_path / "pack"
    pack.mkdir()
    (pack / "policy.yaml").write_text("rules: []\n")
    (pack / "linked.yaml").symlink_to(secret)
    with pytest.raises(PackError, match="links outside the pack folder"):
        PackSource.read(pack)


SMALL = PackLimits(files=3, rule_bytes=2000, yara_bytes=100, rules=5)


def test_limits_on_files_and_bytes_are_checked_before_parsing(tmp_path: Path) -> None:
    # Each file is not even YAML: the limits are met before any parsing.
    for index in range(4):
        (tmp_path / f"p{index}.yaml").write_text("{ not yaml")
    with pytest.raises(PackError) as info:
        PackSource.read(tmp_path, SMALL)
    assert [str(p) for p in info.value.problems] == [
        f"{tmp_path}: pack too large: 4 files; a pack holds at most 3"
    ]
    big = PackSource({"a.yaml": b"#" * 2001, "yara/x.yar": b"//" * 60})
    with pytest.raises(PackError) as info:
        build_pack(big, SMALL)
    assert [p.message for p in info.value.problems] == [
        "pack too large: rule files of 2001 bytes; at most 2000 bytes together",
        "pack too large: YARA files of 120 bytes; at most 100 bytes together",
    ]


def test_rule_count_limit_is_checked_before_rules_compile() -> None:
    # Six rules, each broken: had they been compiled, each would be a problem of its own.
    text = "rules:\n" + "".join(f"  - {{id: r{i}, action: explode}}\n" for i in range(3))
    files = {"a.yaml": text.encode(), "b.yaml": text.encode()}
    with pytest.raises(PackError) as info:
        build_pack(PackSource(files), SMALL)
    assert [str(p) for p in info.value.problems] == ["b.yaml:1: pack too large: more than 5 rules"]


def test_a_pack_of_186000_rules_is_refused_by_lint(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rule = "  - {id: r%d, when: [{size_over: 1}], action: accept}\n"
    (tmp_path / "huge.yaml").write_text("rules:\n" + "".join(rule % i for i in range(186_000)))
    args = build_parser().parse_args(["rules", "lint", "--rules", str(tmp_path)])
    assert args.func(args) == 1
    out = capsys.readouterr().out
    assert out.startswith(f"{tmp_path}: pack too large: rule files of ")
    assert f"at most {LIMITS.rule_bytes} bytes together" in out

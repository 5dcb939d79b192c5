"""The one YAML loader of rule packs and mailgate.yaml: lines, and what it refuses (duplicate
keys, alias bombs, loops, deep nesting, values that cannot be built) with file and line, in
the pack's lint and in the configuration alike."""

from __future__ import annotations

import resource
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

from mailgate.filter.cli.main import build_parser
from mailgate.filter.ops.config import ConfigError, load_config
from mailgate.filter.policy.pack import PackError, PackSource, build_pack
from mailgate.filter.policy.yamlsource import (
    MAX_ALIAS_VALUES,
    MAX_DEPTH,
    LineDict,
    LineList,
    YamlError,
    line_at,
    load_yaml,
    loader_class,
)

PURE_PYTHON = loader_class((yaml.reader.Reader, yaml.scanner.Scanner, yaml.parser.Parser))
LOADERS = [pytest.param(None, id="libyaml"), pytest.param(PURE_PYTHON, id="pure-python")]


def billion_laughs(indent: str = "") -> str:
    """Nine levels of nine aliases each: 10^9 strings once expanded, 700 bytes as written."""
    lines = [f'{indent}- &l0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    for level in range(1, 10):
        refs = ", ".join([f"*l{level - 1}"] * 9)
        lines.append(f"{indent}- &l{level} [{refs}]")
    return "\n".join(lines) + "\n"


def refused(text: str, loader: type | None) -> YamlError:
    with pytest.raises(YamlError) as info:
        load_yaml(text, loader) if loader else load_yaml(text)
    return info.value


@pytest.mark.parametrize("loader", LOADERS)
def test_lines_of_keys_and_items(loader: type | None) -> None:
    text = "relay:\n  accept_from:\n    - 10.0.0.0/8\n\n    - 192.0.2.1\n  listen: a:1\n"
    data = load_yaml(text, loader) if loader else load_yaml(text)
    assert isinstance(data, LineDict) and isinstance(data["relay"]["accept_from"], LineList)
    assert data == {"relay": {"accept_from": ["10.0.0.0/8", "192.0.2.1"], "listen": "a:1"}}
    assert line_at(data, ("relay", "accept_from", 1)) == 5
    assert line_at(data, ("relay", "listen")) == 6
    # A path the document does not hold: the line of the deepest part that it does.
    assert line_at(data, ("relay", "accept_from", 7)) == 2


@pytest.mark.parametrize("loader", LOADERS)
def test_duplicate_key_is_refused_with_its_line_and_path(loader: type | None) -> None:
    error = refused("rules:\n  - id: a\n    action: reject\n    action: accept\n", loader)
    assert (error.line, error.path) == (4, ("rules", 0, "action"))
    assert str(error) == "duplicate key (first on line 3)"
    # The same key in two different mappings is no duplicate; merge keys still override.
    data = load_yaml("a: {x: 1}\nb: {x: 2}\nbase: &b {y: 1}\nc: {<<: *b, y: 2}\n")
    assert data["c"] == {"y": 2}


@pytest.mark.parametrize("loader", LOADERS)
def test_alias_bomb_is_refused_before_it_expands(loader: type | None) -> None:
    error = refused(billion_laughs(), loader)
    assert f"aliases expand to more than {MAX_ALIAS_VALUES} values" in str(error)
    assert error.line is not None and 2 <= error.line <= 10
    # Aliases as people use them (a list shared by a few rules) are fine.
    shared = "domains: &d [a.example, b.example]\nx: *d\ny: *d\n"
    assert load_yaml(shared)["y"] == ["a.example", "b.example"]


@pytest.mark.parametrize("loader", LOADERS)
def test_loops_deep_nesting_and_complex_keys_are_refused(loader: type | None) -> None:
    assert "loop" in str(refused("a: &a [1, *a]\n", loader))
    deep = refused("x: " + "[" * (MAX_DEPTH + 1) + "]" * (MAX_DEPTH + 1) + "\n", loader)
    assert f"deeper than {MAX_DEPTH}" in str(deep) and deep.line == 1
    assert "plain value" in str(refused("? [a, b]\n: 1\n", loader))


@pytest.mark.parametrize("loader", LOADERS)
def test_values_that_cannot_be_built_name_their_line(loader: type | None) -> None:
    date = refused("a: 1\nwhen: 2024-13-45\n", loader)
    assert date.line == 2 and "month must be in 1..12" in str(date)
    number = refused("a:\n  - " + "9" * 5000 + "\n", loader)
    assert number.line == 2 and "digits" in str(number)
    syntax = refused("a: [1,\nb: 2\n", loader)
    assert str(syntax).startswith("YAML syntax error") and syntax.line is not None


def lint(tmp_path: Path, text: str, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    (tmp_path / "policy.yaml").write_text(textwrap.dedent(text))
    args = build_parser().parse_args(["rules", "lint", "--rules", str(tmp_path)])
    status = args.func(args)
    return status, capsys.readouterr().out


def test_rules_lint_refuses_a_duplicate_action(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    status, out = lint(
        tmp_path,
        """\
        rules:
          - id: cards
            when: [{dlp: credit_card}]
            action: reject
            action: accept
        """,
        capsys,
    )
    assert status == 1
    assert f"{tmp_path / 'policy.yaml'}:5: rules[0].action: duplicate key (first on line 4)" in out


def run_limited(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """The mailgate command in a child limited to 1 GiB of address space and 60 s of CPU: an
    expanding bomb ends in MemoryError (or SIGXCPU), not in the refusal the tests expect."""

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))
        resource.setrlimit(resource.RLIMIT_CPU, (60, 60))

    code = "from mailgate.filter.cli.main import main; main()"
    return subprocess.run(
        [sys.executable, "-c", code, *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        preexec_fn=limit,
        timeout=300,
    )


def test_alias_bomb_in_a_rule_description_is_refused_by_lint(tmp_path: Path) -> None:
    bomb = textwrap.indent(billion_laughs(), "      ")
    (tmp_path / "policy.yaml").write_text(
        "rules:\n  - id: laughs\n    description:\n"
        + bomb
        + "    when: [{size_over: 1}]\n    action: accept\n"
    )
    result = run_limited("rules", "lint", "--rules", str(tmp_path), cwd=tmp_path)
    assert result.returncode == 1, result.stderr[-2000:]
    assert f"{tmp_path / 'policy.yaml'}:" in result.stdout
    assert (
        "aliases expand to more than" in result.stdout and "rules[0].description" in result.stdout
    )


def test_alias_bomb_in_mailgate_yaml_is_refused(tmp_path: Path) -> None:
    (tmp_path / "mailgate.yaml").write_text(
        "relay:\n  accepted_domains:\n" + billion_laughs("    ") + "  max_recipients: 5\n"
    )
    result = run_limited("rules", "lint", cwd=tmp_path)  # lint reads the configuration's pack
    assert result.returncode == 2, result.stderr[-2000:]
    assert "mailgate.yaml: line " in result.stderr
    assert "relay.accepted_domains" in result.stderr and "aliases expand" in result.stderr
    with pytest.raises(ConfigError, match=r"mailgate\.yaml: line \d+: relay\.accepted_domains"):
        load_config(tmp_path / "mailgate.yaml")


def test_a_rule_pack_and_the_configuration_refuse_alike(tmp_path: Path) -> None:
    text = "relay:\n  max_recipients: 5\n  max_recipients: 6\n"
    (tmp_path / "mailgate.yaml").write_text(text)
    with pytest.raises(ConfigError) as config_error:
        load_config(tmp_path / "mailgate.yaml")
    with pytest.raises(PackError) as pack_error:
        build_pack(PackSource({"policy.yaml": text.encode()}))
    reason = "relay.max_recipients: duplicate key (first on line 2)"
    assert str(config_error.value).endswith(f"line 3: {reason}")
    assert str(pack_error.value) == f"policy.yaml:3: {reason}"

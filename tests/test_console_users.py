"""The console's users file goes through the one YAML loader: no alias bombs, no duplicates;
passwords are hashed at the cost the configuration sets, production's unless it says otherwise."""

from __future__ import annotations

from pathlib import Path

import pytest
from argon2 import Type, extract_parameters

from mailgate.filter.console.users import Principal, UsersFile, UsersFileError
from mailgate.filter.ops.config import ConfigError, load_config
from tests.support.console import CHEAP_HASHING

BOMB = "\n".join(
    ["a: &a [x, x, x, x, x, x, x, x, x, x]"]
    + [f"{chr(98 + i)}: &{chr(98 + i)} [*{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, "
       f"*{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, "
       f"*{chr(97 + i)}, *{chr(97 + i)}]" for i in range(8)]
    + ["users: *i"]
)  # fmt: skip


def test_an_alias_bomb_in_the_users_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "console-users.yaml"
    path.write_text(BOMB)
    with pytest.raises(UsersFileError, match="alias"):
        UsersFile(path)._load()


def test_a_user_listed_twice_is_refused_with_its_line(tmp_path: Path) -> None:
    path = tmp_path / "console-users.yaml"
    path.write_text("users:\n  ann: {role: auditor}\n  ann: {role: admin}\n")
    with pytest.raises(UsersFileError, match="duplicate key"):
        UsersFile(path)._load()


def test_a_users_file_of_the_wrong_shape_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "console-users.yaml"
    path.write_text("users: [ann, bob]\n")
    with pytest.raises(UsersFileError, match="must be mappings"):
        UsersFile(path)._load()


def hash_of(users: UsersFile, name: str) -> str:
    return str(users._load()["users"][name]["hash"])


def test_a_default_configuration_hashes_at_production_cost(tmp_path: Path) -> None:
    (tmp_path / "mailgate.yaml").write_text("console: {users: users.yaml}\n")
    console = load_config(tmp_path / "mailgate.yaml").console
    users = UsersFile(console.users, console.password_hashing)
    users.set_user("ann", "auditor", "correct horse")
    made = extract_parameters(hash_of(users, "ann"))
    # Argon2id, 3 passes over 64 MiB in 4 lanes: what every deployment has had so far
    assert (made.type, made.time_cost, made.memory_cost, made.parallelism) == (
        Type.ID, 3, 64 * 1024, 4
    )  # fmt: skip
    assert users.authenticate("ann", "correct horse") is not None
    assert users.authenticate("ann", "wrong horse") is None


def test_a_configured_cost_is_used_and_older_hashes_still_verify(tmp_path: Path) -> None:
    config = tmp_path / "mailgate.yaml"
    config.write_text("console: {users: users.yaml, password_hashing: {time_cost: 2}}\n")
    first = load_config(config).console
    UsersFile(first.users, first.password_hashing).set_user("ann", "auditor", "old pass")
    config.write_text(f"console: {{users: users.yaml, password_hashing: {CHEAP_HASHING}}}\n")
    later = load_config(config).console
    users = UsersFile(later.users, later.password_hashing)
    users.set_user("bob", "admin", "new pass")
    costs = [extract_parameters(hash_of(users, name)) for name in ("ann", "bob")]
    assert [(c.time_cost, c.memory_cost, c.parallelism) for c in costs] == [
        (2, 64 * 1024, 4), (1, 8, 1)
    ]  # fmt: skip
    assert users.authenticate("ann", "old pass") == Principal("ann", "auditor")
    assert users.authenticate("bob", "new pass") == Principal("bob", "admin")
    assert users.authenticate("nobody", "new pass") is None  # checked against a dummy hash


def test_too_little_memory_for_the_lanes_is_refused(tmp_path: Path) -> None:
    config = tmp_path / "mailgate.yaml"
    config.write_text("console:\n  password_hashing: {memory_kib: 16, parallelism: 4}\n")
    with pytest.raises(ConfigError, match="memory_kib must be at least 8 times parallelism"):
        load_config(config)

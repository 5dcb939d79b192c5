"""The console's users file goes through the one YAML loader: no alias bombs, no duplicates."""

from __future__ import annotations

from pathlib import Path

import pytest

from mailgate.filter.console.users import UsersFile, UsersFileError

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

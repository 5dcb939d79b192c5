"""The console's users and API tokens: one YAML file (`console.users`), mode 0600.

    users:
      alice: {role: reviewer, hash: "$argon2id$..."}
    tokens:
      soar: {role: reviewer, sha256: "<hex>"}

Passwords are kept as Argon2id hashes (argon2-cffi) at the cost `console.password_hashing`
sets. API tokens are 256-bit random values
shown once; only their SHA-256 is kept (a value that long needs no slow hash).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import hmac
import os
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from mailgate.filter import YamlError, load_yaml
from mailgate.filter.ops.config import PasswordHashing

ROLES = ("auditor", "reviewer", "admin")
# What each role may do; a role has its own rights and those of the roles before it.
RIGHTS = {
    "auditor": frozenset({"read"}),
    "reviewer": frozenset({"read", "release", "delete"}),
    "admin": frozenset({"read", "release", "delete", "original", "purge"}),
}
TOKEN_PREFIX = "mgc_"


@functools.cache
def _hasher(cost: PasswordHashing) -> tuple[PasswordHasher, str]:
    """The hasher at `cost`, and a hash at that cost of a random password: verified against
    when the name is unknown, so a wrong name costs as long as a wrong password."""
    hasher = PasswordHasher(
        time_cost=cost.time_cost, memory_cost=cost.memory_kib, parallelism=cost.parallelism
    )
    return hasher, hasher.hash(secrets.token_hex(16))


class UsersFileError(Exception):
    """The users file cannot be read or written."""


@dataclass(frozen=True)
class Principal:
    name: str
    role: str

    def may(self, right: str) -> bool:
        return right in RIGHTS.get(self.role, frozenset())


def valid_name(name: str) -> bool:
    return 0 < len(name) <= 64 and all(c.isalnum() or c in "._-@" for c in name)


class UsersFile:
    """Read on every check, so that `adduser` and `deluser` take effect without a restart."""

    def __init__(self, path: Path, cost: PasswordHashing | None = None) -> None:
        self.path = Path(path)
        self.cost = cost or PasswordHashing()

    def _load(self) -> dict[str, dict[str, Any]]:
        try:
            # the one loader: no alias bombs, duplicate users refused with their line
            data = load_yaml(self.path.read_text(encoding="utf-8")) or {}
        except FileNotFoundError:
            return {"users": {}, "tokens": {}}
        except (OSError, YamlError, UnicodeDecodeError) as exc:
            raise UsersFileError(f"{self.path}: cannot read: {exc}") from None
        if not isinstance(data, dict):
            raise UsersFileError(f"{self.path}: not a mapping of users and tokens")
        # plain dicts (the loader's carry line numbers), so that _save can write them back
        try:
            return {
                kind: {name: dict(entry) for name, entry in (data.get(kind) or {}).items()}
                for kind in ("users", "tokens")
            }
        except (AttributeError, TypeError, ValueError):
            raise UsersFileError(f"{self.path}: users and tokens must be mappings") from None

    def _save(self, data: dict[str, dict[str, Any]]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{self.path.name}.{secrets.token_hex(4)}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as out:
                yaml.safe_dump(data, out, sort_keys=True)
                out.flush()
                os.fsync(out.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
            raise
        os.chmod(self.path, 0o600)

    def set_user(self, name: str, role: str, password: str) -> bool:
        """Add the user, or replace its password and role; True when it is new."""
        _check(name, role)
        data = self._load()
        new = name not in data["users"]
        data["users"][name] = {"role": role, "hash": _hasher(self.cost)[0].hash(password)}
        self._save(data)
        return new

    def delete_user(self, name: str) -> bool:
        data = self._load()
        if data["users"].pop(name, None) is None:
            return False
        self._save(data)
        return True

    def new_token(self, name: str, role: str) -> str:
        """A new token for `name` (replacing its old one); shown once, kept as a hash."""
        _check(name, role)
        token = TOKEN_PREFIX + secrets.token_urlsafe(32)
        data = self._load()
        data["tokens"][name] = {"role": role, "sha256": _digest(token)}
        self._save(data)
        return token

    def delete_token(self, name: str) -> bool:
        data = self._load()
        if data["tokens"].pop(name, None) is None:
            return False
        self._save(data)
        return True

    def role_of(self, name: str) -> str | None:
        entry = self._load()["users"].get(name)
        return entry.get("role") if isinstance(entry, dict) else None

    def authenticate(self, name: str, password: str) -> Principal | None:
        entry = self._load()["users"].get(name)
        stored = entry.get("hash") if isinstance(entry, dict) else None
        hasher, dummy = _hasher(self.cost)
        try:
            hasher.verify(stored or dummy, password)
        except (VerificationError, InvalidHashError):
            return None
        role = entry.get("role") if stored else None  # type: ignore[union-attr]
        return Principal(name, role) if role in ROLES else None

    def token_principal(self, token: str) -> Principal | None:
        digest = _digest(token)
        found = None
        for name, entry in self._load()["tokens"].items():
            # Every entry is compared, in constant time: no early exit tells which was close.
            if isinstance(entry, dict) and hmac.compare_digest(str(entry.get("sha256")), digest):
                found = Principal(f"token:{name}", str(entry.get("role")))
        return found if found is not None and found.role in ROLES else None


def _check(name: str, role: str) -> None:
    if not valid_name(name):
        raise UsersFileError(f"not a user name: {name!r} (letters, digits, '.', '_', '-', '@')")
    if role not in ROLES:
        raise UsersFileError(f"not a role: {role!r} (one of {', '.join(ROLES)})")


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()

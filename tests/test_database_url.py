"""`database` and `node` in mailgate.yaml: a libpq URL read without connecting, a bad one named
with file, line and cause, and the password masked wherever the URL is quoted."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from mailgate.filter.ops.config import ConfigError, parse_config
from mailgate.filter.store.dburl import parse_database_url

SECRET = "s3cr%40t-pw"  # percent-encoded in the URL: s3cr@t-pw


def test_url_parts_and_masking() -> None:
    url = parse_database_url(
        f"postgresql://mailgate:{SECRET}@db1.example.com:5433,db2.example.com/fleet"
        "?target_session_attrs=read-write"
    )
    assert url.hosts == (("db1.example.com", 5433), ("db2.example.com", 5432))
    assert (url.dbname, url.user, url.password) == ("fleet", "mailgate", "s3cr@t-pw")
    assert url.where == "db1.example.com:5433,db2.example.com:5432/fleet"
    assert url.masked.startswith("postgresql://mailgate:***@db1.example.com:5433,")
    for form in ("s3cr@t-pw", SECRET):
        assert form not in str(url) and form not in repr(url)
        assert url.scrub(f"server said: bad password {form}") == "server said: bad password ***"
    in_query = parse_database_url("postgres://mailgate@db/fleet?password=hunter2-x")
    assert in_query.password == "hunter2-x" and "hunter2-x" not in in_query.masked


def test_configuration_takes_database_and_node() -> None:
    config = parse_config(
        f"database: postgresql://mailgate:{SECRET}@db.example.com/mailgate\nnode: gw1\n",
        Path("mailgate.yaml"),
    )
    assert config.database is not None and config.database.where == "db.example.com:5432/mailgate"
    assert config.node == "gw1"
    default = parse_config("{}\n", Path("mailgate.yaml"))
    assert default.database is None and default.node == socket.gethostname()


@pytest.mark.parametrize(
    ("value", "cause"),
    [
        ("mysql://mailgate:{pw}@db/mailgate", "not a PostgreSQL URL"),
        ("postgresql://mailgate:{pw}@db.example.com:54x2/mailgate", "is not host[:port]"),
        ("postgresql://mailgate:{pw}@db.example.com:99999/mailgate", "out of range"),
        ("postgresql://mailgate:{pw}@/mailgate", "no host"),
        ("42", "a libpq URL"),
    ],
)
def test_malformed_url_is_a_configuration_error_without_the_password(
    value: str, cause: str
) -> None:
    text = f"node: gw1\ndatabase: {value.format(pw=SECRET)}\n"
    with pytest.raises(ConfigError) as refused:
        parse_config(text, Path("mailgate.yaml"))
    message = str(refused.value)
    assert message.startswith("mailgate.yaml: line 2: database: ") and cause in message
    assert SECRET not in message and "s3cr@t-pw" not in message and "\n" not in message


def test_node_name_is_checked() -> None:
    with pytest.raises(ConfigError, match="line 1: node: not a node name"):
        parse_config("node: 'gw 1'\n", Path("mailgate.yaml"))

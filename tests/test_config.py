"""mailgate.yaml: defaults, every key, search order, and errors that name file, line and key."""

from __future__ import annotations

import ipaddress
import textwrap
from datetime import timedelta
from pathlib import Path

import pytest

from mailgate.filter.ops import config as config_module
from mailgate.filter.ops.config import (
    Config,
    ConfigError,
    Endpoint,
    MilterFailMode,
    NextHopTLS,
    default_config,
    load_config,
    packaged_rules_dir,
)

EXAMPLE = Path(__file__).resolve().parent.parent / "deploy" / "mailgate.example.yaml"


def write(tmp_path: Path, text: str, name: str = "mailgate.yaml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def error_of(tmp_path: Path, text: str) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, text))
    return str(info.value)


def test_embedded_default(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    config = default_config()
    assert config.source is None
    assert config.relay.listen == Endpoint("127.0.0.1", 2525)
    assert str(config.relay.listen) == "127.0.0.1:2525"
    assert config.relay.next_hop.host is None
    assert config.relay.outbox == tmp_path / "var/outbox"
    assert config.quarantine.path == tmp_path / "var/quarantine"
    assert config.quarantine.release_to is None
    assert config.release_target == config.relay.next_hop
    assert config.relay.accept_from == [ipaddress.ip_network("127.0.0.0/8")]
    assert config.relay.accepted_domains == ["*"]
    assert config.relay.max_message_size == 50 << 20
    assert config.relay.max_recipients == 1000
    assert config.relay.next_hop.tls is NextHopTLS.OPPORTUNISTIC
    assert config.relay.next_hop.port == 25
    assert config.relay.fail_open is False
    assert config.relay.tls.cert is None and config.relay.tls.require is False
    assert config.milter.socket == "unix:/run/mailgate/milter.sock"
    assert config.milter.socket_mode == 0o666
    assert config.milter.fail_mode is MilterFailMode.TEMPFAIL
    assert 0 < config.milter.time_budget < 300
    assert config.engine.workers >= 1
    assert config.engine.time_budget == 10
    assert config.engine.memory_budget == 512 << 20
    assert config.metrics.listen is None
    assert config.audit.path is None
    # No ./rules here: the packaged pack.
    assert config.rules == packaged_rules_dir()


def test_rules_default_prefers_local_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "rules").mkdir()
    monkeypatch.chdir(tmp_path)
    assert default_config().rules == tmp_path / "rules"
    conf_dir = tmp_path / "etc"
    conf_dir.mkdir()
    # In a file, ./rules means beside the file; there is none there, so the packaged pack.
    assert load_config(write(conf_dir, "relay: {}\n")).rules == packaged_rules_dir()


def test_search_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert load_config(None).source is None
    write(tmp_path, "relay:\n  max_recipients: 7\n")
    config = load_config(None)
    assert config.source == Path("mailgate.yaml")
    assert config.relay.max_recipients == 7


def test_empty_file_and_empty_sections_are_defaults(tmp_path: Path) -> None:
    empty = load_config(write(tmp_path, ""))
    sections = load_config(write(tmp_path, "relay:\nquarantine:\n  release_to:\n", "b.yaml"))
    assert empty.model_dump() == sections.model_dump()
    assert empty.relay.next_hop.host is None


def test_every_key(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """\
        rules: pack
        quarantine:
          path: /srv/q
          release_to: {host: 127.0.0.1, port: 10026, tls: none, timeout: 5s}
          retention: 30d
        relay:
          listen: "[::1]:2600"
          hostname: gate.example.com
          accept_from: [10.0.0.0/8, "2001:db8::/32", 192.0.2.7]
          accepted_domains: [Example.COM, "*.example.org"]
          max_message_size: 10 MiB
          max_recipients: 50
          tls:
            cert: tls/cert.pem
            key: tls/key.pem
            require: true
            client_ca: tls/ca.pem
            client_names: [exchange.example.com]
          next_hop:
            host: mx.example.com
            port: 587
            tls: verify_name
            tls_name: relay.example.com
            ca: /etc/ssl/ca.pem
            timeout: 2m
          outbox: out
          max_connections: 20
          idle_timeout: 1m
          data_timeout: 1.5h
          max_line_length: 1000
          max_header_size: 64KB
          fail_open: true
        milter:
          socket: inet:8890@127.0.0.1
          socket_mode: "0660"
          fail_mode: accept
          time_budget: 45s
        engine:
          workers: 3
          time_budget: 2.5
          memory_budget: 1G
        metrics:
          listen: 127.0.0.1:9125
        audit:
          path: log/audit.jsonl
        """,
    )
    c = load_config(path)
    assert c.source == path
    assert c.rules == tmp_path / "pack"
    assert c.quarantine.path == Path("/srv/q")
    target = c.quarantine.release_to
    assert target is not None and c.release_target is target
    assert (target.host, target.port, target.tls, target.timeout) == (
        "127.0.0.1",
        10026,
        NextHopTLS.NONE,
        5.0,
    )
    assert c.quarantine.retention == timedelta(days=30)
    r = c.relay
    assert r.listen == Endpoint("::1", 2600) and str(r.listen) == "[::1]:2600"
    assert r.hostname == "gate.example.com"
    assert r.accept_from == [
        ipaddress.ip_network("10.0.0.0/8"),
        ipaddress.ip_network("2001:db8::/32"),
        ipaddress.ip_network("192.0.2.7/32"),
    ]
    assert r.accepted_domains == ["example.com", "*.example.org"]
    assert r.accepts_sender_domain("EXAMPLE.com") and r.accepts_sender_domain("a.example.org")
    assert not r.accepts_sender_domain("example.org")
    assert not r.accepts_sender_domain("badexample.com")
    assert r.max_message_size == 10 << 20
    assert r.max_recipients == 50
    assert r.tls.cert == tmp_path / "tls/cert.pem" and r.tls.key == tmp_path / "tls/key.pem"
    assert r.tls.require is True and r.tls.client_ca == tmp_path / "tls/ca.pem"
    assert r.tls.client_names == ["exchange.example.com"]
    hop = r.next_hop
    assert (hop.host, hop.port, hop.tls, hop.tls_name) == (
        "mx.example.com",
        587,
        NextHopTLS.VERIFY_NAME,
        "relay.example.com",
    )
    assert hop.expected_name == "relay.example.com"
    assert hop.ca == Path("/etc/ssl/ca.pem") and hop.timeout == 120
    assert r.outbox == tmp_path / "out"
    assert (r.max_connections, r.idle_timeout, r.data_timeout) == (20, 60, 5400)
    assert (r.max_line_length, r.max_header_size, r.fail_open) == (1000, 64 << 10, True)
    m = c.milter
    assert (m.socket, m.socket_mode, m.fail_mode, m.time_budget) == (
        "inet:8890@127.0.0.1",
        0o660,
        MilterFailMode.ACCEPT,
        45,
    )
    assert (c.engine.workers, c.engine.time_budget, c.engine.memory_budget) == (3, 2.5, 1 << 30)
    assert c.metrics.listen == Endpoint("127.0.0.1", 9125)
    assert c.audit.path == tmp_path / "log/audit.jsonl"


def test_example_file_is_the_defaults() -> None:
    example = load_config(EXAMPLE)
    defaults = Config.model_validate({}, context={"base_dir": EXAMPLE.parent})
    assert example.model_dump() == defaults.model_dump()
    # Every key of the model is written out in the example (commented keys do not count).
    text = EXAMPLE.read_text()
    for section, model in defaults:
        assert f"\n{section}:" in f"\n{text}", section
        for key in getattr(type(model), "model_fields", ()):
            assert f"  {key}:" in text, f"{section}.{key}"


def test_yaml_octal_socket_mode(tmp_path: Path) -> None:
    assert load_config(write(tmp_path, "milter: {socket_mode: 0660}\n")).milter.socket_mode == 0o660
    msg = error_of(tmp_path, "milter:\n  socket_mode: 666\n")
    assert "line 2: milter.socket_mode:" in msg and "'0666'" in msg


@pytest.mark.parametrize(
    ("text", "line", "key", "reason"),
    [
        ("relay:\n  listen: 127.0.0.1:25\n  lisen: x\n", 3, "relay.lisen", "unknown key"),
        ("bogus: 1\n", 1, "bogus", "unknown key"),
        ("relay:\n  max_recipients: many\n", 2, "relay.max_recipients", "valid integer"),
        ("relay:\n\n  max_message_size: 50 parsecs\n", 3, "relay.max_message_size", "size"),
        ("relay:\n  next_hop:\n    tls: tls1.2\n", 3, "relay.next_hop.tls", "verify_name"),
        ("relay:\n  next_hop:\n    timeout: soon\n", 3, "relay.next_hop.timeout", "duration"),
        ("relay:\n  accept_from:\n    - 10.0.0.0/8\n    - 10.1/x\n", 4, "relay.accept_from[1]", ""),
        ("relay:\n  listen: localhost\n", 2, "relay.listen", "host:port"),
        ("milter:\n  socket: /tmp/x.sock\n", 2, "milter.socket", "unix:"),
        ("milter:\n  fail_mode: reject\n", 2, "milter.fail_mode", "tempfail"),
        ("engine:\n  workers: 0\n", 2, "engine.workers", "greater than 0"),
        ("engine:\n  workers: 100000\n", 2, "engine.workers", "less than or equal to 256"),
        ("engine:\n  memory_budget: 0\n", 2, "engine.memory_budget", "greater than or equal"),
        ("relay:\n  next_hop:\n    tls_name: a.example\n", 2, "relay.next_hop", "verify_name"),
        ("relay:\n  tls:\n    require: true\n", 2, "relay.tls", "cert and key"),
        ("quarantine:\n  release_to: {port: 26}\n", 2, "quarantine.release_to", "host"),
        ("relay:\n  accepted_domains: []\n", 2, "relay.accepted_domains", "every sender"),
        ("relay:\n  fail_open: perhaps\n", 2, "relay.fail_open", "boolean"),
        ('relay:\n  hostname: "gate\\r\\nX-Evil: 1"\n', 2, "relay.hostname", "not a host name"),
        ("relay:\n  idle_timeout: 99999999999d\n", 2, "relay.idle_timeout", "duration too long"),
        ("relay:\n  data_timeout: .inf\n", 2, "relay.data_timeout", "not a duration"),
        ("quarantine:\n  retention: -1\n", 2, "quarantine.retention", "must not be negative"),
        ("engine:\n\n  memory_budget: 99999999999T\n", 3, "engine.memory_budget", "too large"),
        ("relay:\n  max_message_size: " + "9" * 4000 + "\n", 2, "relay.max_message_size", "large"),
    ],
)
def test_error_names_file_line_and_key(
    tmp_path: Path, text: str, line: int, key: str, reason: str
) -> None:
    msg = error_of(tmp_path, text)
    assert msg.startswith(f"{tmp_path / 'mailgate.yaml'}: line {line}: {key}: "), msg
    assert reason in msg


def test_yaml_syntax_error_has_line(tmp_path: Path) -> None:
    msg = error_of(tmp_path, "relay:\n  listen: 127.0.0.1:25\n  next_hop: {host: a\n  x: [\n")
    assert "YAML syntax error" in msg and f"{tmp_path / 'mailgate.yaml'}: line " in msg
    msg = error_of(tmp_path, "relay:\n  listen: a:1\n bad indent: 2\n")
    assert ": line 3: YAML syntax error" in msg


def test_duplicate_key_is_an_error(tmp_path: Path) -> None:
    msg = error_of(tmp_path, "relay:\n  max_recipients: 5\n  max_recipients: 6\n")
    assert msg.endswith("line 3: relay.max_recipients: duplicate key (first on line 2)")


def test_a_file_past_the_size_bound_is_refused_unparsed(tmp_path: Path) -> None:
    # A megabyte of one comment: valid YAML, but no configuration is that large.
    msg = error_of(tmp_path, "#" * (1 << 20) + "\n")
    assert msg == f"{tmp_path / 'mailgate.yaml'}: larger than 1 MiB: not a mailgate.yaml"


def test_top_level_must_be_mapping(tmp_path: Path) -> None:
    assert "mapping" in error_of(tmp_path, "- relay\n")


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "nope.yaml")


@pytest.mark.parametrize(
    ("cpus", "text", "processes", "workers", "each"),
    [
        (2, "", 1, 2, 2),  # one front end, every core scans
        (2, "relay: {processes: auto}\nengine: {workers: auto}\n", 1, 2, 2),
        (8, "", 2, 8, 4),  # two front ends share the eight workers
        (8, "engine: {workers: 3}\n", 2, 3, 3),  # a number set is each front end's
        (8, "relay: {processes: 3}\n", 3, 8, 2),
        (3, "relay: {processes: 1}\nengine: {workers: null}\n", 1, 3, 3),
    ],
)
def test_front_ends_and_workers_follow_the_cpus_unless_set(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    cpus: int,
    text: str,
    processes: int,
    workers: int,
    each: int,
) -> None:
    monkeypatch.setattr(config_module, "_cpu_count", lambda: cpus)
    c = load_config(write(tmp_path, text))
    assert (c.relay.processes, c.engine.workers) == (processes, workers)
    assert c.engine.workers_per_process(c.relay.processes) == each

"""mailgate.yaml: one validated model for the whole file, shared by every command.

Search order when no `--config FILE` is given: ./mailgate.yaml, then
/etc/mailgate/mailgate.yaml, else the embedded default (every key at its default: the relay on
127.0.0.1:2525, no next hop, mail delivered into var/outbox).

Relative paths: every relative path (written in the file or left at its default) resolves
against the folder of the config file, so a config file and its folder form one deployment
and writing a default out explicitly never changes its meaning. With no config file (the
embedded default) they resolve against the working directory.

Sizes and durations are read by .units, as in rule packs: a plain integer is bytes, K/KB/KiB,
M/MB/MiB, G/GB/GiB all count in powers of 1024 ('50MB' = 50 MiB); a plain number is seconds,
or one unit of ms, s, m, h, d, w ('30d', '10s', '5m').

A bad file raises ConfigError naming the file, the line and the key path
(`mailgate.yaml: line 12: relay.next_hop.tls: ...`); unknown keys are errors. The YAML is read
by the loader rule packs use (policy/yamlsource), which also refuses keys given twice and
aliases that expand without bound.
"""

from __future__ import annotations

import argparse
import importlib.resources
import ipaddress
import os
import re
import socket
from datetime import timedelta
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, NamedTuple

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from mailgate.filter.policy.units import parse_duration, parse_size
from mailgate.filter.policy.yamlsource import YamlError, dotted, line_at, load_yaml
from mailgate.filter.store.dburl import DatabaseURL, parse_database_url

SEARCH_PATHS = (Path("mailgate.yaml"), Path("/etc/mailgate/mailgate.yaml"))
MAX_BYTES = 1 << 20  # the example with every key is 10 KB; YAML parses at about 1 s per MB


class ConfigError(Exception):
    """The configuration cannot be used; the message names file, line and key."""


# --- value parsers -------------------------------------------------------------------------


def _seconds(value: object) -> float:
    return parse_duration(value).total_seconds()


class Endpoint(NamedTuple):
    """A host and port to listen on or connect to: '127.0.0.1:2525', '[::1]:2525'."""

    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


def parse_endpoint(value: object) -> Endpoint:
    if isinstance(value, Endpoint):
        return value
    if isinstance(value, str):
        match = re.fullmatch(r"\[([0-9a-fA-F:.]+)\]:(\d+)|([^:\[\]\s]+):(\d+)", value.strip())
        if match:
            host = match.group(1) or match.group(3)
            port = int(match.group(2) or match.group(4))
            if 0 < port < 65536:
                return Endpoint(host, port)
    raise ValueError(f"not host:port: {value!r} (e.g. '127.0.0.1:2525' or '[::1]:2525')")


def _parse_mode(value: object) -> int:
    """A unix file mode: '0666' (octal string) or an int YAML already read as octal (0666).

    A bare 666 is YAML's decimal 666, not rw-rw-rw-: it falls outside 0o777 and is refused.
    """
    if isinstance(value, str) and re.fullmatch(r"0?o?[0-7]{3}", value.strip()):
        mode = int(value.strip().replace("o", ""), 8)
    elif isinstance(value, int) and not isinstance(value, bool):
        mode = value
    else:
        mode = -1
    if not 0 <= mode <= 0o777:
        raise ValueError(f"not a file mode: {value!r} (write it quoted, e.g. '0666')")
    return mode


def _parse_network(value: object) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    if not isinstance(value, str):
        raise ValueError(f"not a network: {value!r} (e.g. '127.0.0.0/8' or '10.1.2.3')")
    try:
        return ipaddress.ip_network(value.strip())
    except ValueError as exc:
        raise ValueError(f"not a network: {value!r} ({exc})") from None


Size = Annotated[int, BeforeValidator(parse_size)]
Seconds = Annotated[float, BeforeValidator(_seconds), Field(gt=0)]
Network = Annotated[ipaddress.IPv4Network | ipaddress.IPv6Network, BeforeValidator(_parse_network)]
EndpointValue = Annotated[Endpoint, BeforeValidator(parse_endpoint)]


def _resolve(value: Path, info: ValidationInfo) -> Path:
    """Make a relative path absolute against the config file's folder (see module doc)."""
    value = value.expanduser()
    base = (info.context or {}).get("base_dir") or Path.cwd()
    return value if value.is_absolute() else Path(base) / value


ConfigPath = Annotated[Path, AfterValidator(_resolve)]


class _Section(BaseModel):
    """Strict, immutable; an empty section (`relay:` with nothing under it) means defaults."""

    # validate_default: defaults go through the same parsing and path resolution as values.
    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)

    @model_validator(mode="before")
    @classmethod
    def _empty_is_default(cls, data: Any) -> Any:
        return {} if data is None else data


# --- sections ------------------------------------------------------------------------------


class NextHopTLS(StrEnum):
    NONE = "none"  # plain SMTP, no STARTTLS
    OPPORTUNISTIC = "opportunistic"  # STARTTLS when offered, no verification
    REQUIRED = "required"  # STARTTLS or fail; certificate not verified (self-signed)
    VERIFY_CA = "verify_ca"  # STARTTLS, chain verified against `ca` (or the system store)
    VERIFY_NAME = "verify_name"  # as verify_ca, and the name must match tls_name (or host)


class SmtpTarget(_Section):
    """Where mail goes over SMTP: `relay.next_hop` and `quarantine.release_to`."""

    host: str | None = None  # None: no SMTP next hop, deliver into relay.outbox
    port: int = Field(default=25, gt=0, lt=65536)
    tls: NextHopTLS = NextHopTLS.OPPORTUNISTIC
    tls_name: str | None = None
    ca: ConfigPath | None = None
    timeout: Seconds = 60.0  # per SMTP command, connect included

    @model_validator(mode="after")
    def _tls_settings_fit_mode(self) -> SmtpTarget:
        if self.tls_name and self.tls is not NextHopTLS.VERIFY_NAME:
            raise ValueError("tls_name is used only with tls: verify_name")
        if self.ca and self.tls not in (NextHopTLS.VERIFY_CA, NextHopTLS.VERIFY_NAME):
            raise ValueError("ca is used only with tls: verify_ca or verify_name")
        return self

    @property
    def expected_name(self) -> str | None:
        """The certificate name checked under verify_name: tls_name, else the host."""
        return self.tls_name or self.host


class InboundTLS(_Section):
    cert: ConfigPath | None = None
    key: ConfigPath | None = None
    require: bool = False  # refuse MAIL before STARTTLS
    client_ca: ConfigPath | None = None  # verify client certificates against this bundle
    # Set: every client must present a verified certificate carrying one of these names.
    client_names: list[str] = []
    # With client_names: from connecting to presenting an accepted certificate (commands such
    # as NOOP do not extend it), so certless clients cannot hold connection slots for long.
    client_cert_timeout: Seconds = 20.0

    @model_validator(mode="after")
    def _consistent(self) -> InboundTLS:
        if (self.cert is None) != (self.key is None):
            raise ValueError("cert and key must be set together")
        if self.require and self.cert is None:
            raise ValueError("require: true needs cert and key")
        if self.client_ca and self.cert is None:
            raise ValueError("client_ca needs cert and key (client certificates need STARTTLS)")
        if self.client_names and self.client_ca is None:
            raise ValueError("client_names needs client_ca to verify the certificates against")
        if self.client_ca and not self.client_names:
            # Not "any certificate from client_ca": a CA bundle such as the system's issues
            # certificates to everyone, so the names that may relay are always spelled out.
            raise ValueError("client_ca needs client_names: the certificate names that may relay")
        return self


class RelayConfig(_Section):
    listen: EndpointValue = Endpoint("127.0.0.1", 2525)
    hostname: str = None  # type: ignore[assignment]  # None: socket.gethostname()
    accept_from: list[Network] = ["127.0.0.0/8"]  # type: ignore[list-item]
    accepted_domains: list[str] = ["*"]
    max_message_size: Size = 50 << 20
    max_recipients: int = Field(default=1000, gt=0)
    tls: InboundTLS = Field(default_factory=dict)
    next_hop: SmtpTarget = Field(default_factory=dict)
    outbox: ConfigPath = Path("var/outbox")
    # Operational limits.
    max_connections: int = Field(default=100, gt=0)  # concurrent client sessions
    idle_timeout: Seconds = 300.0  # between commands (RFC 5321 4.5.3.2.7: 5 minutes)
    data_timeout: Seconds = 600.0  # whole DATA transfer, against slow-drip clients
    max_line_length: int = Field(default=2048, ge=1000)  # bytes per line incl. CRLF
    max_header_size: Size = 100 << 10  # all headers together (Postfix's header_size_limit)
    fail_open: bool = False  # engine cannot answer: relay unscanned instead of 451
    # SMTP front-end processes sharing `listen`, the machine's scan workers shared among them
    # (audit and metrics are gathered by the parent). auto: one per 4 CPUs; on fewer, one
    # front end does the SMTP and every core scans (bench/contenders.py: two lose on 2).
    processes: int = Field(default="auto", ge=1, le=64)  # type: ignore[assignment]

    @field_validator("processes", mode="before")
    @classmethod
    def _auto_processes(cls, value: Any) -> Any:
        return max(1, _cpu_count() // 4) if value in (None, "auto") else value

    @field_validator("hostname", mode="before")
    @classmethod
    def _default_hostname(cls, value: Any) -> Any:
        # gethostname, not getfqdn: loading the config must not wait on DNS.
        return socket.gethostname() if value is None else value

    @field_validator("hostname")
    @classmethod
    def _hostname_is_one_word(cls, value: str) -> str:
        # It reaches the SMTP greeting and the Received header: a CR/LF would add lines.
        if not value or any(ch.isspace() or not ch.isprintable() for ch in value):
            raise ValueError(f"not a host name: {value!r:.80} (no spaces or control characters)")
        return value

    @field_validator("accepted_domains", mode="before")
    @classmethod
    def _domains(cls, value: Any) -> Any:
        if value == "*":
            return ["*"]
        if isinstance(value, list):
            return [d.strip().lower().rstrip(".") if isinstance(d, str) else d for d in value]
        return value

    @field_validator("accepted_domains")
    @classmethod
    def _domains_not_empty(cls, value: list[str]) -> list[str]:
        if not value:
            raise ValueError('an empty list would refuse every sender; use ["*"] for all')
        return value

    def accepts_sender_domain(self, domain: str) -> bool:
        """'*' accepts all; 'example.com' that domain; '*.example.com' its subdomains."""
        domain = domain.lower().rstrip(".")
        for pattern in self.accepted_domains:
            if pattern == "*" or pattern == domain:
                return True
            if pattern.startswith("*.") and domain.endswith(pattern[1:]):
                return True
        return False


class QuarantineConfig(_Section):
    path: ConfigPath = Path("var/quarantine")
    # Where `mailgate quarantine release` re-submits; None: relay.next_hop (or its outbox).
    release_to: SmtpTarget | None = None
    # Default for `mailgate quarantine purge` when --older-than is not given; with `database`
    # also enforced for the fleet once an hour.
    retention: Annotated[timedelta, BeforeValidator(parse_duration)] | None = None
    # Tell the sender when a message is held, released or deleted (ops/notices.py), through
    # where a release goes; the notice comes from notify_from (None: postmaster@relay.hostname).
    notify_sender: bool = False
    notify_from: str | None = None

    @field_validator("notify_from")
    @classmethod
    def _one_address(cls, value: str | None) -> str | None:
        if value is not None and not re.fullmatch(r"[^\s<>@]+@[^\s<>@]+", value):
            raise ValueError(f"not an address: {value!r} (local@domain, no name or brackets)")
        return value

    @field_validator("release_to")
    @classmethod
    def _release_needs_host(cls, value: SmtpTarget | None) -> SmtpTarget | None:
        if value is not None and value.host is None:
            raise ValueError("release_to needs a host (leave release_to out to use next_hop)")
        return value


class MilterFailMode(StrEnum):
    TEMPFAIL = "tempfail"
    ACCEPT = "accept"


class MilterConfig(_Section):
    # unix:/path (default: no TCP delayed-ACK latency) or inet:PORT@HOST / inet6:PORT@HOST.
    socket: str = "unix:/run/mailgate/milter.sock"
    socket_mode: Annotated[int, BeforeValidator(_parse_mode)] = 0o666
    fail_mode: MilterFailMode = MilterFailMode.TEMPFAIL
    # Answer well inside Postfix's milter_content_timeout (300s by default).
    time_budget: Seconds = 30.0

    @field_validator("socket")
    @classmethod
    def _socket_spec(cls, value: str) -> str:
        if re.fullmatch(r"(unix|local):/\S+|inet6?:\d{1,5}(@\S+)?", value):
            return value
        raise ValueError(
            f"not a milter socket: {value!r} "
            "(use 'unix:/run/mailgate/milter.sock' or 'inet:8890@127.0.0.1')"
        )


def _cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))  # CPUs this process may use (cgroups, taskset)
    except AttributeError:
        return os.cpu_count() or 1


class EngineConfig(_Section):
    # scanning processes; auto (or null): one per usable CPU, shared among a relay's front
    # ends (relay.processes). Bounded: each holds a compiled pack.
    workers: int = Field(default="auto", gt=0, le=256)  # type: ignore[assignment]
    _workers_auto: bool = PrivateAttr(default=False)
    time_budget: Seconds = 10.0  # per message; overruns go to the pack's unscannable rules
    # per worker process; below 64 MiB a worker cannot even hold the default pack
    memory_budget: Annotated[Size, Field(ge=64 << 20)] = 512 << 20
    # Workers parse hostile files, so they run with least privilege (filter/scan/confine.py):
    user: str | None = "nobody"  # the workers' user when started as root; null: stay root
    confine: bool = True  # Landlock: workers read only Python and system libraries, write nothing

    @field_validator("workers", mode="before")
    @classmethod
    def _default_workers(cls, value: Any) -> Any:
        return _cpu_count() if value in (None, "auto") else value

    @model_validator(mode="wrap")
    @classmethod
    def _remember_auto(cls, data: Any, handler: Any) -> Any:
        section = handler(data)
        if isinstance(data, dict):
            section._workers_auto = data.get("workers", "auto") in (None, "auto")
        elif not isinstance(data, EngineConfig):
            section._workers_auto = True
        return section

    def workers_per_process(self, processes: int) -> int:
        """The workers of each of `processes` processes that serve side by side: auto shares
        the CPUs among them, a number set is each one's."""
        return max(1, self.workers // processes) if self._workers_auto else self.workers


class MetricsConfig(_Section):
    listen: EndpointValue | None = None  # e.g. 127.0.0.1:9125; None: no metrics endpoint


class AuditConfig(_Section):
    path: ConfigPath | None = None  # None: one JSON line per message to stdout
    # With `database` (README: Running a fleet): records on their way to the database wait
    # in this folder (one file per door) while it is away; `retention` drops older days.
    spool: ConfigPath = Path("var/audit-spool")
    retention: Annotated[timedelta, BeforeValidator(parse_duration)] | None = None


class ConsoleTLS(_Section):
    cert: ConfigPath
    key: ConfigPath


class TrustedProxy(_Section):
    """A reverse proxy that signs reviewers in: its headers are believed only from `from`."""

    header: str = "X-Forwarded-User"  # the signed-in user name
    role_header: str | None = None  # groups or role names; the strongest known role counts
    from_: list[Network] = Field(alias="from", min_length=1)


class PasswordHashing(_Section):
    """The Argon2id cost of passwords set from now on (argon2-cffi's defaults, RFC 9106's second
    choice); a hash keeps the cost it was made with, so sign-in checks each at its own."""

    time_cost: int = Field(default=3, ge=1)
    memory_kib: int = Field(default=64 * 1024, ge=8)
    parallelism: int = Field(default=4, ge=1, le=64)

    @model_validator(mode="after")
    def _enough_memory(self) -> PasswordHashing:
        if self.memory_kib < 8 * self.parallelism:  # Argon2's own floor
            raise ValueError("memory_kib must be at least 8 times parallelism")
        return self


class ConsoleConfig(_Section):
    listen: EndpointValue = Endpoint("127.0.0.1", 8025)
    users: ConfigPath = Path("console-users.yaml")  # written by `mailgate console adduser`
    password_hashing: PasswordHashing = Field(default_factory=dict)
    session_timeout: Seconds = 8 * 3600.0
    trusted_proxy: TrustedProxy | None = None
    tls: ConsoleTLS | None = None


def packaged_rules_dir() -> Path:
    """The default rule pack shipped inside the mailgate package."""
    return Path(str(importlib.resources.files("mailgate.rules")))


def default_rules_dir(base_dir: Path) -> Path:
    """The pack every command uses when none is named: `rules` in base_dir (the config file's
    folder, else the working directory) when that folder exists, else the packaged pack.

    An existing but empty folder is chosen too, and then refuses to load, saying so: judging
    with the packaged pack instead would silently apply a policy nobody chose here.
    """
    local = Path(base_dir) / "rules"
    return local if local.is_dir() else packaged_rules_dir()


class Config(_Section):
    # Rule pack folder; None: default_rules_dir, the choice of every command.
    rules: ConfigPath = None  # type: ignore[assignment]
    # The fleet (README: Running a fleet): a libpq URL puts the quarantine in PostgreSQL;
    # None keeps everything local. `node` names this gateway there; None: the host name.
    database: DatabaseURL | None = None
    node: str = None  # type: ignore[assignment]
    quarantine: QuarantineConfig = Field(default_factory=dict)
    relay: RelayConfig = Field(default_factory=dict)
    milter: MilterConfig = Field(default_factory=dict)
    engine: EngineConfig = Field(default_factory=dict)
    metrics: MetricsConfig = Field(default_factory=dict)
    audit: AuditConfig = Field(default_factory=dict)
    console: ConsoleConfig = Field(default_factory=dict)

    _source: Path | None = PrivateAttr(default=None)

    @field_validator("rules", mode="before")
    @classmethod
    def _default_rules(cls, value: Any, info: ValidationInfo) -> Any:
        if value is not None:
            return value
        return default_rules_dir((info.context or {}).get("base_dir") or Path.cwd())

    @field_validator("database", mode="before")
    @classmethod
    def _database_url(cls, value: Any) -> Any:
        if value is None or isinstance(value, DatabaseURL):
            return value
        if not isinstance(value, str):
            raise ValueError("a libpq URL such as postgresql://mailgate@db.example.com/mailgate")
        return parse_database_url(value)  # ValueError names the cause, password masked

    @field_validator("node", mode="before")
    @classmethod
    def _node_name(cls, value: Any) -> Any:
        if value is None:
            return socket.gethostname()
        if not isinstance(value, str) or not re.fullmatch(r"[A-Za-z0-9][\w.-]{0,62}", value):
            raise ValueError(f"not a node name: {value!r} (letters, digits, '.', '_', '-')")
        return value

    @property
    def source(self) -> Path | None:
        """The file this configuration was read from; None for the embedded default."""
        return self._source

    @property
    def release_target(self) -> SmtpTarget:
        """Where a quarantine release goes: quarantine.release_to, else relay.next_hop."""
        return self.quarantine.release_to or self.relay.next_hop


# --- loading -------------------------------------------------------------------------------


def default_config() -> Config:
    """The embedded default: every key at its default, paths relative to the cwd."""
    return Config.model_validate({}, context={"base_dir": Path.cwd()})


def find_config_file() -> Path | None:
    for candidate in SEARCH_PATHS:
        if candidate.is_file():
            return candidate
    return None


def load_config(path: Path | None = None) -> Config:
    """Read and validate `path`, or the first file of the search order, or the default."""
    if path is None:
        path = find_config_file()
        if path is None:
            return default_config()
    try:
        with open(path, "rb") as file:
            raw = file.read(MAX_BYTES + 1)
        if len(raw) > MAX_BYTES:
            raise ConfigError(f"{path}: larger than {MAX_BYTES >> 20} MiB: not a mailgate.yaml")
        text = raw.decode("utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read: {exc}") from None
    return parse_config(text, source=Path(path))


def parse_config(text: str, source: Path) -> Config:
    """Validate YAML text; relative paths resolve against source's folder."""
    try:
        data = load_yaml(text)
    except YamlError as exc:
        where = f"line {exc.line}: " if exc.line else ""
        key = f"{dotted(exc.path)}: " if exc.path else ""
        raise ConfigError(f"{source}: {where}{key}{exc}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: line 1: the file must be a mapping of keys (rules:, relay:…)")
    base_dir = Path(source).resolve().parent
    try:
        config = Config.model_validate(data, context={"base_dir": base_dir})
    except ValidationError as exc:
        raise ConfigError(_describe(exc, source, data)) from None
    config._source = Path(source)
    return config


def _describe(exc: ValidationError, source: Path, data: Any) -> str:
    messages = []
    for error in exc.errors(include_url=False):
        # Keep only the parts of loc that are keys or list indexes in the file; pydantic adds
        # union member names ("function-after[...]") that mean nothing to an admin.
        loc = tuple(part for part in error["loc"] if isinstance(part, int) or "[" not in part)
        line = line_at(data, loc)
        key = dotted(loc) or "(top level)"
        reason = error["msg"].removeprefix("Value error, ")
        if error["type"] == "extra_forbidden":
            reason = "unknown key"
        elif error["type"] != "value_error" and not isinstance(error.get("input"), dict | list):
            reason = f"{reason} (got {error.get('input')!r:.80})"  # our own messages quote it
        where = f"line {line}: " if line else ""
        messages.append(f"{source}: {where}{key}: {reason}")
    return "\n".join(messages)


def add_config_argument(parser: argparse.ArgumentParser) -> None:
    """The one --config flag every command that reads mailgate.yaml takes."""
    parser.add_argument(
        "--config",
        type=Path,
        default=None,
        metavar="FILE",
        help="configuration file (default: ./mailgate.yaml, then /etc/mailgate/mailgate.yaml)",
    )

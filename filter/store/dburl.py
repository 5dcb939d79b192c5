"""The `database` setting: a libpq URL, checked without connecting and never shown with its
password.

`postgresql://user[:password]@host[:port][,host2[:port2]...]/dbname[?param=value&...]`, the
form libpq documents; the password may also come from PGPASSWORD or ~/.pgpass, which libpq
reads itself. Every text that may quote the URL (a configuration error, a libpq message, `db
status`) goes through `DatabaseURL.scrub`, so the password is masked wherever it would appear.
Importing this module does not import psycopg.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from urllib.parse import parse_qsl, quote, unquote

MASK = "***"
_SCHEMES = ("postgresql://", "postgres://")
_HOST_PORT = re.compile(r"^(\[[0-9A-Fa-f:.]+\]|[^:\[\]/]*)(?::(.*))?$")


@dataclass(frozen=True)
class DatabaseURL:
    url: str = field(repr=False)
    hosts: tuple[tuple[str, int], ...]  # (host, port); a socket folder as host, if given so
    dbname: str
    user: str
    password: str | None = field(default=None, repr=False)

    def __str__(self) -> str:
        return self.masked

    @property
    def masked(self) -> str:
        """The URL with the password replaced by ***."""
        return _strip_password(self.url)

    @property
    def where(self) -> str:
        """host:port[,host:port]/dbname: what error messages name."""
        hosts = ",".join(f"{h}:{p}" for h, p in self.hosts)
        return f"{hosts}/{self.dbname}"

    def scrub(self, text: str) -> str:
        """`text` with the password masked, as written in the URL and as decoded."""
        text = text.replace(self.url, self.masked)
        if not self.password:
            return text
        for form in {self.password, quote(self.password, safe=""), _raw_password(self.url)}:
            if form:
                text = text.replace(form, MASK)
        return text


def parse_database_url(value: str) -> DatabaseURL:
    """The URL's parts; ValueError (password masked) when it is not a usable libpq URL."""
    text = value.strip()
    scheme = next((s for s in _SCHEMES if text.lower().startswith(s)), None)
    bare = _strip_password(text)
    if scheme is None:
        raise ValueError(f"not a PostgreSQL URL: {bare!r} (e.g. postgresql://mailgate@db/mailgate)")
    rest = text[len(scheme) :]
    location, _, query = rest.partition("?")
    netloc, _, path = location.partition("/")
    userinfo, _, hostlist = netloc.rpartition("@")
    user, has_password, password = userinfo.partition(":")
    params = dict(parse_qsl(query, keep_blank_values=True))
    if "password" in params:
        password, has_password = params["password"], ":"
    url = DatabaseURL(text, (), "", "", unquote(password) if has_password else None)
    hosts = []
    for item in hostlist.split(",") if hostlist else []:
        match = _HOST_PORT.match(item)
        port_text = match.group(2) if match else None
        if match is None or (port_text is not None and not port_text.isdigit()):
            raise ValueError(f"{url.masked}: host {item!r} is not host[:port]")
        port = int(port_text) if port_text else 5432
        if not 0 < port < 65536:
            raise ValueError(f"{url.masked}: port {port} out of range")
        hosts.append((unquote(match.group(1)).strip("[]"), port))
    if not hosts:
        # libpq's default is the local socket; a fleet needs a host everyone reaches.
        host = params.get("host")
        if not host:
            raise ValueError(f"{url.masked}: no host (postgresql://user@HOST[:port]/dbname)")
        hosts.append((host, int(params.get("port", "5432") or 5432)))
    dbname = unquote(path) or params.get("dbname", "") or unquote(user) or "postgres"
    return DatabaseURL(text, tuple(hosts), dbname, unquote(user), url.password)


def _raw_password(url: str) -> str:
    """The password as written in the URL's user info (percent-encoded, if it was)."""
    match = re.match(r"^[a-z]+://([^@/?]*)@", url, re.I)
    if match is None or ":" not in match.group(1):
        return ""
    return match.group(1).partition(":")[2]


def _strip_password(text: str) -> str:
    """The URL with the password of its user info and of a password= parameter masked."""
    text = re.sub(r"(://[^:@/?]*:)[^@/?]*@", rf"\1{MASK}@", text)
    return re.sub(r"([?&]password=)[^&]*", rf"\1{MASK}", text)

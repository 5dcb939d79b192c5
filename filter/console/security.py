"""Sessions, sign-in rate limits, the trusted proxy and the headers every answer carries.

Sessions live in the console's memory (a restart signs everyone out): a random id in an
HttpOnly, SameSite=Strict cookie (Secure over TLS or behind an https proxy), an absolute
expiry of `console.session_timeout`, and a CSRF token that every form and every state-changing
request must return.
"""

from __future__ import annotations

import ipaddress
import secrets
import threading
import time
from collections import deque
from dataclasses import dataclass, field

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from mailgate.filter.console.users import ROLES, Principal
from mailgate.filter.ops.config import TrustedProxy

SESSION_COOKIE = "mailgate_session"
LOGIN_COOKIE = "mailgate_login"  # CSRF token of the sign-in form, before any session
MAX_FAILURES = 5
FAILURE_WINDOW = 15 * 60.0

SECURITY_HEADERS = [
    (
        b"content-security-policy",
        b"default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; "
        b"object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'",
    ),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-frame-options", b"DENY"),
    (b"cache-control", b"no-store"),
    (b"cross-origin-opener-policy", b"same-origin"),
]


class SecurityHeaders:
    """ASGI middleware: the headers above on every answer, pages, files and errors alike."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                names = {name for name, _ in SECURITY_HEADERS}
                kept = [(k, v) for k, v in message.get("headers", []) if k.lower() not in names]
                message["headers"] = kept + SECURITY_HEADERS
            await send(message)

        await self.app(scope, receive, with_headers)


@dataclass
class Session:
    id: str
    principal: Principal
    csrf: str
    expires: float
    client: str
    via_proxy: bool = False


@dataclass
class Sessions:
    timeout: float
    _by_id: dict[str, Session] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def open(self, principal: Principal, client: str, via_proxy: bool = False) -> Session:
        session = Session(
            id=secrets.token_urlsafe(32),
            principal=principal,
            csrf=secrets.token_urlsafe(32),
            expires=time.monotonic() + self.timeout,
            client=client,
            via_proxy=via_proxy,
        )
        with self._lock:
            now = time.monotonic()
            self._by_id = {k: s for k, s in self._by_id.items() if s.expires > now}
            self._by_id[session.id] = session
        return session

    def get(self, session_id: str | None) -> Session | None:
        if not session_id:
            return None
        with self._lock:
            session = self._by_id.get(session_id)
            if session is not None and session.expires <= time.monotonic():
                del self._by_id[session_id]
                return None
            return session

    def close(self, session_id: str | None) -> None:
        with self._lock:
            self._by_id.pop(session_id or "", None)

    def expire_all(self) -> None:
        """Tests and a changed users file: every session ends now."""
        with self._lock:
            self._by_id.clear()


class SignInLimiter:
    """At most MAX_FAILURES failed sign-ins per user and per client in FAILURE_WINDOW; beyond
    that both are refused, right password or not, until the oldest failure ages out."""

    def __init__(self, limit: int = MAX_FAILURES, window: float = FAILURE_WINDOW) -> None:
        self.limit = limit
        self.window = window
        self._failures: dict[str, deque[float]] = {}
        self._lock = threading.Lock()

    def _recent(self, key: str, now: float) -> deque[float]:
        times = self._failures.setdefault(key, deque())
        while times and times[0] <= now - self.window:
            times.popleft()
        return times

    def blocked(self, user: str, client: str) -> bool:
        now = time.monotonic()
        with self._lock:
            return any(
                len(self._recent(key, now)) >= self.limit
                for key in (f"user:{user.lower()}", f"client:{client}")
            )

    def failed(self, user: str, client: str) -> None:
        now = time.monotonic()
        with self._lock:
            for key in (f"user:{user.lower()}", f"client:{client}"):
                self._recent(key, now).append(now)
            if len(self._failures) > 100_000:  # bounded memory under a spray of names
                self._failures = {k: v for k, v in self._failures.items() if v}


def from_trusted_proxy(proxy: TrustedProxy | None, client: str) -> bool:
    if proxy is None:
        return False
    try:
        address = ipaddress.ip_address(client)
    except ValueError:
        return False
    return any(address in network for network in proxy.from_)


def proxy_role(value: str) -> str | None:
    """The strongest console role named in a groups header ('staff, reviewer' -> reviewer)."""
    named = {word.strip().lower() for word in value.replace(";", ",").replace(" ", ",").split(",")}
    found = [role for role in ROLES if role in named]
    return found[-1] if found else None

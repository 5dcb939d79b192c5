"""`mailgate milter`: the rules engine behind libmilter (pymilter), for a Postfix already in place.

The door only collects the message, asks the engine and executes what the verdict says; the
rules live in the engine and the "what to change" in `actions.plan_for`, shared with the relay.

libmilter calls back in its own threads, one per SMTP connection; at end of message that thread
hands the message to a scan worker itself (`ScanPool.scan_blocking`), bounded by the door's
time budget. The pool is managed (started, reloaded, workers replaced) on the event loop of the
process's main thread (`service.py`), which no message has to wake.
"""

from __future__ import annotations

import logging
import os
import socket
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import Milter
import milter as libmilter

from mailgate.filter import (
    Action,
    Envelope,
    Verdict,
    encode_header_value,
    mask_field,
    plan_for,
    refusal_for,
    replies,
)
from mailgate.filter.ops.config import MilterConfig
from mailgate.filter.ops.notices import SenderNotices
from mailgate.filter.ops.report import Reporter
from mailgate.filter.store.quarantine import QuarantineStore
from mailgate.filter.store.release_mark import RELEASE_HEADER, released_id

log = logging.getLogger("mailgate.milter")

# Messages up to this size stay in memory while they arrive; larger ones spill to a temp file,
# so many concurrent large messages cost disk, not RAM.
SPOOL_IN_MEMORY = 1 << 20
# Only these headers are remembered (besides the spool): for the reply, the log and the mark.
_REMEMBERED_HEADERS = frozenset({"subject", "message-id", RELEASE_HEADER.lower()})
FAIL_MODES = ("tempfail", "accept")

# What end-of-message decided: the libmilter answer, the verdict it rests on (for the audit
# log and the metrics), and what became of the message.
Decision = tuple[int, Verdict, dict[str, Any]]


class Scanner(Protocol):
    """What the door needs from the engine: `ScanPool` is one."""

    def scan_blocking(self, raw: bytes, envelope: Envelope, timeout: float) -> Verdict: ...


class EngineFailure(Exception):
    """The engine could not judge the message (overrun, crash, no pack): `fail_mode` decides."""


@dataclass
class MilterDoor:
    """What every milter connection shares: the engine, the quarantine store and the policy
    for failures."""

    scanner: Scanner
    store: QuarantineStore
    release_secret: bytes | None = field(default=None, repr=False)
    fail_mode: str = "tempfail"
    time_budget: float = 20.0
    spool_in_memory: int = SPOOL_IN_MEMORY
    milter_name: str = "mailgate"
    reporter: Reporter | None = None  # audit log and metrics; None: neither
    notices: SenderNotices | None = None  # tells the sender of each message held

    def __post_init__(self) -> None:
        if self.fail_mode not in FAIL_MODES:
            raise ValueError(f"fail_mode must be one of {FAIL_MODES}, not {self.fail_mode!r}")

    def apply(self, settings: MilterConfig) -> None:
        """The settings that apply live, at start and on SIGHUP: fail mode and time budget."""
        self.fail_mode = str(settings.fail_mode)
        self.time_budget = settings.time_budget

    def judge(self, raw: bytes, envelope: Envelope) -> Verdict:
        """The engine's verdict within the time budget; EngineFailure when there is none."""
        # libmilter's thread talks to a scan worker itself: no event loop per message.
        try:
            verdict = self.scanner.scan_blocking(raw, envelope, self.time_budget)
        except Exception as exc:
            raise EngineFailure(f"engine failed: {exc!r}") from exc
        if verdict.engine_error:
            raise EngineFailure(f"engine could not answer: {verdict.engine_error}")
        return verdict

    def report(
        self,
        envelope: Envelope,
        message_id: str,
        size: int,
        verdict: Verdict,
        outcome: dict[str, Any],
    ) -> None:
        if self.reporter is not None:
            self.reporter.report_verdict("milter", envelope, message_id, size, verdict, outcome)

    def factory(self) -> MailgateMilter:
        return MailgateMilter(self)


@Milter.header_leading_space
class MailgateMilter(Milter.Base):
    """One SMTP connection from the MTA. Every step before end-of-message is no-reply (the MTA
    does not wait for an answer); DATA and unknown commands are not sent at all."""

    def __init__(self, door: MilterDoor) -> None:
        self.door = door
        self.client_address: str | None = None
        self.client_name: str | None = None
        self.helo: str | None = None
        self._spool: tempfile.SpooledTemporaryFile[bytes] | None = None
        self._reset_message()

    # ----------------------------------------------------------- collecting the message

    def _reset_message(self) -> None:
        if self._spool is not None:
            self._spool.close()
        self._spool = None
        self.mail_from = ""
        self.rcpt_tos: list[str] = []
        self.headers: list[tuple[str, str]] = []  # only _REMEMBERED_HEADERS, value as sent
        self.spool_error: str | None = None

    def _write(self, data: bytes) -> None:
        if self.spool_error is not None:
            return
        try:
            if self._spool is None:
                # Closed in _reset_message, at the next message or the end of the connection.
                self._spool = tempfile.SpooledTemporaryFile(max_size=self.door.spool_in_memory)  # noqa: SIM115
            self._spool.write(data)
        except OSError as exc:
            # Keep answering CONTINUE (no-reply steps must); end-of-message tempfails.
            self.spool_error = f"could not spool the message: {exc}"

    @Milter.noreply
    def connect(self, hostname: str, family: int, hostaddr: Any) -> int:
        # libmilter passes (ip, port, ...) for inet families, the path for AF_UNIX.
        if isinstance(hostaddr, tuple) and hostaddr:
            self.client_address = str(hostaddr[0])
        elif isinstance(hostaddr, str) and family != socket.AF_UNIX:
            self.client_address = hostaddr
        # Postfix passes "[1.2.3.4]" or "unknown" when the address has no verified name.
        if hostname and hostname != "unknown" and not hostname.startswith("["):
            self.client_name = hostname
        return Milter.CONTINUE

    @Milter.noreply
    def hello(self, hostname: str) -> int:
        self.helo = hostname
        return Milter.CONTINUE

    @Milter.noreply
    def envfrom(self, mail_from: str, *params: str) -> int:
        self._reset_message()
        self.mail_from = _strip_brackets(mail_from)
        return Milter.CONTINUE

    @Milter.noreply
    def envrcpt(self, rcpt: str, *params: str) -> int:
        self.rcpt_tos.append(_strip_brackets(rcpt))
        return Milter.CONTINUE

    @Milter.noreply
    @Milter.decode("bytes")
    def header(self, name: str, value: bytes) -> int:
        # With leading space negotiated the value is exactly what followed the colon; folded
        # lines come joined by a bare LF. A bare CR ends no line in a header (RFC 5322):
        # Postfix passes a space instead, so it is read as one here whatever the MTA, and
        # "X-A: 1\rSubject: 2" stays the one header the next hop receives.
        if value[:1] not in (b" ", b"\t"):
            value = b" " + value
        value = value.replace(b"\r\n", b"\n").replace(b"\r", b" ").replace(b"\n", b"\r\n")
        self._write(name.encode("ascii", "surrogateescape") + b":" + value + b"\r\n")
        if name.lower() in _REMEMBERED_HEADERS:
            self.headers.append((name, value.decode("utf-8", "replace")))
        return Milter.CONTINUE

    @Milter.noreply
    def eoh(self) -> int:
        self._write(b"\r\n")
        return Milter.CONTINUE

    @Milter.noreply
    def body(self, chunk: bytes) -> int:
        self._write(chunk)
        return Milter.CONTINUE

    def abort(self) -> int:
        self._reset_message()
        return Milter.CONTINUE

    def close(self) -> int:
        self._reset_message()
        return Milter.CONTINUE

    # ------------------------------------------------------------ end of message

    # The macros read here ({i}, {j}, {auth_authen}, {tls_version}) come with Postfix's
    # defaults (libmilter keeps each stage's macros until end of message) and with
    # deploy/postfix/main.cf.milter. Not asking for them with a symbol list: that cost a
    # quarter of the milter's CPU per message in bench/milter.py.
    def eom(self) -> int:
        try:
            envelope = self.envelope()
            try:
                rc, verdict, outcome = self._end_of_message(envelope)
            except Exception as exc:
                log.exception("%s: milter error", self.label)
                rc, verdict, outcome = self._engine_failed(f"milter error: {exc!r}")
            message_id = _unfold(self.header_value("message-id") or "").strip()
            size = self._spool.tell() if self._spool is not None else 0
            self.door.report(envelope, message_id, size, verdict, outcome)
            return rc
        finally:
            self._reset_message()

    def _end_of_message(self, envelope: Envelope) -> Decision:
        if self.spool_error is not None:
            log.error("%s: tempfail: %s", self.label, self.spool_error)
            verdict = Verdict(Action.TEMPFAIL, reason=self.spool_error)
            return self._reply_tempfail(replies.NOT_RECEIVED, verdict)
        raw = self.raw_message()
        released = self._released(raw, envelope)
        if released is not None:
            verdict = Verdict(Action.ACCEPT, reason="released from quarantine")
            return Milter.ACCEPT, verdict, {"milter": "accept", "released": released}
        try:
            verdict = self.door.judge(raw, envelope)
        except EngineFailure as exc:
            return self._engine_failed(str(exc))
        if log.isEnabledFor(logging.DEBUG):  # the audit record is the per-message line
            log.debug(
                "%s: %s rules=%s monitor=%s pack=%s",
                self.label,
                verdict.action,
                ",".join(verdict.rules) or "-",
                ",".join(verdict.monitor) or "-",
                verdict.pack_version,
            )
        return self._execute(verdict, raw, envelope)

    def _execute(self, verdict: Verdict, raw: bytes, envelope: Envelope) -> Decision:
        if verdict.action in (Action.REJECT, Action.TEMPFAIL):
            reply = self._setreply(refusal_for(verdict))
            answer = Milter.REJECT if verdict.action == Action.REJECT else Milter.TEMPFAIL
            return answer, verdict, {"milter": str(verdict.action), "reply": reply}
        if verdict.action == Action.QUARANTINE:
            return self._quarantine(verdict, raw, envelope)
        plan = plan_for(verdict)
        for name, value in plan.add_headers:
            self.addheader(name, self._outgoing(encode_header_value(value)))
        old_subject = self.header_value("subject")
        new_subject = plan.new_subject(_unfold(old_subject) if old_subject is not None else None)
        if new_subject is not None:
            if old_subject is None:
                self.addheader("Subject", self._outgoing(new_subject.strip()))
            else:
                self.chgheader("Subject", 1, self._outgoing(new_subject))
        for rcpt in plan.add_recipients:
            self.addrcpt(f"<{rcpt}>")
        outcome: dict[str, Any] = {"milter": "accept"}
        if plan.add_recipients:
            outcome["added_recipients"] = list(plan.add_recipients)
        return Milter.ACCEPT, verdict, outcome

    def _quarantine(self, verdict: Verdict, raw: bytes, envelope: Envelope) -> Decision:
        """Stored durably first; only then the sender gets 250 and Postfix drops its copy
        (DISCARD), so mailgate's store is the one owner of the message."""
        try:
            quarantine_id = self.door.store.put(raw, envelope, verdict)
        except Exception as exc:
            # Delivering would break the policy and a 250 would lose the message: tempfail
            # whatever fail_mode says.
            log.error("%s: tempfail: quarantine store failed: %r", self.label, exc)
            return self._reply_tempfail(replies.NOT_HELD, verdict)
        log.info("%s: quarantined as %s: %s", self.label, quarantine_id, verdict.reason)
        if self.door.notices is not None:
            self.door.notices.held(quarantine_id)
        return Milter.DISCARD, verdict, {"milter": "discard", "quarantine_id": quarantine_id}

    def _engine_failed(self, why: str) -> Decision:
        if self.door.fail_mode == "accept":
            log.warning("%s: accepted unscanned (fail_mode accept): %s", self.label, why)
            verdict = Verdict(Action.ACCEPT, reason=why, engine_error=why)
            return Milter.ACCEPT, verdict, {"milter": "accept", "fail_mode": "accept"}
        log.warning("%s: tempfail (fail_mode tempfail): %s", self.label, why)
        verdict = Verdict(Action.TEMPFAIL, reason=why, engine_error=why)
        return self._reply_tempfail(replies.NOT_SCANNED, verdict)

    def _reply_tempfail(self, tempfail: replies.SMTPReply, verdict: Verdict) -> Decision:
        reply = self._setreply(tempfail)
        return Milter.TEMPFAIL, verdict, {"milter": "tempfail", "reply": reply}

    def _outgoing(self, value: str) -> str:
        """A header value to send: with leading space negotiated the MTA writes it right after
        the colon."""
        return " " + value if self._protocol & Milter.P_HDR_LEADSPC else value

    def _setreply(self, reply: replies.SMTPReply) -> str:
        """Set the SMTP reply (its text one printable line already); returns it as the client
        sees it."""
        # libmilter drops a reply whose text has a lone '%'.
        self.setreply(str(reply.code), reply.status, reply.text.replace("%", "%%"))
        return str(reply)

    def _released(self, raw: bytes, envelope: Envelope) -> str | None:
        """The quarantine id of a message mailgate is releasing, coming back through this
        Postfix (`released_id` says when a mark counts). The mark is removed. None for any
        other message."""
        if self.header_value(RELEASE_HEADER) is None or self.door.release_secret is None:
            return None
        released = released_id(self.door.release_secret, self.door.store, raw, envelope)
        if released is None:
            log.warning(
                "%s: %s is not a valid mark for a message in the quarantine; scanned as usual",
                self.label,
                RELEASE_HEADER,
            )
            return None
        qid = released[0]
        self.chgheader(RELEASE_HEADER, 1, "")  # the first: the one released_id read
        log.info("%s: accept: released from quarantine as %s", self.label, qid)
        return qid

    # --------------------------------------------------------------------- helpers

    def raw_message(self) -> bytes:
        if self._spool is None:
            return b""
        self._spool.seek(0)
        return self._spool.read()

    def header_value(self, name: str) -> str | None:
        """The first value of a remembered header, as sent (leading space stripped)."""
        name = name.lower()
        for key, value in self.headers:
            if key.lower() == name:
                return value.lstrip(" \t")
        return None

    def macro(self, name: str) -> str | None:
        value = self.getsymval(name)
        return value or None

    def envelope(self) -> Envelope:
        extra = {"myhostname": j} if (j := self.macro("j")) else {}
        return Envelope(
            mail_from=self.mail_from,
            rcpt_tos=tuple(self.rcpt_tos),
            client_address=self.client_address or self.macro("{client_addr}"),
            client_name=self.client_name,
            helo=self.helo,
            auth_user=self.macro("{auth_authen}"),
            tls_version=self.macro("{tls_version}"),
            queue_id=self.macro("i"),
            door="milter",
            extra=extra,
        )

    @property
    def label(self) -> str:
        """Which message, for the log: queue id and Message-ID, masked as the audit masks it."""
        queue_id = self.macro("i")
        message_id = mask_field(self.header_value("message-id") or "")
        return f"queue id {queue_id or '-'} Message-ID {message_id or '-'}"


def _strip_brackets(address: str) -> str:
    return address.strip().removeprefix("<").removesuffix(">")


def _unfold(value: str) -> str:
    return value.replace("\r\n", "").replace("\n", "")


# ------------------------------------------------------------------ libmilter runtime

MILTER_ACTIONS = libmilter.ADDHDRS | libmilter.CHGHDRS | libmilter.ADDRCPT | libmilter.SETSYMLIST


def serve(door: MilterDoor, spec: str, socket_mode: int = 0o666, timeout: int = 0) -> None:
    """Listen on `spec` (libmilter form: `unix:/path` or `inet:port@host`) and serve until
    `libmilter.stop()`. Blocks; run it in its own thread and stop it from another."""
    Milter.factory = door.factory
    libmilter.set_flags(MILTER_ACTIONS)
    # An exception escaping a callback must not pass a message unchecked.
    libmilter.set_exception_policy(Milter.TEMPFAIL)
    libmilter.set_connect_callback(Milter.connect_callback)
    libmilter.set_helo_callback(lambda ctx, host: ctx.getpriv().hello(host))
    libmilter.set_envfrom_callback(lambda ctx, *b: ctx.getpriv().envfrom_bytes(*b))
    libmilter.set_envrcpt_callback(lambda ctx, *b: ctx.getpriv().envrcpt_bytes(*b))
    libmilter.set_header_callback(lambda ctx, f, v: ctx.getpriv().header_bytes(f, v))
    libmilter.set_eoh_callback(lambda ctx: ctx.getpriv().eoh())
    libmilter.set_body_callback(lambda ctx, chunk: ctx.getpriv().body(chunk))
    libmilter.set_eom_callback(lambda ctx: ctx.getpriv().eom())
    libmilter.set_abort_callback(lambda ctx: ctx.getpriv().abort())
    libmilter.set_close_callback(Milter.close_callback)
    libmilter.setconn(spec)
    if timeout > 0:
        libmilter.settimeout(timeout)
    libmilter.register(
        door.milter_name,
        data=lambda ctx: ctx.getpriv().data(),
        unknown=lambda ctx, cmd: ctx.getpriv().unknown(cmd),
        negotiate=Milter.negotiate_callback,
    )
    libmilter.opensocket(True)  # removes a stale socket file left by a crash
    path = unix_socket_path(spec)
    if path is not None:
        # Postfix's smtpd connects as its own user; libmilter creates the socket with umask.
        os.chmod(path, socket_mode)
    log.info("listening on %s", spec)
    libmilter.main()


def unix_socket_path(spec: str) -> Path | None:
    """The file of a `unix:`/`local:` socket spec (or a bare path), None for inet."""
    for prefix in ("unix:", "local:"):
        if spec.startswith(prefix):
            return Path(spec[len(prefix) :])
    if spec.startswith("/"):
        return Path(spec)
    return None

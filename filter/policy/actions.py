"""What to do to a message that goes on: one plan computed from the Verdict, which each door
only executes (the relay rewrites the bytes, the milter sends addheader/chgheader)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from email.header import Header

from mailgate.filter.message.headers import decode_rfc2047, unfold
from mailgate.filter.policy.replies import REFUSAL_DEFAULTS, SMTPReply, reply_text
from mailgate.filter.policy.verdict import RULES_HEADER, Action, Verdict

_SUBJECT = re.compile(rb"^subject[ \t]*:", re.IGNORECASE)


@dataclass
class DeliveryPlan:
    add_headers: list[tuple[str, str]] = field(default_factory=list)
    subject_prefix: str = ""
    add_recipients: list[str] = field(default_factory=list)

    @property
    def changes_message(self) -> bool:
        return bool(self.add_headers or self.subject_prefix)

    def new_subject(self, raw_subject: str | None) -> str | None:
        """The Subject header's new value, given its value as sent (possibly RFC 2047
        encoded); None when it stays as it is. A prefix already there is not added twice."""
        if not self.subject_prefix:
            return None
        raw_subject = (raw_subject or "").strip()
        if decode_rfc2047(unfold(raw_subject)).startswith(self.subject_prefix):
            return None
        return encode_header_value(self.subject_prefix) + raw_subject

    def header_lines(self) -> list[bytes]:
        return [
            f"{name}: {encode_header_value(value)}\r\n".encode("ascii")
            for name, value in self.add_headers
        ]

    def apply(self, raw: bytes) -> bytes:
        """The message with the plan applied: new headers first, Subject rewritten in place
        (or added when the message has none)."""
        if not self.changes_message:
            return raw
        head, sep, body = _split_head(raw)
        lines = head.splitlines(keepends=True)
        if self.subject_prefix:
            lines = self._rewrite_subject(lines)
        return b"".join(self.header_lines()) + b"".join(lines) + sep + body

    def _rewrite_subject(self, lines: list[bytes]) -> list[bytes]:
        for i, line in enumerate(lines):
            if not _SUBJECT.match(line):
                continue
            end = i + 1
            while end < len(lines) and lines[end][:1] in (b" ", b"\t"):
                end += 1
            value = b"".join(lines[i:end]).split(b":", 1)[1]
            text = value.decode("utf-8", "surrogateescape").replace("\r\n", "\n").replace("\n", "")
            new = self.new_subject(text)
            if new is None:
                return lines
            line = f"Subject: {new}\r\n".encode("utf-8", "surrogateescape")
            return [*lines[:i], line, *lines[end:]]
        new = self.new_subject("") or ""
        return [*lines, f"Subject: {new.strip()}\r\n".encode()]


def refusal_for(verdict: Verdict) -> SMTPReply:
    """The SMTP refusal for a reject or tempfail verdict: the rule's code and status when they
    belong to the action's class (lint makes sure they do), the defaults otherwise; the rule's
    reason as one printable line."""
    action = verdict.action if verdict.action in REFUSAL_DEFAULTS else Action.TEMPFAIL
    default = REFUSAL_DEFAULTS[action]
    code, status = default.code, default.status
    klass = str(code)[0]
    if verdict.smtp_code is not None and str(verdict.smtp_code).startswith(klass):
        code = verdict.smtp_code
    if verdict.smtp_status is not None and verdict.smtp_status.startswith(klass + "."):
        status = verdict.smtp_status
    return SMTPReply(code, status, reply_text(verdict.reason) or default.text)


def plan_for(verdict: Verdict) -> DeliveryPlan:
    """Headers, subject change and added recipients from every enforce-mode tag rule that
    hit; the tag rules without options named in one X-Mailgate-Rules header. Only messages
    that go on (accept or tag) are changed; held or refused ones keep their original bytes
    and envelope."""
    plan = DeliveryPlan()
    if verdict.action > Action.TAG:
        return plan
    listed: list[str] = []
    for tag in verdict.tags:
        if tag.subject_prefix and not plan.subject_prefix:
            plan.subject_prefix = tag.subject_prefix
        for header in tag.headers:
            if header not in plan.add_headers:
                plan.add_headers.append(header)
        for recipient in tag.add_recipients:
            if recipient not in plan.add_recipients:
                plan.add_recipients.append(recipient)
        if tag.listed_rule and tag.listed_rule not in listed:
            listed.append(tag.listed_rule)
    if listed:
        plan.add_headers.append((RULES_HEADER, ", ".join(listed)))
    return plan


def encode_header_value(value: str) -> str:
    """ASCII stays as it is; anything else becomes an RFC 2047 encoded word."""
    if value.isascii():
        return value
    return Header(value, "utf-8").encode()


def _split_head(raw: bytes) -> tuple[bytes, bytes, bytes]:
    for sep in (b"\r\n\r\n", b"\n\n"):
        at = raw.find(sep)
        if at >= 0:
            return (
                raw[: at + len(sep) // 2],
                raw[at + len(sep) // 2 : at + len(sep)],
                raw[at + len(sep) :],
            )
    return raw, b"", b""

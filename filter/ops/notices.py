"""Notices to the sender of a held message (`quarantine.notify_sender: true`): a short message
when it is held, and again when a reviewer releases or deletes it, with the reviewer's reason
where the reviewer chose to share it. The sender got a 250 for a message nobody received yet;
without a notice, held mail is a black hole to them.

One notifier for every path: both doors call `held` once the message is stored, and the one
release (`relay.release.release_message`) and every delete (the console, `mailgate quarantine
delete`) call `released` and `deleted`. The notice is sent where a release goes (the door's
caller hands in `send`: quarantine.release_to, the next hop, else the outbox) from the null
sender, marked `Auto-Submitted: auto-generated` (RFC 3834), so that no notice is ever sent
about a notice or a bounce. It is sent off the mail path, in a thread of its own: a next hop
that is down delays notices, never mail; a notice that cannot be sent is logged and dropped
(it is a courtesy, not mail that was promised).

The text comes from the pack folder, `notices/held.txt`, `released.txt`, `deleted.txt` (the
packaged pack's where the folder has none): a `Subject:` line, a blank line, the body, with
these placeholders (string.Template: `$name`):

  $subject         the Subject, masked
  $recipients      the recipients, masked, comma-separated
  $time            when it was held (UTC)
  $id              the quarantine id, a reference for the compliance team
  $rule_reason     the pack's reason for holding it, masked
  $reviewer_reason what the reviewer typed as the reason, masked, when they chose to share
                   it; a line naming it is left out otherwise

Every value is masked as the audit log masks a field (`mask_field`): a notice never carries a
card number, an IBAN or an SSN, wherever the message had it.
"""

from __future__ import annotations

import concurrent.futures
import email.policy
import logging
import re
import string
import threading
from collections.abc import Callable
from dataclasses import dataclass
from email.message import EmailMessage
from email.utils import formatdate, make_msgid
from pathlib import Path

from mailgate.filter import QuarantineStore, mask_field
from mailgate.filter.ops.config import Config, packaged_rules_dir
from mailgate.filter.store.quarantine import QuarantineError, QuarantineRecord

log = logging.getLogger("mailgate.notices")

KINDS = ("held", "released", "deleted")
PLACEHOLDERS = frozenset({"subject", "recipients", "time", "id", "rule_reason", "reviewer_reason"})
TEMPLATE_LIMIT = 64 << 10  # bytes of a template read
PENDING_LIMIT = 1000  # notices waiting to be sent; more are dropped (the next hop is down)
_CONTROL = re.compile(r"[\x00-\x1f\x7f]+")

# (the notice, its recipient) -> (sent, the next hop's reply or where it went). Blocking.
Send = Callable[[bytes, str], tuple[bool, str]]


class NoticeError(Exception):
    """A notice template cannot be used; the message names the file and why."""


@dataclass(frozen=True)
class NoticeTemplate:
    path: Path
    subject: string.Template
    body: string.Template

    def render(self, values: dict[str, str]) -> tuple[str, str]:
        """(Subject, body); the lines naming $reviewer_reason go when it is empty."""
        lines = self.body.template.splitlines()
        if not values["reviewer_reason"]:
            lines = [line for line in lines if "reviewer_reason" not in line]
        body = string.Template("\n".join(lines) + "\n").substitute(values)
        return self.subject.substitute(values), body


def template_path(rules: Path, kind: str) -> Path:
    """The pack's own template for `kind`, else the packaged pack's."""
    own = Path(rules) / "notices" / f"{kind}.txt"
    return own if own.is_file() else packaged_rules_dir() / "notices" / f"{kind}.txt"


def load_template(rules: Path, kind: str) -> NoticeTemplate:
    path = template_path(rules, kind)
    try:
        with open(path, "rb") as file:
            data = file.read(TEMPLATE_LIMIT + 1)
        if len(data) > TEMPLATE_LIMIT:
            raise NoticeError(f"{path}: longer than {TEMPLATE_LIMIT} bytes")
        text = data.decode("utf-8").replace("\r\n", "\n")
    except (OSError, UnicodeDecodeError) as exc:
        raise NoticeError(f"{path}: cannot read: {exc}") from None
    head, blank, body = text.partition("\n\n")
    name, colon, subject = head.partition(":")
    if not blank or not colon or name.strip().lower() != "subject" or "\n" in head:
        raise NoticeError(f"{path}: expected a 'Subject: ...' line, a blank line, then the body")
    template = NoticeTemplate(path, string.Template(subject.strip()), string.Template(body))
    for part in (template.subject, template.body):
        unknown = set(part.get_identifiers()) - PLACEHOLDERS
        if not part.is_valid() or unknown:
            what = f"unknown placeholder ${sorted(unknown)[0]}" if unknown else "a stray $"
            raise NoticeError(f"{path}: {what} (known: {', '.join(sorted(PLACEHOLDERS))})")
    return template


def compose(
    kind: str,
    record: QuarantineRecord,
    template: NoticeTemplate,
    from_address: str,
    hostname: str,
    reviewer_reason: str = "",
) -> bytes:
    """The notice about `record` as a message of its own, every value from the record masked."""
    values = {
        "subject": mask_field(record.subject) or "(no subject)",
        "recipients": ", ".join(mask_field(r) for r in record.recipients),
        "time": record.time.strftime("%Y-%m-%d %H:%M UTC"),
        "id": record.id,
        "rule_reason": mask_field(record.reason),
        "reviewer_reason": mask_field(reviewer_reason),
    }
    # One line each: nothing a value holds can start a header or a paragraph of its own.
    values = {name: _CONTROL.sub(" ", value).strip() for name, value in values.items()}
    subject, body = template.render(values)
    to = mask_field(record.sender)
    policy = email.policy.SMTP if to.isascii() else email.policy.SMTPUTF8
    message = EmailMessage(policy=policy)
    message["From"] = from_address
    message["To"] = to
    message["Subject"] = _CONTROL.sub(" ", subject)
    message["Date"] = formatdate(usegmt=True)
    message["Message-ID"] = make_msgid("notice", domain=hostname)
    message["Auto-Submitted"] = "auto-generated"  # RFC 3834: no replies to it
    message["X-Mailgate-Notice"] = kind
    message.set_content(body)
    return message.as_bytes()


class SenderNotices:
    """The one notifier (see the module doc). Calls return at once; `close` waits for the
    notices still being sent."""

    def __init__(self, config: Config, store: QuarantineStore, send: Send | None) -> None:
        """NoticeError when notices are on and a template cannot be used."""
        self.enabled = config.quarantine.notify_sender and send is not None
        self.rules = config.rules
        self.store = store
        self.send = send
        self.hostname = config.relay.hostname
        self.from_address = config.quarantine.notify_from or f"postmaster@{self.hostname}"
        self._lock = threading.Lock()
        self._pending: set[concurrent.futures.Future[None]] = set()
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None
        if self.enabled:
            for kind in KINDS:
                load_template(self.rules, kind)  # a start refuses a broken one
            self._executor = concurrent.futures.ThreadPoolExecutor(
                max_workers=1, thread_name_prefix="mailgate-notice"
            )

    def held(self, qid: str) -> None:
        self._submit("held", qid, "")

    def released(self, qid: str, reviewer_reason: str = "") -> None:
        """`reviewer_reason`: the reason to pass on ("" when the reviewer did not share it)."""
        self._submit("released", qid, reviewer_reason)

    def deleted(self, qid: str, reviewer_reason: str = "") -> None:
        self._submit("deleted", qid, reviewer_reason)

    def _submit(self, kind: str, qid: str, reason: str) -> None:
        if self._executor is None:
            return
        with self._lock:
            if len(self._pending) >= PENDING_LIMIT:
                log.warning("notice %s for %s dropped: %d waiting", kind, qid, PENDING_LIMIT)
                return
            future = self._executor.submit(self._notify, kind, qid, reason)
            self._pending.add(future)
        future.add_done_callback(self._done)

    def _done(self, future: concurrent.futures.Future[None]) -> None:
        with self._lock:
            self._pending.discard(future)

    def _notify(self, kind: str, qid: str, reason: str) -> None:
        assert self.send is not None
        try:
            record = self.store.get(qid)
            if not record.sender:
                return  # a bounce or a notice: nobody to tell
            template = load_template(self.rules, kind)
            message = compose(kind, record, template, self.from_address, self.hostname, reason)
            sent, reply = self.send(message, record.sender)
        except (QuarantineError, NoticeError, OSError) as exc:
            log.warning("notice %s for %s not sent: %s", kind, qid, mask_field(str(exc)))
            return
        except Exception:  # a thread of its own: say what went wrong, never die silently
            log.exception("notice %s for %s not sent", kind, qid)
            return
        to = mask_field(record.sender)
        if sent:
            log.info("notice %s for %s sent to %s: %s", kind, qid, to, mask_field(reply))
        else:
            log.warning("notice %s for %s to %s refused: %s", kind, qid, to, mask_field(reply))

    def close(self, timeout: float = 10.0) -> None:
        """Wait up to `timeout` seconds for the notices in flight; drop what is left."""
        if self._executor is None:
            return
        with self._lock:
            pending = set(self._pending)
        concurrent.futures.wait(pending, timeout)
        self._executor.shutdown(wait=False, cancel_futures=True)
        self._executor = None


def delete_message(
    store: QuarantineStore,
    qid: str,
    actor: str,
    reason: str = "",
    notices: SenderNotices | None = None,
    share_reason: bool = False,
) -> bool:
    """Delete a held message with `actor` and `reason` on record and tell its sender (the
    reason too when `share_reason`); False if it was deleted already. The one delete of the
    console and `mailgate quarantine delete`, as `relay.release.release_message` is their one
    release."""
    if not store.delete(qid, actor, reason):
        return False
    if notices is not None:
        notices.deleted(qid, reason if share_reason else "")
    return True

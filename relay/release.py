"""Release from the quarantine: re-submit the original to `quarantine.release_to`, else
`relay.next_hop`, else the outbox, with the release mark so a mailgate further on does not
hold it again.

Exactly once, across processes and across a fleet's nodes: the release first claims the
record (held -> releasing, one atomic step in the store, see lifecycle), then sends, then
records the outcome under its claim. A release that finds the message claimed or released
does nothing and says so. A release that dies mid-way leaves its claim until the lease ends;
the record is then `release_unknown` and only `force` sends it again. The whole session with
the next hop is bounded (RELEASE_TIMEOUTS times its command timeout) and the lease is twice
that, so a live release always ends before its lease.

All or nothing: every recipient must be accepted before the message is sent, so a refusal
leaves it held with nobody having received it. When the next hop's answer to the message
itself never comes, it may have the message: the outcome is recorded as unknown, not failed.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import timedelta

from mailgate.filter import replies
from mailgate.filter.ops.config import Config, SmtpTarget
from mailgate.filter.ops.notices import SenderNotices
from mailgate.filter.store.lifecycle import Change
from mailgate.filter.store.quarantine import (
    QuarantineError,
    QuarantineRecord,
    QuarantineStore,
    StateError,
)
from mailgate.filter.store.release_mark import marked
from mailgate.relay.nexthop import NextHopError, Reply, open_session
from mailgate.relay.outbox import Outbox

RELEASE_TIMEOUTS = 4  # the session's bound, in next-hop command timeouts
OUTBOX_LIMIT = 60.0  # seconds: a release into the outbox (one durable file write)


@dataclass(frozen=True)
class ReleaseResult:
    qid: str
    released: bool  # sent now
    already: bool  # released, or being released, by someone else: nothing was done
    reply: str  # the next hop's reply, the outbox delivery, or why nothing was sent

    @property
    def ok(self) -> bool:
        return self.released or self.already


def release_limit(config: Config) -> float:
    """Seconds a release may take, end to end; its claim's lease is twice that."""
    target = config.release_target
    return RELEASE_TIMEOUTS * target.timeout if target.host else OUTBOX_LIMIT


def release_message(
    config: Config,
    store: QuarantineStore,
    qid: str,
    actor: str,
    reason: str = "",
    force: bool = False,
    notices: SenderNotices | None = None,
    share_reason: bool = False,
) -> ReleaseResult:
    """Release one held message and record the outcome with `actor` and the reviewer's
    `reason`; `force` also sends a message whose earlier release is release_unknown. Once it
    is released, `notices` tells its sender (with the reason when `share_reason`). Raises
    QuarantineError (UnknownMessage) for an id that is not in the store, a message that was
    deleted, is release_unknown (without `force`), or whose stored envelope cannot be sent.
    Runs its own event loop: call it from synchronous code such as the CLI, or from a worker
    thread (the review console, which gets it from the CLI)."""
    record = store.get(qid)
    _check_envelope(record)
    limit = release_limit(config)
    try:
        claim = store.claim(qid, actor, timedelta(seconds=2 * limit), force=force, reason=reason)
    except StateError as refused:
        if refused.state in ("releasing", "released"):
            return ReleaseResult(qid, released=False, already=True, reply=str(refused))
        raise
    sending = False
    try:
        message = marked(store.release_secret(), qid, claim.token, store.raw(qid))
        target = config.release_target
        if target.host:
            sending = True  # an outbox write, by contrast, is whole or not there
            envelope = (record.sender, record.recipients)
            reply, unknown = asyncio.run(
                _bounded(target, config.relay.hostname, *envelope, message, limit)
            )
        else:
            delivery_id = Outbox(config.relay.outbox).deliver(
                message, record.sender, record.recipients
            )
            reply, unknown = Reply.of(replies.IN_OUTBOX.format(id=delivery_id)), False
    except BaseException as exc:
        # Not sent (an error before the next hop had the message) or not known: say which.
        change = Change.UNKNOWN if sending else Change.FAILED
        store.finish(claim, change, f"release stopped: {type(exc).__name__}: {exc}", reason)
        raise
    outcome = Change.RELEASED if reply.ok else Change.UNKNOWN if unknown else Change.FAILED
    text = str(reply)
    if not store.finish(claim, outcome, text, reason):
        text += " (the record was meanwhile released with --force elsewhere)"
    if outcome is Change.UNKNOWN:
        text += f"; the next hop may have it: `mailgate quarantine release --force {qid}`"
    if reply.ok and notices is not None:
        notices.released(qid, reason if share_reason else "")
    return ReleaseResult(qid, released=reply.ok, already=False, reply=text)


def send_notice(config: Config, message: bytes, recipient: str) -> tuple[bool, str]:
    """Send a notice of mailgate's own (ops.notices) to `recipient` from the null sender,
    where a release goes: (sent, the next hop's reply or the outbox delivery). Blocking and
    bounded as a release is."""
    target = config.release_target
    if not target.host:
        delivery_id = Outbox(config.relay.outbox).deliver(message, "", (recipient,))
        return True, str(Reply.of(replies.IN_OUTBOX.format(id=delivery_id)))
    limit = release_limit(config)
    reply, _ = asyncio.run(
        _bounded(target, config.relay.hostname, "", (recipient,), message, limit)
    )
    return reply.ok, str(reply)


def _check_envelope(record: QuarantineRecord) -> None:
    """The stored envelope goes into SMTP commands: a line break or other control character
    in it (planted in the index) would add commands. Refused before anything is claimed."""
    for role, address in (
        ("sender", record.sender),
        *(("recipient", r) for r in record.recipients),
    ):
        if any(not ch.isprintable() or ch in "<>" for ch in address):
            raise QuarantineError(
                f"{record.id}: the stored {role} {address!r:.80} holds a control character "
                "or an angle bracket; nothing sent"
            )


async def _bounded(
    target: SmtpTarget,
    hostname: str,
    sender: str,
    recipients: tuple[str, ...],
    message: bytes,
    limit: float,
) -> tuple[Reply, bool]:
    """(the reply, whether the next hop may have the message without having said so)."""
    stage: list[str] = []
    try:
        reply = await asyncio.wait_for(
            _submit(target, hostname, sender, recipients, message, stage), limit
        )
    except TimeoutError:
        reply = Reply.of(replies.RELEASE_TIMED_OUT.format(limit=limit))
    return reply, not reply.ok and stage == ["data"]


async def _submit(
    target: SmtpTarget,
    hostname: str,
    sender: str,
    recipients: tuple[str, ...],
    message: bytes,
    stage: list[str],
) -> Reply:
    try:
        session = await open_session(target, hostname)
    except NextHopError as failed:
        return failed.reply
    try:
        addresses = (sender, *recipients)
        options = []
        if not all(a.isascii() for a in addresses):
            if not session.supports("smtputf8"):
                return Reply.of(replies.NEXT_HOP_NO_SMTPUTF8.format(role="message"))
            options.append("SMTPUTF8")
        if not message.isascii() and session.supports("8bitmime"):
            options.append("BODY=8BITMIME")
        reply = await session.mail(sender, options)
        if not reply.ok:
            return reply
        for recipient in recipients:
            accepted = await session.rcpt(recipient)
            if not accepted.ok:
                return Reply(accepted.code, f"<{recipient}>: {accepted.text}")
        stage.append("data")  # from here on the next hop may end up with the message
        reply = await session.data(message)
        stage.clear()  # the next hop answered: its answer is the outcome
        return reply
    except NextHopError as failed:
        return failed.reply
    finally:
        await session.quit()

"""Release from the quarantine: re-submit the original to `quarantine.release_to`, else
`relay.next_hop`, else the outbox, with the release mark so a mailgate further on does not
hold it again.

All or nothing: every recipient must be accepted before the message is sent, so a refusal
leaves it held with nobody having received it, and a later release cannot send it twice to
anyone. The store's per-message lock makes two releases at once behave as one after the
other: the second finds the message released and does nothing.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from mailgate.filter import replies
from mailgate.filter.ops.config import Config, SmtpTarget
from mailgate.filter.store.quarantine import QuarantineError, QuarantineStore
from mailgate.filter.store.release_mark import RELEASE_HEADER, load_or_create_secret, make_mark
from mailgate.relay.nexthop import NextHopError, Reply, open_session
from mailgate.relay.outbox import Outbox


@dataclass(frozen=True)
class ReleaseResult:
    qid: str
    released: bool  # sent now
    already: bool  # had been released before: nothing was done
    reply: str  # the next hop's reply, the outbox delivery, or why it failed

    @property
    def ok(self) -> bool:
        return self.released or self.already


def release_message(
    config: Config, store: QuarantineStore, qid: str, actor: str, reason: str = ""
) -> ReleaseResult:
    """Release one held message and record the outcome with `actor` and the reviewer's
    `reason`. Raises QuarantineError (UnknownMessage) for an id that is not in the store or
    whose message was deleted. Runs its own event loop: call it from synchronous code such as
    the CLI, or from a worker thread (the review console, which gets it from the CLI)."""
    with store.lock(qid):
        record = store.get(qid)
        if record.state == "released":
            return ReleaseResult(qid, released=False, already=True, reply="already released")
        if record.state != "held":
            raise QuarantineError(f"quarantined message {qid} is {record.state}")
        raw = store.raw(qid)
        secret = load_or_create_secret(config.quarantine.path)
        marked = f"{RELEASE_HEADER}: {make_mark(secret, qid, raw)}\r\n".encode() + raw
        target = config.release_target
        if target.host:
            reply = asyncio.run(
                _submit(target, config.relay.hostname, record.sender, record.recipients, marked)
            )
        else:
            delivery_id = Outbox(config.relay.outbox).deliver(
                marked, record.sender, record.recipients
            )
            reply = Reply.of(replies.IN_OUTBOX.format(id=delivery_id))
        if reply.ok:
            store.mark_released(qid, actor, str(reply), reason)
            return ReleaseResult(qid, released=True, already=False, reply=str(reply))
        store.record_release_failure(qid, actor, str(reply), reason)
        return ReleaseResult(qid, released=False, already=False, reply=str(reply))


async def _submit(
    target: SmtpTarget, hostname: str, sender: str, recipients: tuple[str, ...], message: bytes
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
        return await session.data(message)
    except NextHopError as failed:
        return failed.reply
    finally:
        await session.quit()

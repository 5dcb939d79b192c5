"""A release recorded in a store without sending anything: the claim and its outcome, as
`relay.release.release_message` records them, for tests about what a store keeps."""

from __future__ import annotations

from datetime import timedelta

from mailgate.filter.store.lifecycle import Change
from mailgate.filter.store.quarantine import QuarantineStore


def record_release(
    store: QuarantineStore,
    qid: str,
    actor: str,
    reply: str,
    reason: str = "",
    failed: bool = False,
) -> bool:
    """Claim `qid` and record the outcome (released, or failed): what finish returns."""
    claim = store.claim(qid, actor, timedelta(minutes=5), reason=reason)
    return store.finish(claim, Change.FAILED if failed else Change.RELEASED, reply, reason)

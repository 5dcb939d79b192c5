"""The life of a held message, one set of rules for every store:

    held --claim--> releasing --released--> released
     ^                 |  \\--unknown--> releasing with its lease ended, shown release_unknown
     +----failed-------+
    held | release_unknown --force--> releasing (a new claim: the message is sent again)
    held | released | release_unknown --delete--> deleted

A release first claims the record in one atomic step (node, time, a claim token that is also
the release mark's nonce, and a lease), so two releases of one message, from two processes
or two nodes, send it once: the second is refused "already being released". The outcome is
recorded under that claim. A `releasing` record past its lease was left by a release that
died mid-way (or whose next hop never answered the end of DATA): the next hop may or may not
have it, so it is shown as `release_unknown` and only `release --force` sends it again. A
message being released cannot be deleted.

Stores keep `held`, `releasing`, `released`, `deleted`; `release_unknown` is what a reader
sees of a `releasing` record whose lease has passed.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum

STORED_STATES = ("held", "releasing", "released", "deleted")
STATES = ("held", "releasing", "release_unknown", "released", "deleted")  # as shown


class Change(StrEnum):
    """A state change; its value is the event kind recorded for it."""

    CLAIM = "releasing"
    FORCE = "release_forced"  # a claim that may send a message a second time
    RELEASED = "released"
    FAILED = "release_failed"
    UNKNOWN = "release_unknown"  # the next hop's answer to the end of DATA never came
    DELETE = "deleted"


# The states (as shown) each change starts from, and the stored state it leads to.
FROM: dict[Change, frozenset[str]] = {
    Change.CLAIM: frozenset({"held"}),
    Change.FORCE: frozenset({"held", "release_unknown"}),
    Change.RELEASED: frozenset({"releasing", "release_unknown"}),
    Change.FAILED: frozenset({"releasing", "release_unknown"}),
    Change.UNKNOWN: frozenset({"releasing", "release_unknown"}),
    Change.DELETE: frozenset({"held", "released", "release_unknown"}),
}
TO: dict[Change, str] = {
    Change.CLAIM: "releasing",
    Change.FORCE: "releasing",
    Change.RELEASED: "released",
    Change.FAILED: "held",
    Change.UNKNOWN: "releasing",  # with the lease ended now
    Change.DELETE: "deleted",
}
# Changes that end a release: only the holder of the claim may make them.
OUTCOMES = frozenset({Change.RELEASED, Change.FAILED, Change.UNKNOWN})


@dataclass(frozen=True)
class Claim:
    """A release in flight: what its outcome is recorded under."""

    qid: str
    token: str  # also the nonce of the release mark sent with the message
    actor: str
    node: str
    lease: timedelta


def new_token() -> str:
    return secrets.token_hex(8)


def shown_state(state: str, lease_until: datetime | None, now: datetime) -> str:
    if state == "releasing" and lease_until is not None and lease_until <= now:
        return "release_unknown"
    return state


def refusal(qid: str, change: Change, shown: str) -> str | None:
    """Why `change` cannot be made to a message shown as `shown`; None if it can."""
    if shown in FROM[change]:
        return None
    if change is Change.DELETE:
        if shown == "releasing":
            return f"{qid} is being released now; it cannot be deleted while the release runs"
        return f"{qid} was already deleted"
    if change in OUTCOMES:
        return f"{qid} is {shown}: its release claim was ended by someone else"
    if shown == "releasing":
        return f"{qid} is already being released"
    if shown == "released":
        return f"{qid} was already released; nothing sent"
    if shown == "release_unknown":
        return (
            f"{qid}: an earlier release ended without an answer, so the next hop may have it; "
            f"`mailgate quarantine release --force {qid}` sends it again"
        )
    return f"{qid} was deleted; nothing sent"

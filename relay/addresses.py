"""Envelope address checks: syntax only (email-validator, no DNS on the hot path).

Relay tricks never route anywhere unexpected: the address that passes is the address as the
client wrote it, so `user%other@` and quoted local parts holding `@` reach the next hop
literally and the next hop, not us, decides what they mean. Source routes (`@a,@b:user@c`)
are dropped as RFC 5321 section 4.1.1.3 allows (aiosmtpd's parser already removes them from
angle-bracketed paths); an address without a domain (bang paths, bare local parts) is refused.
"""

from __future__ import annotations

import functools
import re

from email_validator import EmailNotValidError, validate_email

from mailgate.filter import replies

NULL_SENDER = "<>"  # how aiosmtpd hands over MAIL FROM:<>

_SOURCE_ROUTE = re.compile(r"^@[^:]*:")


class AddressRefused(Exception):
    """An envelope address we will not take; `reply` is the full SMTP reply line."""

    def __init__(self, reply: replies.SMTPReply) -> None:
        super().__init__(str(reply))
        self.reply = str(reply)


def check_sender(address: str, smtputf8: bool) -> str:
    """The sender to pass on ('' for the null sender), or AddressRefused (553 5.1.7)."""
    if address == NULL_SENDER:
        return ""
    return _check(address, smtputf8, "5.1.7", "sender")


def check_recipient(address: str, smtputf8: bool) -> str:
    """The recipient to pass on, or AddressRefused (553 5.1.3)."""
    return _check(address, smtputf8, "5.1.3", "recipient")


@functools.lru_cache(maxsize=8192)  # the same senders and recipients come again and again
def _check(address: str, smtputf8: bool, status: str, role: str) -> str:
    address = _SOURCE_ROUTE.sub("", address.strip())
    shown = _printable(address)
    if "@" not in address:
        raise AddressRefused(replies.NO_DOMAIN.format(status=status, address=shown, role=role))
    if not smtputf8 and not address.isascii():
        raise AddressRefused(replies.NEEDS_SMTPUTF8.format(address=shown, role=role))
    try:
        validate_email(
            address,
            check_deliverability=False,
            allow_smtputf8=smtputf8,
            allow_quoted_local=True,
            allow_domain_literal=True,
            globally_deliverable=False,
        )
    except EmailNotValidError as exc:
        raise AddressRefused(
            replies.BAD_ADDRESS.format(status=status, address=shown, role=role, problem=exc)
        ) from None
    return address


def _printable(text: str) -> str:
    """Echo an address back without control characters and at a bounded length."""
    cleaned = "".join(ch if ch.isprintable() else "?" for ch in text)
    return cleaned if len(cleaned) <= 256 else cleaned[:256] + "..."

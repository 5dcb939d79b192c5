"""Every SMTP reply mailgate words itself, by name, for both doors (as aiosmtpd names its
status codes). The next hop's own replies are passed on as they come; these are ours.

One name per event: the relay and the milter say the same words when the same thing happens
(the engine could not judge a message, the quarantine could not take it). A text with
`{fields}` is completed with `SMTPReply.format`, which makes each value fit for a reply line.
Imports only the verdict's `Action`.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from mailgate.filter.policy.verdict import Action

MAX_REPLY_TEXT = 400  # a reply line must stay under 512 octets (RFC 5321 4.5.3.1.5)


def reply_text(text: str) -> str:
    """Text fit for an SMTP reply line: printable, one line, bounded."""
    # Most texts (every next hop's reply the relay passes on) are printable already.
    printable = text if text.isprintable() else "".join(c if c.isprintable() else " " for c in text)
    return " ".join(printable.split())[:MAX_REPLY_TEXT]


@dataclass(frozen=True)
class SMTPReply:
    code: int
    status: str  # the enhanced status code (RFC 3463); "" where none belongs (HELO, 354)
    text: str

    def format(self, **fields: object) -> SMTPReply:
        """This reply with its `{fields}` (in the status or the text) filled in, the text as
        one printable, bounded line."""
        return replace(
            self, status=self.status.format(**fields), text=reply_text(self.text.format(**fields))
        )

    @property
    def detail(self) -> str:
        """The reply without its code: the enhanced status code and the text."""
        return f"{self.status} {self.text}" if self.status else self.text

    def __str__(self) -> str:
        return f"{self.code} {self.detail}" if self.detail else str(self.code)


# --- the verdict's refusals (a rule's reason and code replace these defaults) ------------
REFUSED_BY_POLICY = SMTPReply(550, "5.7.1", "Message refused by policy")
NOT_ACCEPTED_NOW = SMTPReply(451, "4.7.1", "Message cannot be accepted now, try again later")
REFUSAL_DEFAULTS = {Action.REJECT: REFUSED_BY_POLICY, Action.TEMPFAIL: NOT_ACCEPTED_NOW}

# --- both doors: nothing judged or kept, so the sender keeps the message and retries ------
NOT_SCANNED = SMTPReply(451, "4.3.0", "Message could not be scanned, try again later")
NOT_HELD = SMTPReply(451, "4.3.0", "Message could not be held, try again later")
NOT_RECEIVED = SMTPReply(451, "4.3.0", "Local error while receiving, try again later")

# --- the relay's session ------------------------------------------------------------------
TOO_MANY_CONNECTIONS = SMTPReply(421, "4.7.0", "Too many connections, try again later")
TOO_MANY_WITHOUT_CERTIFICATE = SMTPReply(
    421, "4.7.0", "Too many connections without a client certificate, try again later"
)
TOO_MANY_WITHOUT_CERTIFICATE_FROM = SMTPReply(
    421, "4.7.0", "Too many connections without a client certificate from {ip}, try again later"
)
NO_CERTIFICATE_IN_TIME = SMTPReply(
    421, "4.7.0", "No accepted client certificate within {seconds:g} seconds"
)
TLS_ACTIVE = SMTPReply(503, "5.5.1", "Error: TLS already active")  # RFC 3207 4.2
NOT_ALLOWED = SMTPReply(554, "5.7.1", "{ip} is not allowed to relay through {hostname}")
HELLO = SMTPReply(250, "", "{hostname}")
OK = SMTPReply(250, "2.0.0", "OK")
BYE = SMTPReply(221, "2.0.0", "Bye")

# MAIL and RCPT
SENDER_OK = SMTPReply(250, "2.1.0", "OK")
RECIPIENT_OK = SMTPReply(250, "2.1.5", "OK")
SENDER_DOMAIN_REFUSED = SMTPReply(550, "5.7.1", "Sender domain of <{sender}> is not accepted here")
NO_DOMAIN = SMTPReply(
    553,
    "{status}",
    "<{address}>: {role} address has no domain (bang paths and bare local parts are not relayed)",
)
NEEDS_SMTPUTF8 = SMTPReply(
    553, "5.6.7", "<{address}>: non-ASCII {role} address needs MAIL FROM ... SMTPUTF8"
)
BAD_ADDRESS = SMTPReply(553, "{status}", "<{address}>: bad {role} address: {problem}")
NEXT_HOP_NO_SMTPUTF8 = SMTPReply(
    553, "5.6.7", "The next hop does not support SMTPUTF8 for this {role}"
)
NEXT_HOP_NO_8BITMIME = SMTPReply(554, "5.6.3", "The next hop does not accept 8-bit mail (8BITMIME)")
TOO_MANY_RECIPIENTS = SMTPReply(452, "4.5.3", "Too many recipients")
NEXT_HOP_GONE = SMTPReply(451, "4.4.2", "The next-hop session for this transaction is gone")

# the next hop could not be talked to (its own replies are passed on as they are)
NEXT_HOP_UNEXPECTED = SMTPReply(451, "4.4.2", "Unexpected reply from the next hop: {code}")
NEXT_HOP_TLS = SMTPReply(451, "4.7.5", "Next hop {label}: {problem}")
NEXT_HOP_TLS_FAILED = SMTPReply(451, "4.7.5", "Next hop {label}: TLS failed: {problem}")
NEXT_HOP_TIMED_OUT = SMTPReply(451, "4.4.2", "Next hop {label} timed out")
NEXT_HOP_UNREACHABLE = SMTPReply(451, "4.4.1", "Next hop {label} unreachable: {problem}")
NEXT_HOP_LOST = SMTPReply(451, "4.4.2", "Connection to next hop {label} lost")
NEXT_HOP_FAILED = SMTPReply(451, "4.4.0", "Next hop {label} failed: {problem}")

# who may relay (client networks and certificates)
DENIED_NETWORK = SMTPReply(550, "5.7.1", "Relaying denied: {ip} is not in accept_from")
DENIED_NO_CERTIFICATE = SMTPReply(
    550,
    "5.7.1",
    "Relaying denied: a client certificate is required (STARTTLS with a certificate)",
)
DENIED_CERTIFICATE_NAME = SMTPReply(
    550, "5.7.1", "Relaying denied: certificate name {names} is not in client_names"
)

# DATA
NEED_RCPT = SMTPReply(503, "5.5.1", "Error: need RCPT command")  # aiosmtpd's own words
DATA_SYNTAX = SMTPReply(501, "5.5.4", "Syntax: DATA")
START_DATA = SMTPReply(354, "", "End data with <CR><LF>.<CR><LF>")
TOO_BIG = SMTPReply(552, "5.3.4", "Message too big: the limit is {limit} bytes")
HEADER_TOO_BIG = SMTPReply(552, "5.3.4", "Message header too big: the limit is {limit} bytes")
LINE_TOO_LONG = SMTPReply(
    554,
    "5.6.0",
    "Message has a line longer than {limit} bytes (RFC 5321 4.5.3.1.6); "
    "send it quoted-printable or base64 encoded",
)

# where an accepted message went
HELD = SMTPReply(250, "2.0.0", "Held for review in quarantine as {id}")
IN_OUTBOX = SMTPReply(250, "2.0.0", "Delivered to the outbox as {id}")
NOT_STORED = SMTPReply(451, "4.3.0", "Message could not be stored, try again later")
RELEASE_TIMED_OUT = SMTPReply(451, "4.4.2", "Release took longer than {limit:g} s; stopped")
COPY_REFUSED = SMTPReply(451, "4.3.0", "Required copy to <{recipient}> refused: {reply}")

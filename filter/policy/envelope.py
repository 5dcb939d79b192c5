"""The SMTP envelope as both doors see it: who sent, to whom, from where."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Envelope:
    mail_from: str
    rcpt_tos: tuple[str, ...]
    client_address: str | None = None
    client_name: str | None = None
    helo: str | None = None
    auth_user: str | None = None
    tls_version: str | None = None
    queue_id: str | None = None
    door: str = "check"  # relay | milter | check
    extra: dict[str, str] = field(default_factory=dict)

    @property
    def sender_domain(self) -> str:
        return domain_of(self.mail_from)

    @property
    def recipient_domains(self) -> tuple[str, ...]:
        return tuple(domain_of(r) for r in self.rcpt_tos)


def domain_of(address: str) -> str:
    """Lower-cased domain of an address; '' for the null sender or a bare local part."""
    address = address.strip().strip("<>")
    at = address.rfind("@")
    return address[at + 1 :].lower().rstrip(".") if at >= 0 else ""

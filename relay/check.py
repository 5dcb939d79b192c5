"""`mailgate relay --check-next-hop`: what the next hop says and shows, and whether the
configured TLS check passes, in one command.

Two connections: the first accepts any certificate so that even one that fails the check can
be shown; the second is a real delivery connection with the configured mode, so its verdict
is exactly what delivery will meet.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from datetime import datetime

import aiosmtplib
from cryptography import x509

from mailgate.filter.ops.config import Config, NextHopTLS, SmtpTarget
from mailgate.filter.ops.logs import printable
from mailgate.relay.nexthop import NextHopError, open_session, smtp_client
from mailgate.relay.tls import inspection_context, server_hostname


@dataclass
class Certificate:
    subject: str
    issuer: str
    names: list[str]
    not_before: datetime
    not_after: datetime

    @classmethod
    def from_der(cls, der: bytes) -> Certificate:
        cert = x509.load_der_x509_certificate(der)
        try:
            san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
            names = [str(n) for n in san.get_values_for_type(x509.DNSName)]
            names += [str(ip) for ip in san.get_values_for_type(x509.IPAddress)]
        except x509.ExtensionNotFound:
            names = []
        return cls(
            subject=cert.subject.rfc4514_string(),
            issuer=cert.issuer.rfc4514_string(),
            names=names,
            not_before=cert.not_valid_before_utc,
            not_after=cert.not_valid_after_utc,
        )


@dataclass
class NextHopReport:
    target: str
    mode: str
    banner: str = ""
    capabilities: list[str] = field(default_factory=list)
    starttls_offered: bool = False
    tls_version: str | None = None
    cipher: str | None = None
    certificate: Certificate | None = None
    inspection_error: str | None = None
    check_passed: bool = False
    check_detail: str = ""

    def format(self) -> str:
        lines = [f"next hop:      {self.target} (tls: {self.mode})"]
        if self.inspection_error:
            lines.append(f"connection:    failed: {self.inspection_error}")
        else:
            lines.append(f"banner:        {self.banner}")
            lines.append(f"capabilities:  {', '.join(self.capabilities) or '(none)'}")
            lines.append(f"STARTTLS:      {'offered' if self.starttls_offered else 'not offered'}")
        if self.tls_version:
            lines.append(f"TLS:           {self.tls_version}, cipher {self.cipher}")
        cert = self.certificate
        if cert is not None:
            lines += [
                f"subject:       {cert.subject}",
                f"issuer:        {cert.issuer}",
                f"names:         {', '.join(cert.names) or '(no subjectAltName)'}",
                f"valid:         {cert.not_before:%Y-%m-%d %H:%M} to "
                f"{cert.not_after:%Y-%m-%d %H:%M} UTC",
            ]
        verdict = "PASS" if self.check_passed else "FAIL"
        lines.append(f"check:         {verdict}: {self.check_detail}")
        return "\n".join(lines)


async def inspect_next_hop(target: SmtpTarget, local_hostname: str) -> NextHopReport:
    report = NextHopReport(target=f"{target.host}:{target.port}", mode=str(target.tls))
    smtp = smtp_client(target, local_hostname)
    try:
        greeting = await smtp.connect()
        report.banner = " / ".join(greeting.message.splitlines())
        ehlo = await smtp.ehlo()
        report.capabilities = ehlo.message.splitlines()[1:]
        report.starttls_offered = smtp.supports_extension("starttls")
        if report.starttls_offered:
            await smtp.starttls(
                tls_context=inspection_context(), server_hostname=server_hostname(target)
            )
            ssl_object = smtp.get_transport_info("ssl_object")
            report.tls_version = ssl_object.version()
            report.cipher = ssl_object.cipher()[0]
            der = ssl_object.getpeercert(binary_form=True)
            if der:
                report.certificate = Certificate.from_der(der)
        await smtp.quit()
    except (aiosmtplib.SMTPException, OSError) as exc:
        report.inspection_error = str(exc) or type(exc).__name__
    finally:
        smtp.close()
    try:
        session = await open_session(target, local_hostname)
    except NextHopError as failed:
        report.check_detail = str(failed.reply)
        return report
    report.check_passed = True
    report.check_detail = f"{_WHAT_PASSED[target.tls]}; {session.tls or 'no TLS'}"
    if target.tls is NextHopTLS.VERIFY_NAME:
        report.check_detail += f"; name {target.expected_name} matches"
    await session.quit()
    return report


_WHAT_PASSED = {
    NextHopTLS.NONE: "plain SMTP connection works",
    NextHopTLS.OPPORTUNISTIC: "connection works (TLS when offered, not verified)",
    NextHopTLS.REQUIRED: "encrypted connection works (certificate not verified)",
    NextHopTLS.VERIFY_CA: "certificate chain verified",
    NextHopTLS.VERIFY_NAME: "certificate chain verified",
}


def check_next_hop(config: Config) -> int:
    """Print the report; exit status 0 when the configured check passes."""
    target = config.relay.next_hop
    if not target.host:
        print(f"no next hop configured: mail is delivered into {config.relay.outbox}")
        return 1
    report = asyncio.run(inspect_next_hop(target, config.relay.hostname))
    # The banner, capabilities and certificate names are the next hop's words.
    print("\n".join(map(printable, report.format().splitlines())))
    return 0 if report.check_passed else 1

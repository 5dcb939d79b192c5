"""What a reviewer is shown of a message: its masked headers, the text of its parts as mailgate
read them, its attachments, and a verdict explained as `mailgate check` explains it.

Every value that leaves here for a page, a CSV or the JSON API has its sensitive runs masked,
so the console, a door, never handles a card number in full: header values, envelope
addresses, the Subject and the Message-ID as the audit log masks them (`mask_field`: decoded,
unfolded, card numbers however their groups are joined), free text (a body, a reason, a next
hop's reply) with `mask_sensitive`, the masking the engine applies to hit samples.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field, replace

from mailgate.filter import Engine, Envelope, ScanPool, Verdict, mask_field
from mailgate.filter.detect.masking import mask_sensitive
from mailgate.filter.message.mime import parse_message
from mailgate.filter.message.model import Message, ScanLimits
from mailgate.filter.message.rawheaders import top_headers
from mailgate.filter.message.textview import as_read
from mailgate.filter.scan.engine import envelope_from_headers
from mailgate.filter.store.quarantine import ActivityEntry, QuarantineRecord

# A page shows this much of each part's text; the rest is counted, not sent to the browser.
TEXT_SHOWN = 100_000


@dataclass(frozen=True)
class PartView:
    path: str
    declared_type: str
    detected_type: str | None
    filename: str | None
    size: int
    is_attachment: bool
    member_of: str | None
    unscannable: tuple[str, ...]
    encrypted: bool
    macros: bool
    text: str | None  # as read for the rules, masked, at most TEXT_SHOWN characters
    text_cut: int  # characters of the text not shown
    source: str | None  # an HTML part's markup, masked, to be shown as text (never rendered)


@dataclass(frozen=True)
class MessageView:
    headers: tuple[tuple[str, str], ...]  # masked
    parts: tuple[PartView, ...]
    unscannable: tuple[str, ...]

    @property
    def attachments(self) -> tuple[PartView, ...]:
        return tuple(p for p in self.parts if p.is_attachment)


def _shown(text: str) -> tuple[str, int]:
    cut = max(len(text) - TEXT_SHOWN, 0)
    return mask_sensitive(text[:TEXT_SHOWN]), cut


def message_view(raw: bytes, limits: ScanLimits | None = None) -> MessageView:
    """The message as the engine parses it (bounded by `limits`, never raising), masked."""
    try:
        message = parse_message(raw, limits or ScanLimits())
    except MemoryError:
        message = Message(raw=raw, unscannable={"over_budget"})
    parts = []
    for part in message.parts:
        text, cut = _shown(as_read(part.text)) if part.text is not None else (None, 0)
        source = None
        if part.content_type == "text/html" or "html" in part.extensions:
            source = _shown(part.payload.decode("utf-8", "replace"))[0]
        parts.append(
            PartView(
                path=part.path,
                declared_type=part.content_type,
                detected_type=part.detected_type,
                filename=mask_sensitive(part.filename) if part.filename else None,
                size=part.size,
                is_attachment=part.is_attachment,
                member_of=part.member_of,
                unscannable=tuple(sorted(part.unscannable)),
                encrypted=part.encrypted,
                macros=part.macros,
                text=text,
                text_cut=cut,
                source=source,
            )
        )
    headers = tuple((name, mask_field(value)) for name, value in top_headers(raw))
    return MessageView(headers, tuple(parts), tuple(sorted(message.unscannable)))


def masked(text: str) -> str:
    """A short text for a page (a file name a reviewer uploaded, a next hop's reply, which
    may quote an address): masked as eagerly as a field."""
    return mask_field(text)


def shown_record(record: QuarantineRecord) -> QuarantineRecord:
    """A held message's record as it is shown anywhere (the console's pages and API, the
    quarantine CLI): sender, recipients, Subject and Message-ID masked as in the audit log.
    The store keeps the envelope exact, for the release; text stored before its masking was
    complete is masked again."""
    return replace(
        record,
        sender=mask_field(record.sender),
        recipients=tuple(mask_field(a) for a in record.recipients),
        message_id=mask_field(record.message_id),
        subject=mask_field(record.subject),
        events=tuple(
            replace(e, reply=masked(e.reply), reason=mask_sensitive(e.reason))
            for e in record.events
        ),
    )


def shown_entry(entry: ActivityEntry) -> ActivityEntry:
    """A line of the history as it is shown (page, CSV): its reason and detail (a next hop's
    reply, a client address) masked like a record's events."""
    return replace(entry, reason=mask_sensitive(entry.reason), detail=masked(entry.detail))


def explain(file: str, verdict: Verdict, engine: Engine) -> str:
    """The verdict in words, as `mailgate check` prints it: action, every rule that hit with
    its mode, action and reason, and each hit's masked evidence."""
    rules = {r.id: r for r in engine.pack.rules}
    lines = [f"{file}: {str(verdict.action).upper()}"]
    if verdict.unscannable:
        lines.append(f"  could not look inside: {', '.join(verdict.unscannable)}")
    if not verdict.rules and not verdict.monitor:
        lines.append("  no rule hit")
    for rule_id in verdict.rules + verdict.monitor:
        rule = rules[rule_id]
        mode = "monitor, no action taken" if rule.mode == "monitor" else "enforce"
        lines.append(f"  rule {rule_id} ({mode}) -> {rule.action}: {rule.reason}")
        for hit in verdict.hits:
            if hit.rule == rule_id:
                count = f"{hit.count} x " if hit.count > 1 else ""
                lines.append(f"    {hit.detector} in {hit.where}: {count}{hit.sample}")
    lines.append(f"  pack {verdict.pack_version}, {verdict.timings.get('total', 0) * 1000:.1f} ms")
    return "\n".join(lines)


@dataclass(frozen=True)
class Trial:
    """A message judged on request (the console's "Try a message"); nothing is stored."""

    envelope: Envelope
    verdict: Verdict
    explanation: str
    view: MessageView
    rule_modes: dict[str, str] = field(default_factory=dict)


async def trial(pool: ScanPool, raw: bytes, name: str) -> Trial:
    """Judge `raw` in the pool's workers (under their time and memory budget) with the
    envelope `mailgate check` would use: From as sender, To/Cc/Bcc as recipients."""
    envelope = envelope_from_headers(raw)
    verdict = await pool.scan(raw, envelope)
    engine = pool.engine
    if engine is None or verdict.engine_error:
        text = f"{name}: no verdict: {verdict.engine_error or 'the rules engine is not running'}"
        return Trial(envelope, verdict, text, MessageView((), (), ()))
    view = await asyncio.get_running_loop().run_in_executor(None, message_view, raw)
    modes = {r.id: r.mode for r in engine.pack.rules}
    return Trial(envelope, verdict, explain(masked(name), verdict, engine), view, modes)

"""What the engine answers: an action, the rules behind it, and masked evidence."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from enum import IntEnum
from typing import Any


class Action(IntEnum):
    """Ordered by strength: the strongest action among enforce-mode hits wins."""

    ACCEPT = 0
    TAG = 1
    QUARANTINE = 2
    TEMPFAIL = 3
    REJECT = 4

    @classmethod
    def parse(cls, name: str) -> Action:
        return cls[name.upper()]

    def __str__(self) -> str:
        return self.name.lower()


@dataclass(frozen=True)
class Hit:
    """One piece of evidence. `sample` is always masked; the raw value never leaves the engine."""

    rule: str
    detector: str  # body, dlp:credit_card, yara, attachment, header, ...
    where: str  # part path, attachment name, archive member ("report.zip/a.exe")
    count: int = 1
    sample: str = ""
    detail: dict[str, Any] = field(default_factory=dict)  # e.g. YARA rule name and meta


@dataclass(frozen=True)
class TagAction:
    subject_prefix: str = ""
    headers: tuple[tuple[str, str], ...] = ()
    add_recipients: tuple[str, ...] = ()  # a copy for an archive or a supervisor
    # A tag rule without options: its id, named in the header RULES_HEADER.
    listed_rule: str = ""


# What a tag rule without options adds, so that `action: tag` alone is visible.
RULES_HEADER = "X-Mailgate-Rules"


@dataclass
class Verdict:
    action: Action
    rules: list[str] = field(default_factory=list)  # enforce-mode rule ids that hit
    monitor: list[str] = field(default_factory=list)  # monitor-mode rule ids that hit
    hits: list[Hit] = field(default_factory=list)
    reason: str = ""  # text for the SMTP reply (reject/tempfail) or the quarantine record
    smtp_code: int | None = None  # from a rule's reject/tempfail options
    smtp_status: str | None = None
    tags: list[TagAction] = field(default_factory=list)  # from every enforce-mode tag hit
    pack_version: str = ""
    timings: dict[str, float] = field(default_factory=dict)  # stage -> seconds
    unscannable: list[str] = field(default_factory=list)  # reasons the engine could not look
    engine_error: str | None = None  # set when the engine itself could not answer

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["action"] = str(self.action)
        return d

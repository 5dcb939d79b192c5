"""`mailgate rules stats`: hits per rule and mode from the audit log, so a monitor-mode rule is
promoted to enforce on data ("it hit 40 messages and would have changed 3 verdicts")."""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import TYPE_CHECKING, Any

from mailgate.filter.policy.verdict import Action

if TYPE_CHECKING:
    from mailgate.filter.store.fleet import AuditCounts, DailyHits


@dataclass
class RuleStats:
    rule: str
    mode: str  # enforce | monitor
    messages: int = 0  # messages the rule hit
    action: str = ""  # the rule's action; for monitor mode, what it would have done
    would_change: int = 0  # monitor mode: verdicts that enforcing it would have made stronger


@dataclass
class Stats:
    messages: int = 0  # audit records counted
    skipped: int = 0  # lines that are not audit records (other log lines, damaged JSON)
    first: str | None = None
    last: str | None = None
    rules: dict[tuple[str, str], RuleStats] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "messages": self.messages,
            "skipped": self.skipped,
            "first": self.first,
            "last": self.last,
            "rules": [asdict(s) for s in self.sorted_rules()],
        }

    def sorted_rules(self) -> list[RuleStats]:
        return sorted(self.rules.values(), key=lambda s: (s.mode, -s.messages, s.rule))


def collect(
    lines: Iterable[str], since: datetime | None = None, actions: dict[str, str] | None = None
) -> Stats:
    """Count audit lines at or after `since`. A rule's action comes from the record itself
    (`rule_actions`, written when the judging pack was known) or else from `actions`."""
    stats = Stats()
    fallback = actions or {}
    for line in lines:
        record = _record(line)
        if record is None:
            stats.skipped += bool(line.strip())
            continue
        when = _time(record.get("time"))
        if since is not None and (when is None or when < since):
            continue
        stats.messages += 1
        stamp = record.get("time")
        if stats.first is None or (stamp and stamp < stats.first):
            stats.first = stamp
        if stats.last is None or (stamp and stamp > stats.last):
            stats.last = stamp
        known = {**fallback, **(record.get("rule_actions") or {})}
        verdict = _action(record.get("action"))
        for mode in ("enforce", "monitor"):
            for rule in record.get("rules" if mode == "enforce" else "monitor") or []:
                _count(stats, rule, mode, known.get(rule, ""), verdict, 1)
    return stats


def from_database(counts: AuditCounts, actions: dict[str, str] | None = None) -> Stats:
    """The same counts from the fleet's database (`store.fleet.audit_counts`, summed there per
    rule, mode, rule action and verdict): every node's records."""
    fallback = actions or {}
    stats = Stats(messages=counts.messages)
    if counts.first is not None and counts.last is not None:
        stats.first, stats.last = _stamp(counts.first), _stamp(counts.last)
    for group in counts.groups:
        action = group.rule_action or fallback.get(group.rule, "")
        _count(stats, group.rule, group.mode, action, _action(group.action), group.messages)
    return stats


def _count(
    stats: Stats, rule: str, mode: str, action: str, verdict: Action | None, messages: int
) -> None:
    """`messages` messages hit `rule` in `mode`; the rule does `action` ("" unknown), the
    verdict was `verdict`."""
    entry = stats.rules.setdefault((rule, mode), RuleStats(rule, mode))
    entry.messages += messages
    entry.action = entry.action or action
    would = _action(action)
    if mode == "monitor" and would is not None and verdict is not None and would > verdict:
        entry.would_change += messages


def _stamp(moment: datetime) -> str:
    """As the audit record writes its time."""
    return moment.astimezone(UTC).isoformat(timespec="milliseconds")


@dataclass
class Daily:
    """Hits per rule and day (the review console's charts) and the pack each node ran last."""

    days: list[date]  # oldest first, UTC
    hits: dict[str, list[int]]  # rule -> messages it hit (enforce or monitor) per day
    versions: dict[str, str] = field(default_factory=dict)  # node -> its latest pack version

    @property
    def mixed_versions(self) -> bool:
        return len(set(self.versions.values())) > 1


def daily(lines: Iterable[str], days: int = 14, now: datetime | None = None) -> Daily:
    """Count audit lines of the last `days` days (today included) per rule and day. A record
    without a `node` counts for the node "" (a single gateway)."""
    today = (now or datetime.now(UTC)).astimezone(UTC).date()
    first = today - timedelta(days=days - 1)
    result = Daily([first + timedelta(days=n) for n in range(days)], {})
    latest: dict[str, str] = {}
    for line in lines:
        record = _record(line)
        when = _time(record.get("time")) if record else None
        if record is None or when is None:
            continue
        day = when.astimezone(UTC).date()
        if not first <= day <= today:
            continue
        for rule in {*(record.get("rules") or []), *(record.get("monitor") or [])}:
            result.hits.setdefault(rule, [0] * days)[(day - first).days] += 1
        node = str(record.get("node") or "")
        stamp = str(record.get("time"))
        if record.get("pack_version") and stamp >= latest.get(node, ""):
            latest[node] = stamp
            result.versions[node] = str(record["pack_version"])
    return result


def daily_from_database(counts: DailyHits, days: int = 14, now: datetime | None = None) -> Daily:
    """`daily` from the fleet's database (`store.fleet.daily_hits`): every node's records."""
    today = (now or datetime.now(UTC)).astimezone(UTC).date()
    first = today - timedelta(days=days - 1)
    result = Daily([first + timedelta(days=n) for n in range(days)], {}, dict(counts.versions))
    for rule, day, messages in counts.hits:
        if first <= day <= today:
            result.hits.setdefault(rule, [0] * days)[(day - first).days] += messages
    return result


def _record(line: str) -> dict[str, Any] | None:
    # journald lines may carry a prefix before the JSON: start at the first brace.
    start = line.find("{")
    if start < 0:
        return None
    try:
        record = json.loads(line[start:])
    except ValueError:
        return None
    if not isinstance(record, dict) or "action" not in record or "rules" not in record:
        return None
    return record


def _time(value: Any) -> datetime | None:
    try:
        moment = datetime.fromisoformat(str(value))
    except ValueError:
        return None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _action(name: Any) -> Action | None:
    try:
        return Action.parse(str(name))
    except KeyError:
        return None


def table(stats: Stats) -> str:
    lines = [
        f"{stats.messages} messages"
        + (f" from {stats.first} to {stats.last}" if stats.messages else "")
        + (f" ({stats.skipped} other lines skipped)" if stats.skipped else "")
    ]
    rows = stats.sorted_rules()
    if not rows:
        lines.append("no rule hit")
        return "\n".join(lines)
    width = max(len("RULE"), *(len(r.rule) for r in rows))
    lines.append(f"{'RULE':<{width}}  MODE     MESSAGES  ACTION      WOULD CHANGE")
    for r in rows:
        change = str(r.would_change) if r.mode == "monitor" and r.action else "-"
        lines.append(
            f"{r.rule:<{width}}  {r.mode:<7}  {r.messages:>8}  {r.action or '?':<10}  {change:>12}"
        )
    return "\n".join(lines)

"""`mailgate quarantine list|show|release|delete|purge`: one store, whichever door held the mail.

Exit codes: 0 done; 1 refused or failed (e.g. the next hop refused a release); 2 usage, bad
configuration, or no such message.
"""

from __future__ import annotations

import argparse
import getpass
import json
import os
import sys
from collections.abc import Callable

from mailgate.filter.detect.masking import mask_sensitive
from mailgate.filter.message.rawheaders import header_section
from mailgate.filter.ops.config import ConfigError, add_config_argument, load_config
from mailgate.filter.policy.units import argument, parse_duration, parse_since
from mailgate.filter.store.quarantine import (
    STATES,
    LocalQuarantine,
    QuarantineError,
    QuarantineRecord,
    UnknownMessage,
)
from mailgate.filter.store.release_mark import ReleaseSecretError

OK, FAILED, USAGE = 0, 1, 2


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "quarantine",
        help="list, show, release, delete and purge held messages",
        description="Work on the quarantine named by quarantine.path in the configuration.",
    )
    commands = parser.add_subparsers(dest="quarantine_command", required=True, metavar="ACTION")

    list_parser = commands.add_parser("list", help="list quarantined messages, oldest first")
    list_parser.add_argument("--json", action="store_true", help="one JSON object per line")
    list_parser.add_argument(
        "--since",
        type=argument(parse_since),
        metavar="WHEN",
        help="age such as 1d or 12h, or an ISO date/time",
    )
    list_parser.add_argument("--rule", metavar="ID", help="only messages this rule hit")
    list_parser.add_argument("--state", choices=STATES, help="only messages in this state")
    list_parser.set_defaults(func=_guarded(_list))

    show = commands.add_parser("show", help="a message's record, masked hits and headers")
    show.add_argument("id")
    show.set_defaults(func=_guarded(_show))

    release = commands.add_parser(
        "release", help="re-submit a held message to quarantine.release_to or the next hop"
    )
    release.add_argument("id")
    _add_actor(release)
    release.set_defaults(func=_guarded(_release))

    delete = commands.add_parser("delete", help="delete a message (its record is kept)")
    delete.add_argument("id")
    _add_actor(delete)
    delete.set_defaults(func=_guarded(_delete))

    purge = commands.add_parser("purge", help="remove messages and records older than an age")
    purge.add_argument(
        "--older-than",
        type=argument(parse_duration),
        metavar="AGE",
        help="e.g. 30d (default: quarantine.retention)",
    )
    _add_actor(purge)
    purge.set_defaults(func=_guarded(_purge))

    for command in (list_parser, show, release, delete, purge):
        add_config_argument(command)


def _guarded(action: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """Turn the errors an operator can cause into one line on stderr and an exit code."""

    def run(args: argparse.Namespace) -> int:
        try:
            return action(args)
        except (ConfigError, UnknownMessage) as exc:
            print(exc, file=sys.stderr)
            return USAGE
        except (QuarantineError, ReleaseSecretError, OSError) as exc:
            # OSError: the outbox or the quarantine folder could not be written.
            print(exc, file=sys.stderr)
            return FAILED

    return run


def _add_actor(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--actor",
        default=os.environ.get("SUDO_USER") or getpass.getuser(),
        help="who does this, for the record (default: $SUDO_USER or the current user)",
    )


def _open(args: argparse.Namespace) -> LocalQuarantine:
    config = load_config(args.config)
    return LocalQuarantine(config.quarantine.path)


def _printable(text: str) -> str:
    """Subjects and headers come from senders: no terminal control sequences reach the tty."""
    return "".join(c if c.isprintable() else "?" for c in text)


def _list(args: argparse.Namespace) -> int:
    store = _open(args)
    records = store.list(since=args.since, rule=args.rule, state=args.state)
    for r in records:
        if args.json:
            print(json.dumps(_summary(r), ensure_ascii=False))
        else:
            print(
                _printable(
                    f"{r.id}  {r.time:%Y-%m-%d %H:%M:%S}Z  {r.state:<8}  {r.sender or '<>'}  "
                    f"-> {', '.join(r.recipients)}  [{', '.join(r.rules)}]  {r.subject[:60]}"
                )
            )
    if not args.json:
        print(f"{len(records)} message(s)", file=sys.stderr)
    return OK


def _summary(r: QuarantineRecord) -> dict[str, object]:
    return {
        "id": r.id,
        "time": r.time.isoformat(),
        "sender": r.sender,
        "recipients": list(r.recipients),
        "subject": r.subject,
        "rules": list(r.rules),
        "monitor": list(r.monitor),
        "state": r.state,
        "size": r.size,
        "door": r.door,
        "queue_id": r.queue_id,
        "message_id": r.message_id,
        "reason": r.reason,
    }


def _show(args: argparse.Namespace) -> int:
    store = _open(args)
    r = store.get(args.id)
    lines = [
        f"id:          {r.id}",
        f"time:        {r.time.isoformat()}",
        f"state:       {r.state}",
        f"door:        {r.door}" + (f" (queue id {r.queue_id})" if r.queue_id else ""),
        f"client:      {r.client_address or '-'}",
        f"sender:      {r.sender or '<>'}",
        f"recipients:  {', '.join(r.recipients)}",
        f"subject:     {r.subject}",
        f"message-id:  {r.message_id or '-'}",
        f"size:        {r.size}",
        f"action:      {r.action}",
        f"rules:       {', '.join(r.rules) or '-'}",
        f"monitor:     {', '.join(r.monitor) or '-'}",
        f"reason:      {r.reason or '-'}",
        f"pack:        {r.pack_version or '-'}",
        "hits:",
    ]
    for hit in r.hits:
        lines.append(
            f"  {hit['rule']}: {hit['detector']} in {hit['where']} x{hit['count']}"
            + (f"  {hit['sample']}" if hit.get("sample") else "")
        )
    lines.append("events:")
    for event in r.events:
        reply = f"  {event.reply}" if event.reply else ""
        lines.append(f"  {event.time.isoformat()}  {event.kind} by {event.actor}{reply}")
    print("\n".join(_printable(line) for line in lines))
    if r.state != "deleted":
        print("headers:")
        headers = header_section(store.raw(r.id)).decode("utf-8", "replace")
        for line in headers.splitlines():
            print(f"  {_printable(mask_sensitive(line))}")
    return OK


def _release(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    store = LocalQuarantine(config.quarantine.path)
    store.get(args.id)  # unknown id: usage error before anything is sent
    # Imported here: the relay package is only needed by this one action.
    from mailgate.relay.release import release_message

    result = release_message(config, store, args.id, args.actor)
    if result.already:
        print(f"{args.id} was already released; nothing sent")
    elif result.released:
        print(f"released {args.id}: {result.reply}")
    else:
        print(f"release of {args.id} failed, still held: {result.reply}", file=sys.stderr)
    return OK if result.ok else FAILED


def _delete(args: argparse.Namespace) -> int:
    store = _open(args)
    if store.delete(args.id, args.actor):
        print(f"deleted {args.id}")
    else:
        print(f"{args.id} was already deleted")
    return OK


def _purge(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    older_than = config.quarantine.retention if args.older_than is None else args.older_than
    if older_than is None:
        print("purge: give --older-than (e.g. 30d) or set quarantine.retention", file=sys.stderr)
        return USAGE
    count = LocalQuarantine(config.quarantine.path).purge(older_than, args.actor)
    print(f"purged {count} message(s) older than {older_than} (by {args.actor})")
    return OK

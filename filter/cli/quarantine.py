"""`mailgate quarantine list|show|release|delete|purge`: one store, whichever door held the mail.

Exit codes: 0 done; 1 refused or failed (e.g. the next hop refused a release); 2 usage, bad
configuration, or no such message.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import getpass
import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from mailgate.filter.cli import FAILED, OK, USAGE
from mailgate.filter.detect.masking import mask_field
from mailgate.filter.message.rawheaders import top_headers
from mailgate.filter.ops.config import Config, ConfigError, add_config_argument, load_config
from mailgate.filter.ops.logs import json_line, printable, shown
from mailgate.filter.ops.notices import NoticeError, SenderNotices, delete_message
from mailgate.filter.ops.review import shown_record
from mailgate.filter.ops.stores import store_for
from mailgate.filter.policy.units import argument, parse_duration, parse_since
from mailgate.filter.store.quarantine import (
    STATES,
    LocalQuarantine,
    QuarantineError,
    QuarantineRecord,
    QuarantineStore,
    UnknownMessage,
)
from mailgate.filter.store.release_mark import ReleaseSecretError


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
    show.add_argument("--json", action="store_true", help="the record as one JSON object")
    show.set_defaults(func=_guarded(_show))

    release = commands.add_parser(
        "release", help="re-submit a held message to quarantine.release_to or the next hop"
    )
    release.add_argument("id")
    release.add_argument(
        "--force",
        action="store_true",
        help="also send a message whose earlier release ended without an answer "
        "(release_unknown: the next hop may have it already)",
    )
    _add_actor(release)
    _add_reason(release)
    release.set_defaults(func=_guarded(_release))

    delete = commands.add_parser("delete", help="delete a message (its record is kept)")
    delete.add_argument("id")
    _add_actor(delete)
    _add_reason(delete)
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

    import_parser = commands.add_parser(
        "import",
        help="copy a local quarantine folder into the database, history included",
        description="Copy the held, released and deleted messages of a local quarantine "
        "folder (quarantine.path before `database` was set) into the fleet's database, with "
        "their history and the purge record. Running it again copies nothing twice.",
    )
    import_parser.add_argument("path", type=Path, help="the local quarantine folder")
    import_parser.set_defaults(func=_guarded(_import))

    for command in (list_parser, show, release, delete, purge, import_parser):
        add_config_argument(command)


def _guarded(action: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """Turn the errors an operator can cause into one line on stderr and an exit code."""

    def run(args: argparse.Namespace) -> int:
        try:
            return action(args)
        except (ConfigError, UnknownMessage) as exc:
            print(exc, file=sys.stderr)
            return USAGE
        except (QuarantineError, ReleaseSecretError, NoticeError, OSError) as exc:
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


def _add_reason(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--reason", default="", help="why, for the record")
    parser.add_argument(
        "--share-reason",
        action="store_true",
        help="with quarantine.notify_sender: tell the sender the reason too",
    )


@contextlib.contextmanager
def _notices(config: Config, store: QuarantineStore) -> Iterator[SenderNotices]:
    """The sender notices, waited for before the command ends."""
    # Imported here: the relay package is only needed by the actions that send.
    from mailgate.relay.release import release_limit, send_notice

    notices = SenderNotices(config, store, functools.partial(send_notice, config))
    try:
        yield notices
    finally:
        notices.close(timeout=release_limit(config))


def _open(args: argparse.Namespace) -> QuarantineStore:
    """The store the configuration names: the local one, or the fleet's database."""
    return store_for(load_config(args.config), command=True)


def _list(args: argparse.Namespace) -> int:
    store = _open(args)
    records = store.list(since=args.since, rule=args.rule, state=args.state)
    for r in map(shown_record, records):
        if args.json:
            print(json_line(_summary(r)))
        else:
            print(
                printable(
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
        "node": r.node,
    }


def _headers(store: QuarantineStore, r: QuarantineRecord) -> list[tuple[str, str]]:
    """Every top-level header, unfolded and decoded as the engine reads it, values masked: a
    card number split by a fold or inside an encoded word is masked like a plain one."""
    if r.state == "deleted":
        return []
    return [(name, mask_field(value)) for name, value in top_headers(store.raw(r.id))]


def _show(args: argparse.Namespace) -> int:
    store = _open(args)
    r = shown_record(store.get(args.id))
    headers = _headers(store, r)
    if args.json:
        record: dict[str, Any] = r.to_dict()
        record["headers"] = [[name, value] for name, value in headers]
        print(json_line(record))
        return OK
    lines = [
        f"id:          {r.id}",
        f"time:        {r.time.isoformat()}",
        f"state:       {r.state}",
        f"door:        {r.door}" + (f" (queue id {r.queue_id})" if r.queue_id else ""),
        f"node:        {r.node or '-'}",
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
        node = f" on {event.node}" if event.node else ""
        lines.append(f"  {event.time.isoformat()}  {event.kind} by {event.actor}{node}{reply}")
    if r.state != "deleted":
        lines.append("headers:")
        lines += [f"  {name}: {value}" for name, value in headers]
    print("\n".join(printable(line) for line in lines))
    return OK


def _release(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    store = store_for(config, command=True)
    store.get(args.id)  # unknown id: usage error before anything is sent
    from mailgate.relay.release import release_message

    with _notices(config, store) as notices:
        result = release_message(
            config,
            store,
            args.id,
            args.actor,
            args.reason,
            force=args.force,
            notices=notices,
            share_reason=args.share_reason,
        )
    reply = shown(result.reply)  # the next hop's words
    if result.already:
        print(result.reply)  # "already being released" or "already released"
    elif result.released:
        print(f"released {args.id}: {reply}")
    else:
        print(f"release of {args.id} failed, still held: {reply}", file=sys.stderr)
    return OK if result.ok else FAILED


def _delete(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    store = store_for(config, command=True)
    with _notices(config, store) as notices:
        deleted = delete_message(
            store, args.id, args.actor, args.reason, notices, share_reason=args.share_reason
        )
    if deleted:
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
    count = store_for(config, command=True).purge(older_than, args.actor)
    print(f"purged {count} message(s) older than {older_than} (by {args.actor})")
    return OK


def _import(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    if config.database is None:
        print("quarantine import: set `database` first: it copies into the fleet's database",
              file=sys.stderr)  # fmt: skip
        return USAGE
    if not (args.path / "index.sqlite3").is_file():
        print(f"quarantine import: {args.path} is not a quarantine folder (no index.sqlite3)",
              file=sys.stderr)  # fmt: skip
        return USAGE
    # Imported here: psycopg is only needed with a database.
    from mailgate.filter.store.postgres import PostgresQuarantine

    source = LocalQuarantine(args.path, node=config.node)
    target = store_for(config, command=True)
    assert isinstance(target, PostgresQuarantine)
    copied = skipped = 0
    for record in source.list():
        raw = None
        if record.state != "deleted":
            with contextlib.suppress(QuarantineError):  # a file lost before the import
                raw = source.raw(record.id)
        if target.import_record(record, raw):
            copied += 1
        else:
            skipped += 1
    purges = sum(target.import_purge(purge) for purge in source.purges())
    print(
        f"imported {copied} message(s) from {args.path} ({skipped} there already), "
        f"{purges} purge record(s)"
    )
    return OK

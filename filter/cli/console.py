"""`mailgate console [--config FILE]`: serve the review console; `console adduser|deluser|token`
manage who may use it.

The server runs on the runner every door shares (filter/console/service.py): SIGTERM stops
it cleanly, SIGHUP reloads the rule pack and the live console settings.

Exit codes: 0 done; 1 the server could not start (the console extra or the database
missing) or stopped by itself; 2 usage or bad configuration (including a listen address the
console refuses, a broken pack, a port in use).
"""

from __future__ import annotations

import argparse
import functools
import getpass
import ipaddress
import sys
from typing import TYPE_CHECKING

from mailgate.filter.cli import FAILED, OK, USAGE
from mailgate.filter.ops.config import Config, ConfigError, add_config_argument, load_config
from mailgate.filter.ops.logs import setup_logging
from mailgate.filter.ops.stores import add_wait_argument, check_database

if TYPE_CHECKING:
    from mailgate.filter.console.users import UsersFile


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "console",
        help="the web console for reviewers (and its users)",
        description="Serve the review console on console.listen, or manage its users and "
        "API tokens (the console extra: pip install 'mailgate[console]').",
    )
    add_config_argument(parser)
    add_wait_argument(parser)
    parser.set_defaults(func=_serve)
    commands = parser.add_subparsers(dest="console_command", metavar="ACTION")

    adduser = commands.add_parser(
        "adduser",
        help="add a user or replace its password and role (password from stdin or a prompt)",
    )
    adduser.add_argument("name")
    adduser.add_argument("--role", required=True, choices=("auditor", "reviewer", "admin"))
    adduser.set_defaults(func=_adduser)

    deluser = commands.add_parser("deluser", help="remove a user")
    deluser.add_argument("name")
    deluser.set_defaults(func=_deluser)

    token = commands.add_parser(
        "token", help="make an API token for NAME (printed once; replaces its old token)"
    )
    token.add_argument("name")
    token.add_argument("--role", required=True, choices=("auditor", "reviewer", "admin"))
    token.add_argument("--delete", action="store_true", help="remove NAME's token instead")
    token.set_defaults(func=_token)

    for command in (adduser, deluser, token):
        add_config_argument(command)


def refusal(config: Config) -> str | None:
    """Why the console must not serve this configuration, or None. Off loopback, passwords
    and session cookies would cross the network in clear unless TLS or a proxy that
    terminates it (and signs users in) stands in front."""
    console = config.console
    host = console.listen.host
    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = host == "localhost"
    if loopback or console.tls is not None or console.trusted_proxy is not None:
        return None
    return (
        f"console.listen is {console.listen}, not a loopback address: passwords and session "
        "cookies would cross the network unencrypted. Set console.tls (cert and key), or "
        "console.trusted_proxy for a reverse proxy that terminates TLS, or listen on 127.0.0.1."
    )


def _config(args: argparse.Namespace) -> Config | None:
    try:
        return load_config(args.config)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return None


def _serve(args: argparse.Namespace) -> int:
    config = _config(args)
    if config is None:
        return USAGE
    why = refusal(config)
    if why is not None:
        print(f"mailgate console: refusing to start: {why}", file=sys.stderr)
        return USAGE
    try:
        from mailgate.filter.console import service
    except ImportError as exc:
        print(
            f"mailgate console: {exc.name} is missing: pip install 'mailgate[console]'",
            file=sys.stderr,
        )
        return FAILED
    from mailgate.relay.release import release_message, send_notice

    refused = check_database(config, "console", wait=args.wait_for_database)
    if refused:
        print(f"mailgate console: {refused}", file=sys.stderr)
        return FAILED
    setup_logging()  # remote strings (addresses, replies) masked and escaped
    return service.run(config, release_message, functools.partial(send_notice, config))


def _users(args: argparse.Namespace) -> UsersFile | None:
    from mailgate.filter.console.users import UsersFile

    config = _config(args)
    if config is None:
        return None
    return UsersFile(config.console.users, config.console.password_hashing)


def _read_password() -> str | None:
    if sys.stdin.isatty():
        first = getpass.getpass("Password: ")
        if getpass.getpass("Password again: ") != first:
            print("mailgate console: the passwords differ", file=sys.stderr)
            return None
        password = first
    else:
        password = sys.stdin.readline().rstrip("\r\n")
    if len(password) < 8:
        print("mailgate console: a password needs at least 8 characters", file=sys.stderr)
        return None
    return password


def _adduser(args: argparse.Namespace) -> int:
    from mailgate.filter.console.users import UsersFileError

    users = _users(args)
    if users is None:
        return USAGE
    password = _read_password()
    if password is None:
        return USAGE
    try:
        new = users.set_user(args.name, args.role, password)
    except (UsersFileError, OSError) as exc:
        print(f"mailgate console: {exc}", file=sys.stderr)
        return USAGE
    verb = "added" if new else "updated"
    print(f"{verb} {args.name} ({args.role}) in {users.path}")
    return OK


def _deluser(args: argparse.Namespace) -> int:
    users = _users(args)
    if users is None:
        return USAGE
    if not users.delete_user(args.name):
        print(f"mailgate console: no user {args.name!r} in {users.path}", file=sys.stderr)
        return USAGE
    print(f"deleted {args.name} from {users.path}")
    return OK


def _token(args: argparse.Namespace) -> int:
    from mailgate.filter.console.users import UsersFileError

    users = _users(args)
    if users is None:
        return USAGE
    if args.delete:
        if not users.delete_token(args.name):
            print(f"mailgate console: no token {args.name!r}", file=sys.stderr)
            return USAGE
        print(f"deleted the token of {args.name}")
        return OK
    try:
        token = users.new_token(args.name, args.role)
    except (UsersFileError, OSError) as exc:
        print(f"mailgate console: {exc}", file=sys.stderr)
        return USAGE
    print(token)
    print(
        f"token for {args.name} ({args.role}); shown once, kept only as a hash. "
        "Send it as 'Authorization: Bearer <token>'.",
        file=sys.stderr,
    )
    return OK

"""`mailgate relay [--config FILE] [--check-next-hop]`: run the smart host, or test its next hop.

The process itself is `relay/service.py` (with relay.processes > 1, `relay/frontends.py` and
its front ends), on the runner both doors share: SIGTERM and SIGINT stop accepting connections
and let transactions in progress finish; SIGHUP reopens the audit file, reloads the rule pack
(which also reloads when the rules folder changes; a broken pack is logged with file and line,
and the old one keeps serving) and re-reads relay.fail_open.
"""

from __future__ import annotations

import argparse
import logging
import socket
import sys
from multiprocessing.connection import Connection

from mailgate.filter.ops.config import ConfigError, add_config_argument, load_config
from mailgate.filter.ops.logs import setup_logging
from mailgate.filter.ops.service import EXIT_CANNOT_START
from mailgate.filter.ops.stores import add_wait_argument, check_database
from mailgate.relay import loop as relay_loop
from mailgate.relay.check import check_next_hop
from mailgate.relay.frontends import supervise
from mailgate.relay.service import serve


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "relay",
        help="run the compliance SMTP smart host",
        description="Run the compliance SMTP smart host (relay.* in the configuration).",
    )
    add_config_argument(parser)
    add_wait_argument(parser)
    parser.add_argument(
        "--check-next-hop",
        action="store_true",
        help="connect to the configured next hop, show its banner, capabilities, TLS and "
        "certificate, and say whether the configured TLS check passes",
    )
    # How relay.processes starts its front ends: the listening socket and the pipe to the
    # parent, as inherited file descriptors. Not for operators.
    parser.add_argument("--front-end", metavar="SOCKET_FD,PIPE_FD", help=argparse.SUPPRESS)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        print(f"mailgate relay: {exc}", file=sys.stderr)
        return EXIT_CANNOT_START
    if args.check_next_hop:
        return check_next_hop(config)
    setup_logging()  # remote strings (command words, replies) masked and escaped
    # aiosmtpd logs every command at INFO: too much for a busy relay, and not free.
    logging.getLogger("mail.log").setLevel(logging.WARNING)
    # A front end (relay.processes) only checks the schema: its parent registered the node's
    # relay, and one started again after a crash must not move the node's start.
    door = None if args.front_end is not None else "relay"
    refused = check_database(config, door, wait=args.wait_for_database)
    if refused:
        print(f"mailgate relay: {refused}", file=sys.stderr)
        return EXIT_CANNOT_START
    if args.front_end is not None:
        sock_fd, pipe_fd = (int(fd) for fd in args.front_end.split(","))
        sock = socket.socket(fileno=sock_fd)
        return relay_loop.run(serve(config, sock, Connection(pipe_fd, readable=False)))
    if config.relay.processes > 1:
        return supervise(config)
    return relay_loop.run(serve(config))

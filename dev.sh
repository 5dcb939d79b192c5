#!/usr/bin/env bash
# mailgate developer entry point.
#   ./dev.sh run    start the relay on 127.0.0.1:2525 with the default rule pack (embedded default)
#   ./dev.sh test   install what the tests need and run ruff and the test suite
# Both create ./.venv on first use. As root, `test` also installs Debian's postfix and
# libmilter-dev (a non-root developer installs them once with sudo; see README: Testing).
set -euo pipefail
cd "$(dirname "$0")"
VENV=${MAILGATE_VENV:-.venv}

apt_packages() {
    # postfix + libmilter-dev: the milter door and its real-Postfix tests; libmagic1: content types;
    # postgresql: the private servers of the fleet tests (tests/support/postgres.py);
    # chromium + chromium-driver: the console's browser tests (tests/test_console_browser.py);
    # miltertest: a real milter client for the milter protocol tests (tests/test_milter_protocol.py)
    local wanted=(postfix libmilter-dev libmagic1 build-essential postgresql chromium chromium-driver
        miltertest)
    local missing=()
    for p in "${wanted[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
    [ ${#missing[@]} -eq 0 ] && return 0
    if [ "$(id -u)" -ne 0 ]; then
        echo "dev.sh: not root, not installing ${missing[*]} (milter tests will be skipped)" >&2
        return 0
    fi
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

venv() {
    local extras="$1"
    if [ ! -x "$VENV/bin/python" ]; then
        python3 -m venv "$VENV"
    fi
    local stamp="$VENV/.installed-${extras:-base}"
    if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
        "$VENV/bin/pip" install -q --upgrade pip
        "$VENV/bin/pip" install -q -e ".${extras:+[$extras]}"
        touch "$stamp"
    fi
}

case "${1:-}" in
run)
    shift
    if [ -n "${MAILGATE_CONSOLE:-}" ]; then
        # MAILGATE_CONSOLE=1: the review console beside the relay, same configuration
        # (embedded default: http://127.0.0.1:8025/), stopped with it.
        venv console
        "$VENV/bin/mailgate" console &
        console_pid=$!
        trap 'kill "$console_pid" 2>/dev/null' EXIT
        "$VENV/bin/mailgate" relay "$@"
    else
        venv ""
        exec "$VENV/bin/mailgate" relay "$@"
    fi
    ;;
test)
    shift
    apt_packages
    if dpkg -s libmilter-dev >/dev/null 2>&1; then venv "milter,test,console"; else venv "test,console"; fi
    "$VENV/bin/ruff" check filter relay tests bench
    "$VENV/bin/ruff" format --check filter relay tests bench
    "$VENV/bin/pytest" "$@"
    # The relay serves on uvloop, or on asyncio's own loop without it (relay/loop.py): a full
    # run also runs the relay's tests on the latter. Not test_relay_units (pure functions, no
    # loop) nor test_relay_release: a release runs on asyncio.run's loop in either run, and
    # its holds through the relay are test_relay_flow's on both loops.
    if [ $# -eq 0 ]; then
        relay_tests=()
        for t in tests/test_relay_*.py; do
            case "$t" in
            */test_relay_units.py | */test_relay_release.py) ;;
            *) relay_tests+=("$t") ;;
            esac
        done
        MAILGATE_EVENT_LOOP=asyncio "$VENV/bin/pytest" -q "${relay_tests[@]}"
    fi
    ;;
*)
    echo "usage: ./dev.sh run [relay options] | ./dev.sh test [pytest options]" >&2
    exit 2
    ;;
esac

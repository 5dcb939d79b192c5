"""Fixtures every test module may use: the relay harness (a background event loop, a worker
pool on the door test pack, a recording next hop, and a relay factory)."""

from support.relay_fixtures import (  # noqa: F401
    bg_fixture,
    make_relay_fixture,
    pack_fixture,
    pool_fixture,
    sink_fixture,
)

"""What every test module gets: the relay harness's fixtures (a background event loop, a worker
pool on the door test pack, a recording next hop, a relay factory, test certificates) and one
Hypothesis profile: no deadline (the machine is shared; speed is measured only in bench/) and
derandomised, so every run tries the same examples."""

from hypothesis import settings

from tests.support.relay_fixtures import (  # noqa: F401
    bg_fixture,
    make_relay_fixture,
    pack_fixture,
    pki_fixture,
    pool_fixture,
    sink_fixture,
)

settings.register_profile("mailgate", deadline=None, derandomize=True)
settings.load_profile("mailgate")

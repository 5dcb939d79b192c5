"""pytest fixtures shared by the relay tests, registered for every test module by
tests/conftest.py under their short names (bg, pack, pool, sink, make_relay, pki)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from mailgate.filter.scan.pool import ScanPool
from tests.support.background_loop import BackgroundLoop
from tests.support.certs import Pki, make_pki
from tests.support.packs import write_pack
from tests.support.relay_harness import RunningRelay, start_pool, write_config
from tests.support.smtp_sink import SmtpSink

MakeRelay = Callable[..., RunningRelay]


@pytest.fixture(name="bg", scope="module")
def bg_fixture() -> Iterator[BackgroundLoop]:
    loop = BackgroundLoop()
    yield loop
    loop.close()


@pytest.fixture(name="pack", scope="module")
def pack_fixture(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_pack(tmp_path_factory.mktemp("pack"))


@pytest.fixture(name="pool", scope="module")
def pool_fixture(bg: BackgroundLoop, pack: Path) -> Iterator[ScanPool]:
    scan_pool = start_pool(bg, pack)
    yield scan_pool
    bg.run(scan_pool.close())


@pytest.fixture(name="sink")
def sink_fixture(bg: BackgroundLoop) -> Iterator[SmtpSink]:
    next_hop = SmtpSink(bg).start()
    yield next_hop
    next_hop.stop()


@pytest.fixture(name="make_relay")
def make_relay_fixture(
    bg: BackgroundLoop, pool: ScanPool, pack: Path, tmp_path: Path
) -> Iterator[MakeRelay]:
    running: list[RunningRelay] = []

    def make(
        relay: dict[str, Any] | None = None, scanner: Any = None, **sections: Any
    ) -> RunningRelay:
        config = write_config(tmp_path / f"relay{len(running)}", pack, relay, **sections)
        started = RunningRelay(bg, config, scanner or pool)
        running.append(started)
        return started

    yield make
    for started in running:
        started.stop()


@pytest.fixture(name="pki", scope="module")
def pki_fixture(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))

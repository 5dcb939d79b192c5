"""The relay's event loop (relay/loop.py): uvloop where it is installed, asyncio's own when
MAILGATE_EVENT_LOOP=asyncio says so or uvloop is missing. The relay tests run on whichever the
environment chooses (tests/support/background_loop.py); CI runs them once on each."""

from __future__ import annotations

import asyncio
import sys

import pytest
import uvloop

from mailgate.relay import loop as relay_loop
from tests.support.background_loop import BackgroundLoop


async def running_loop_name() -> str:
    return relay_loop.loop_name(asyncio.get_running_loop())


def test_uvloop_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(relay_loop.CHOICE, raising=False)
    assert relay_loop.run(running_loop_name()) == "uvloop"
    monkeypatch.setenv(relay_loop.CHOICE, "uvloop")
    assert relay_loop.run(running_loop_name()) == "uvloop"


def test_asyncio_when_chosen(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(relay_loop.CHOICE, "asyncio")
    assert relay_loop.run(running_loop_name()) == "asyncio"


def test_asyncio_when_uvloop_is_not_installed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(relay_loop.CHOICE, raising=False)
    monkeypatch.setitem(sys.modules, "uvloop", None)  # import uvloop raises ImportError
    assert relay_loop.run(running_loop_name()) == "asyncio"


def test_an_unknown_choice_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(relay_loop.CHOICE, "tokio")
    with pytest.raises(ValueError, match="uvloop or asyncio"):
        relay_loop.loop_factory()


def test_the_tests_serve_on_the_loop_the_environment_chooses() -> None:
    """What the other relay tests run on: uvloop, or asyncio's loop in CI's second run."""
    background = BackgroundLoop()
    try:
        chosen = relay_loop.loop_factory()
        expected = uvloop.Loop if chosen is uvloop.new_event_loop else asyncio.BaseEventLoop
        assert isinstance(background.loop, expected)
        assert background.run(running_loop_name()) == relay_loop.loop_name(background.loop)
    finally:
        background.close()

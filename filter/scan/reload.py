"""Safe hot reload of the rule pack, shared by both doors.

On SIGHUP (the door calls `request`) and when a file under the rules folder changes (watched
with watchfiles, debounced), the folder is read once into a `PackSource` snapshot; the
snapshot is compiled (lint) and its rules' examples are run against an engine built from that
same snapshot. Only if both pass does `ScanPool.replace` serve it, which swaps every worker
atomically (a message in flight finishes on the pack it started with). Otherwise the old
pack keeps serving and every problem is logged with its file and line.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from watchfiles import awatch

from mailgate.filter.policy.pack import PackError, PackSource, build_pack
from mailgate.filter.scan.engine import Engine
from mailgate.filter.scan.examples import run_examples
from mailgate.filter.scan.pool import ScanPool

log = logging.getLogger("mailgate.reload")


@dataclass(frozen=True)
class ReloadResult:
    result: str  # success | failure | unchanged
    version: str  # the pack serving after this attempt
    trigger: str  # signal | change | the caller's word
    problems: tuple[str, ...] = ()  # "file:line: [rule] what is wrong", for a failure


class PackReloader:
    def __init__(
        self,
        pool: ScanPool,
        rules_dir: Path,
        on_result: Callable[[ReloadResult], None] | None = None,
        debounce_ms: int = 500,
    ) -> None:
        self.pool = pool
        self.rules_dir = Path(rules_dir)
        self.on_result = on_result
        self.debounce_ms = debounce_ms
        self._lock = asyncio.Lock()  # one reload at a time, in the order asked
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop = asyncio.Event()
        self._watcher: asyncio.Task[None] | None = None

    # ------------------------------------------------------------------- life cycle

    async def start(self) -> None:
        """Watch the rules folder; run on the event loop the pool runs on."""
        self._loop = asyncio.get_running_loop()
        self._stop.clear()
        self._watcher = self._loop.create_task(self._watch(), name="mailgate-rules-watch")

    def request(self, trigger: str = "signal") -> concurrent.futures.Future[ReloadResult]:
        """Ask for a reload from any thread (a signal handler, the milter's main thread)."""
        assert self._loop is not None, "start() first"
        return asyncio.run_coroutine_threadsafe(self.reload(trigger), self._loop)

    async def stop(self) -> None:
        self._stop.set()
        if self._watcher is not None:
            try:
                await asyncio.wait_for(self._watcher, 5)
            except TimeoutError:
                self._watcher.cancel()
            self._watcher = None

    async def _watch(self) -> None:
        try:
            async for changes in awatch(
                self.rules_dir, debounce=self.debounce_ms, stop_event=self._stop
            ):
                names = sorted({Path(path).name for _, path in changes})
                log.info("rules folder changed (%s)", ", ".join(names[:5]))
                await self.reload("change")
        except Exception:
            # SIGHUP still works; the folder may have been removed or is not watchable.
            log.exception("watching %s stopped; reload with SIGHUP", self.rules_dir)

    # ----------------------------------------------------------------------- reload

    async def reload(self, trigger: str = "signal") -> ReloadResult:
        """Validate the folder's pack and serve it if it passes. Never raises."""
        async with self._lock:
            result = await self._reload(trigger)
        if result.result == "failure":
            log.error(
                "rule pack reload (%s) refused, pack %s keeps serving; %d problem(s):",
                trigger,
                result.version,
                len(result.problems),
            )
            for problem in result.problems:
                log.error("  %s", problem)
        elif result.result == "success":
            log.info("rule pack reload (%s): pack %s now serving", trigger, result.version)
        if self.on_result is not None:
            try:
                self.on_result(result)
            except Exception:
                log.exception("reload result callback failed")
        return result

    async def _reload(self, trigger: str) -> ReloadResult:
        loop = asyncio.get_running_loop()
        old = self.pool.pack_version
        try:
            source = await loop.run_in_executor(None, PackSource.read, self.rules_dir)
        except PackError as exc:
            return ReloadResult("failure", old, trigger, tuple(map(str, exc.problems)))
        except OSError as exc:
            return ReloadResult("failure", old, trigger, (f"{self.rules_dir}: {exc}",))
        if source.version == old:
            return ReloadResult("unchanged", old, trigger)
        engine, problems = await loop.run_in_executor(None, self._validate, source)
        if engine is None:
            return ReloadResult("failure", old, trigger, problems)
        try:
            await self.pool.replace(source, engine)
        except Exception as exc:  # workers failed to start on it: the old ones still serve
            log.exception("new pack %s did not start", source.version)
            return ReloadResult("failure", old, trigger, (f"workers did not start: {exc}",))
        return ReloadResult("success", self.pool.pack_version, trigger)

    def _validate(self, source: PackSource) -> tuple[Engine | None, tuple[str, ...]]:
        """The engine for the snapshot, or None and every problem: lint first, then its
        rules' examples."""
        try:
            pack = build_pack(source)
        except PackError as exc:
            return None, tuple(map(str, exc.problems))
        engine = Engine(pack, self.pool.limits)
        _, failures = run_examples(engine, self.rules_dir)
        if not failures:
            return engine, ()
        rules = {rule.id: rule for rule in pack.rules}
        return None, tuple(
            f"{source.label(rules[f.rule_id].file)}:{rules[f.rule_id].line}: {f}" for f in failures
        )

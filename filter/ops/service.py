"""What both doors build from the configuration before they serve: the scan pool.

One place, so the relay and the milter run the pack under the same budgets.
"""

from __future__ import annotations

from mailgate.filter import ScanPool
from mailgate.filter.ops.config import Config
from mailgate.filter.scan.confine import Confinement


def scan_pool_for(config: Config, workers: int | None = None) -> ScanPool:
    """The worker pool `engine:` describes, for the pack in `rules`; `workers` overrides
    `engine.workers` for a process that scans only now and then (the review console)."""
    return ScanPool(
        config.rules,
        workers=workers or config.engine.workers,
        time_budget=config.engine.time_budget,
        memory_budget=config.engine.memory_budget,
        confinement=Confinement(user=config.engine.user, landlock=config.engine.confine),
    )

"""Every threshold in one place: the guide's numbers, the project's, the target's, the run's.

`Limits` holds the defaults of the strategy guide. `[tool.pgrunbook]` may
override any of them for every target, a target's own table for itself, and
a runbook's parameters for one run (a parameter left at 0 or empty means
"as configured"). `level()` turns a figure and its two limits into a status.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields, replace
from typing import Any

from . import config
from .errors import ConfigError
from .findings import Status


@dataclass(frozen=True)
class Limits:
    pool_limit: int = 20  # the application's connection pool (DATABASE_CONNECTION_LIMIT)
    pool_warn_pct: float = 80  # WARN when this share of the pool is in use
    storage_warn_pct: float = 80  # the guide's storage alert
    storage_crit_pct: float = 90
    slow_ms: float = 100  # a statement averaging more than this is slow
    rpo_h: float = 24  # the newest verified backup must be younger than this
    rto_min: float = 15  # a restore, start to verified, within this
    keep_h: float = 48  # databases kept by swaps, and pre-migration backups
    retention_days: float = 7  # backups older than this are past retention (7 free tier, 30 pro)
    unused_index_min_days: float = 7  # index statistics younger than this cannot call an index unused

    @classmethod
    def names(cls) -> set[str]:
        return {f.name for f in fields(cls)}

    def with_values(self, values: dict[str, Any], *, where: str) -> "Limits":
        """These limits with `values` (config or parameters) applied; 0, None or "" leave one as it is."""
        changes = {}
        for name, value in values.items():
            if name not in self.names() or value in (None, "", 0):
                continue
            kind = type(getattr(self, name))
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
                    or value < 0:
                raise ConfigError(f"{name} = {value!r} in {where}: give a positive number")
            changes[name] = kind(value)
        return replace(self, **changes)


def for_target(target: Any = None, **overrides: Any) -> "Limits":
    """The limits for `target` (a Target or a name): project config, then the target's, then `overrides`."""
    s = config.settings()
    limits = Limits().with_values(s.limits, where="[tool.pgrunbook]")
    name = getattr(target, "name", target)
    if name:
        limits = limits.with_values(s.targets.get(name, {}), where=f"[tool.pgrunbook.targets.{name}]")
    return limits.with_values(overrides, where="the runbook's parameters")


def level(value: float, warn: float, crit: float) -> Status:
    """CRIT at or over `crit`, WARN at or over `warn`, else OK."""
    return Status.CRIT if value >= crit else Status.WARN if value >= warn else Status.OK

"""Every threshold in one place: the guide's numbers, the project's, the target's, the run's.

`Limits` holds the defaults of the strategy guide. `[tool.pgrunbook]` may
override any of them for every target, a target's own table for itself, and
a runbook's parameters for one run (a parameter left at 0 or empty means
"as configured"). `level()` turns a figure and its two limits into a status.
"""

from __future__ import annotations

import math
from typing import Any

from . import config
from .findings import Status
from .thresholds import Limits

__all__ = ["DEFAULTS", "Limits", "for_target", "level"]


def for_target(target: Any = None, **overrides: Any) -> Limits:
    """The limits for `target` (a Target or a name): project config, then the target's, then
    `overrides`."""
    s = config.settings()
    limits = Limits().with_values(s.limits, where="[tool.pgrunbook]")
    name = getattr(target, "name", target)
    if name:
        limits = limits.with_values(
            s.targets.get(name, {}), where=f"[tool.pgrunbook.targets.{name}]"
        )
    return limits.with_values(overrides, where="the runbook's parameters")


DEFAULTS = (
    Limits()
)  # the guide's numbers, for the defaults of check functions called without a target


def level(value: float, warn: float, crit: float = math.inf, *, falling: bool = False) -> Status:
    """The status of a figure against its two limits: CRIT at or over `crit`, WARN at or over
    `warn`, else OK; with `falling` (a figure that is bad when low) CRIT under `crit`, WARN under
    `warn`. Without `crit` a figure is at worst WARN."""
    if falling:
        crit = -math.inf if crit == math.inf else crit
        return Status.CRIT if value < crit else Status.WARN if value < warn else Status.OK
    return Status.CRIT if value >= crit else Status.WARN if value >= warn else Status.OK

"""The thresholds themselves: `Limits`, the strategy guide's numbers, and how configuration or
a run's parameters change them (checked: a bad value is one line naming where it is). Where
they come from for a target is `limits`."""

from __future__ import annotations

import math
from dataclasses import dataclass, fields, replace
from typing import Any

from .errors import ConfigError


@dataclass(frozen=True)
class Limits:
    pool_limit: int = 20  # the application's connection pool (DATABASE_CONNECTION_LIMIT)
    pool_warn_pct: float = 80  # WARN when this share of the pool is in use
    storage_warn_pct: float = 80  # the guide's storage alert
    storage_crit_pct: float = 90
    slow_ms: float = 100  # a statement averaging more than this is slow
    rpo_h: float = 24  # the newest verified backup must be younger than this
    # the dead man's switch of a protected target: its newest verified backup older than this
    # is CRIT (the guide's daily backup and two hours of grace; never beyond twice rpo_h)
    backup_crit_h: float = 26
    archive_wait_warn_s: float = 300  # WAL archiving: the oldest segment not yet archived ...
    archive_wait_crit_s: float = 3600  # ... is the RPO of a restore to a moment
    rto_min: float = 15  # a restore, start to verified, within this
    keep_h: float = 48  # databases kept by swaps, and pre-migration backups
    retention_days: float = 7  # backups older than this are past retention (7 free tier, 30 pro)
    unused_index_min_days: float = (
        7  # index statistics younger than this cannot call an index unused
    )
    long_transaction_warn_s: float = 300  # an open transaction this old holds back vacuum
    long_transaction_crit_s: float = 3600
    idle_in_transaction_warn_s: float = (
        60  # a session idle inside a transaction this long holds its locks
    )
    idle_in_transaction_crit_s: float = 600
    replication_lag_warn_s: float = 30  # replay lag of a replica, or of this standby
    replication_lag_crit_s: float = 300
    cpu_warn_pct: float = 80  # the database host's CPU, sampled (the guide's alert)
    memory_warn_pct: float = 90  # the database host's memory in use
    memory_crit_pct: float = 98
    cache_hit_warn_pct: float = 99  # WARN below this share of reads served from shared buffers
    dead_rows_warn_pct: float = 20  # WARN when a table's dead rows reach this share ...
    dead_rows_min: int = 10_000  # ... and it has at least this many rows
    wraparound_warn: int = (
        1_300_000_000  # transaction-ID and multixact age (check_postgres's defaults)
    )
    wraparound_crit: int = 1_400_000_000
    staging_window_days: float = 14  # a protected migration needs staging's apply within this
    preflight_transaction_s: float = (
        60  # a migration's pre-flight names transactions open longer than this
    )
    large_scan_rows: int = 10_000  # a plan's scan, sort or join over more rows than this is named
    table_growth_pct: float = (
        10  # a performance trend names a table grown by more than this (and 1 MiB)
    )

    PAIRS = (
        ("storage_warn_pct", "storage_crit_pct"),
        ("archive_wait_warn_s", "archive_wait_crit_s"),
        ("long_transaction_warn_s", "long_transaction_crit_s"),
        ("idle_in_transaction_warn_s", "idle_in_transaction_crit_s"),
        ("replication_lag_warn_s", "replication_lag_crit_s"),
        ("memory_warn_pct", "memory_crit_pct"),
        ("wraparound_warn", "wraparound_crit"),
    )

    def _repr_html_(self) -> str:
        """The limits in effect, folded away: each finding shows the threshold it used beside it,
        and this is the appendix of all of them (the names are the configuration's keys)."""
        rows = "".join(
            f"<tr><td>{f.name}</td><td style='text-align:right'>{getattr(self, f.name):,g}"
            "</td></tr>"
            for f in fields(self)
        )
        return (
            f"<details class='pgrb-limits'><summary>all {len(fields(self))} limits in force"
            " (each finding shows the one it used)</summary><table class='pgrb-table'>"
            f"<tr><th>limit</th><th>in effect</th></tr>{rows}</table></details>"
        )

    @classmethod
    def names(cls) -> set[str]:
        return {f.name for f in fields(cls)}

    def with_values(self, values: dict[str, Any], *, where: str) -> Limits:
        """These limits with `values` (config or parameters) applied; 0, None or "" leave one as it
        is."""
        changes = {}
        for name, value in values.items():
            if name not in self.names() or value in (None, "", 0):
                continue
            kind = type(getattr(self, name))
            if (
                isinstance(value, bool)
                or not isinstance(value, (int, float))
                or not math.isfinite(value)
                or value < 0
            ):
                raise ConfigError(f"{name} = {value!r} in {where}: give a positive number")
            changes[name] = kind(value)
        limits = replace(self, **changes)
        for warn, crit in self.PAIRS:
            if getattr(limits, warn) > getattr(limits, crit):
                raise ConfigError(
                    f"{warn} = {getattr(limits, warn):g} is above {crit} ="
                    f" {getattr(limits, crit):g} in {where}: give a WARN level at or below the CRIT"
                    " level"
                )
        return limits

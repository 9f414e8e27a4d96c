"""Checks of the `status` runbook: is the target reachable, and how does it stand.

Everything here only reads. Each check returns a Finding; the tables an
operator drills into are DataFrames.
"""

from __future__ import annotations

import re
import time
from datetime import timedelta

import psycopg

from ..base import migrations, pgrestore
from ..base.display import pretty_bytes, pretty_duration
from ..base.findings import Check, Finding, Status
from ..base.limits import DEFAULTS, level
from ..base.targets import Target
from ..facts import activity, backups, server, space
from . import recovery

SETTINGS = (
    "max_connections",
    "shared_buffers",
    "work_mem",
    "maintenance_work_mem",
    "effective_cache_size",
    "statement_timeout",
    "lock_timeout",
    "idle_in_transaction_session_timeout",
    "shared_preload_libraries",
    "wal_level",
    "max_wal_size",
    "autovacuum",
    "fsync",
    "ssl",
    "log_min_duration_statement",
    "track_io_timing",
)


def connectivity(conn: psycopg.Connection) -> Finding:
    """Server version, round-trip time and uptime."""
    t0 = time.perf_counter()
    conn.execute("SELECT 1").fetchone()
    ms = (time.perf_counter() - t0) * 1000
    me = server.server(conn)
    return Finding(
        "connectivity",
        Status.OK,
        f"PostgreSQL {me.version.split()[0]}, database {me.database}, round trip {ms:.1f} ms, "
        f"up {me.uptime}",
        value=round(ms, 2),
    )


def clients(conn: psycopg.Connection) -> Finding:
    """The pg_dump and pg_restore used with this server: OK with a client of its own major
    version; WARN where only a newer one fits (its restores stream a script, one at a time);
    CRIT where none can back it up."""
    found = pgrestore.clients_for(conn)
    if found.dump is None:
        return Finding("client programs", Status.CRIT, f"backups would fail: {found.problem}")
    if found.own_version:
        return Finding("client programs", Status.OK, found.describe())
    return Finding(
        "client programs",
        Status.WARN,
        f"no PostgreSQL {found.server_major} client is installed: {found.describe()}; install "
        f"the PostgreSQL {found.server_major} client or set PGRUNBOOK_PG_BIN for parallel "
        "restores",
    )


def settings(conn: psycopg.Connection):
    """The settings that matter, with unit and where each was set."""
    import pandas as pd  # here: spares pandas (~270 ms) at start-up

    rows = [
        (x.name, human_setting(x.setting, x.unit), x.source)
        for x in server.settings(conn, SETTINGS).values()
    ]
    return pd.DataFrame(rows, columns=["name", "setting", "source"])


_SIZE_UNITS = {"B": 1, "kB": 1024, "MB": 1024**2, "GB": 1024**3, "TB": 1024**4}
_TIME_UNITS = {"us": 1e-6, "ms": 1e-3, "s": 1, "min": 60, "h": 3600, "d": 86400}


def human_setting(setting: str, unit: str | None) -> str:
    """A setting as a person reads it: `16384` of `8kB` -> `128.0 MB`, `60000` of `ms` ->
    `1 min 0 s`, `-1` or a time of `0` -> off; values without a unit as PostgreSQL shows them."""
    if not unit or not setting.lstrip("-").replace(".", "", 1).isdigit():
        return setting
    value = float(setting)
    if value < 0:
        return f"{setting} (off)"
    scale, base = re.fullmatch(r"(\d*)(\D+)", unit).groups()
    factor = float(scale or 1)
    if base in _SIZE_UNITS:
        return pretty_bytes(value * factor * _SIZE_UNITS[base])
    if base in _TIME_UNITS:
        if value == 0 and not setting.startswith("0."):
            return "0 (off)"
        return pretty_duration(timedelta(seconds=value * factor * _TIME_UNITS[base]))
    return f"{setting} {unit}"


def settings_check(conn: psycopg.Connection) -> Finding:
    """WARN on settings that put data or operations at risk."""
    values = {name: x.setting for name, x in server.settings(conn, ("fsync", "autovacuum")).items()}
    risks = [f"{k} is off" for k in ("fsync", "autovacuum") if values.get(k) == "off"]
    preload = server.preloaded(conn)
    if preload is None:
        note = "; shared_preload_libraries is not readable by this role (pg_read_all_settings)"
    elif "pg_stat_statements" in preload:
        note = ""
    else:
        note = "; pg_stat_statements is not preloaded (query statistics unavailable)"
    if risks:
        return Finding("settings", Status.WARN, ", ".join(risks) + note)
    return Finding("settings", Status.OK, "fsync and autovacuum on" + note)


def database_size(conn: psycopg.Connection) -> Finding:
    size = space.database_size(conn)
    return Finding("database size", Status.OK, f"{pretty_bytes(size)}", value=size)


def table_sizes(conn: psycopg.Connection, *, top: int = 10):
    """Largest tables: estimated rows, total, heap, indexes and toast sizes in bytes."""
    import pandas as pd  # here: spares pandas (~270 ms) at start-up

    return pd.DataFrame(
        space.table_sizes(conn, top=top), columns=list(space.TableSize.__annotations__)
    )


def connections(conn: psycopg.Connection):
    """Client sessions of this database (this one excluded) by application and state."""
    import pandas as pd  # here: spares pandas (~270 ms) at start-up

    frame = pd.DataFrame(
        [s for s in activity.sessions(conn) if s.here],
        columns=list(activity.Session.__annotations__),
    )
    counts = frame.groupby(["application", "state"]).size().rename("connections").reset_index()
    return counts.sort_values("connections", ascending=False, ignore_index=True)


def connection_use(
    conn: psycopg.Connection,
    *,
    pool_limit: int = DEFAULTS.pool_limit,
    warn_pct: float = DEFAULTS.pool_warn_pct,
) -> Finding:
    """Client sessions of this database (this one excluded) against the application's pool."""
    every = activity.sessions(conn)
    used = sum(1 for s in every if s.here)
    pct = 100 * used / pool_limit
    return Finding(
        Check.CONNECTIONS,
        level(pct, warn_pct, 100),
        f"{used} of the pool's {pool_limit} ({pct:.0f}%); server-wide {len(every)} of "
        f"{activity.max_connections(conn)}",
        value=used,
        threshold=f"WARN >= {warn_pct:.0f}%, CRIT >= {pool_limit}",
    )


def migration_state(conn: psycopg.Connection, target) -> Finding:
    """The alembic revision against the head of migrations/, where those migrations manage the
    target
    (its app says so, or an alembic_version table is there); any other database is not judged by
    them.
    """
    if not migrations.managed(target, conn):
        return Finding(
            Check.MIGRATIONS,
            Status.OK,
            "not managed by the migrations in migrations/ "
            "(no alembic_version table, no app with migrations): not checked",
        )
    st = migrations.status(conn, target)
    pending = ", ".join(f"{r.revision} ({r.message.splitlines()[0]})" for r in st.pending)
    if st.unknown:
        return Finding(
            Check.MIGRATIONS,
            Status.CRIT,
            f"revision {', '.join(st.unknown)} is not in migrations/: the database is ahead "
            "of this checkout or was migrated by another tree",
            value=",".join(st.current),
        )
    if not st.managed:
        return Finding(
            Check.MIGRATIONS,
            Status.WARN,
            f"no alembic_version table: not under migrations ({len(st.pending)} to head)",
        )
    if st.pending:
        return Finding(
            Check.MIGRATIONS,
            Status.WARN,
            f"{len(st.pending)} pending: {pending}",
            value=",".join(st.current),
            examples=tuple(r.revision for r in st.pending),
        )
    return Finding(
        Check.MIGRATIONS, Status.OK, f"at head {', '.join(st.heads)}", value=",".join(st.current)
    )


def latest_backup(
    target: Target, conn: psycopg.Connection, *, max_age_h: float = DEFAULTS.rpo_h,
    crit_h: float = DEFAULTS.backup_crit_h,
) -> Finding:  # fmt: skip
    """The newest verified backup of the database `target` reaches, against the RPO (see
    recovery.rpo_finding)."""
    found = backups.catalogue(target, current=backups.identity(conn, target))
    verdict = recovery.rpo_finding(
        found.backups, rpo_h=max_age_h, required=backups.required(target), check=Check.BACKUP,
        crit_h=crit_h,
    )  # fmt: skip
    return recovery.with_catalogue(verdict, found, target.name)

"""Disaster-recovery drill: the recovery plan rehearsed for real on a non-production target.

The drill writes marker rows after its backup (the traffic a real disaster
would lose), simulates the disaster, restores from the newest verified
backup, and counts what was lost: the RPO actually achieved, in rows and in
time, next to the RTO.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import datetime

from psycopg import sql

from ..base import db, limits
from ..base.errors import PgRunbookError
from ..base.findings import Finding, Status
from ..base.limits import level
from ..base.targets import Target
from ..facts import catalog
from . import admin

DISASTERS = ("dropped-table", "deleted-rows", "dropped-database")
MARKER = "pgrunbook_drill_marker"


class DrillRefused(PgRunbookError):
    "Disaster drills never run on a protected (production) target"


def check_target(target: Target, disaster: str) -> Finding:
    if target.protected or target.name == "production":
        raise DrillRefused(
            f"a drill destroys data: refused on protected target {target.name!r}; "
            "rehearse on the sandbox or staging"
        )
    if disaster not in DISASTERS:
        raise ValueError(f"disaster must be one of {', '.join(DISASTERS)}, not {disaster!r}")
    return Finding("drill target", Status.OK, f"{disaster} on {target.name!r} ({target.database})")


def prepare(target: Target) -> None:
    """Create the (empty) marker table that measures the data lost after the backup."""
    with db.connect(target, readonly=False, application="pgrunbook/dr_drill") as conn:
        conn.execute(
            sql.SQL(
                "CREATE TABLE IF NOT EXISTS {} (id bigint GENERATED ALWAYS AS IDENTITY "
                "PRIMARY KEY, written_at timestamptz NOT NULL DEFAULT clock_timestamp())"
            ).format(sql.Identifier(MARKER))
        )
        conn.execute(sql.SQL("TRUNCATE {}").format(sql.Identifier(MARKER)))


@dataclass(frozen=True)
class Traffic:
    rows: int
    first_at: datetime
    last_at: datetime


def write_after_backup(target: Target, *, rows: int) -> Traffic:
    """Write `rows` marker rows, one transaction each, as live traffic would."""
    with db.connect(target, readonly=False, application="pgrunbook/dr_drill") as conn:
        for _ in range(rows):
            conn.execute(sql.SQL("INSERT INTO {} DEFAULT VALUES").format(sql.Identifier(MARKER)))
        first, last = conn.execute(
            sql.SQL("SELECT min(written_at), max(written_at) FROM {}").format(
                sql.Identifier(MARKER)
            )
        ).fetchone()
    return Traffic(rows, first, last)


def simulate(target: Target, disaster: str, *, table: str) -> Finding:
    """Do the damage."""
    if disaster == "dropped-database":
        admin.drop_database(target, target.database)
        return Finding("disaster", Status.OK, f"database {target.database!r} dropped")
    with db.connect(target, readonly=False, application="pgrunbook/dr_drill") as conn:
        found = conn.execute(
            "SELECT n.nspname, c.relname FROM pg_class c JOIN pg_namespace n"
            " ON n.oid = c.relnamespace WHERE c.oid = to_regclass(%s)",
            [table],
        ).fetchone()
        if found is None:
            raise DrillRefused(
                f"table {table!r} does not exist in {target.name!r}: name one with -p table"
            )
        rel = sql.Identifier(*found)
        if disaster == "dropped-table":
            conn.execute(sql.SQL("DROP TABLE {} CASCADE").format(rel))
            return Finding(
                "disaster", Status.OK, f"table {table!r} dropped (with what depends on it)"
            )
        gone = conn.execute(sql.SQL("DELETE FROM {}").format(rel)).rowcount
    return Finding("disaster", Status.OK, f"{gone} rows deleted from {table!r}")


def assess(target: Target, backup) -> Finding:
    """What the disaster broke, against the backup's row counts."""
    if not admin.database_exists(target, target.database):
        return Finding("impact", Status.OK, f"database {target.database!r} is gone: restore needed")

    with db.connect(target, application="pgrunbook/dr_drill") as conn:
        counts = catalog.row_counts(conn)
    damaged = [
        f"{t}: {counts.get(t, 'missing')} rows, backup {n}"
        for t, n in backup.manifest["row_counts"].items()
        if t != f"public.{MARKER}" and counts.get(t) != n
    ]
    # The damage is the drill's own doing: it is reported, not alarmed on.
    return Finding(
        "impact",
        Status.OK,
        (
            f"{len(damaged)} tables differ from the backup: restore needed"
            if damaged
            else "no table differs from the backup"
        ),
        examples=tuple(damaged),
    )


def resume(target: Target, traffic: Traffic, backup, *, kept: str | None = None) -> list[Finding]:
    """Check the target serves again, count the rows lost, drop the marker table and the damaged
    copy."""
    if kept:
        admin.drop_database(target, kept)
    with db.connect(target, readonly=False, application="pgrunbook/dr_drill") as conn:
        conn.execute("SELECT 1")
        survived = conn.execute(
            sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(MARKER))
        ).fetchone()[0]
        conn.execute(sql.SQL("DROP TABLE {}").format(sql.Identifier(MARKER)))
    lost = traffic.rows - survived
    window = (traffic.last_at - backup.end).total_seconds()
    rpo_h = limits.for_target(target).rpo_h
    rpo = Finding(
        "rpo achieved",
        level(window, rpo_h * 3600, rpo_h * 3600),
        f"{lost} of {traffic.rows} rows written after the backup were lost "
        f"(the last {window:.1f} s before the disaster)",
        value=lost,
        threshold=f"< {rpo_h:g} h of writes",
    )
    note = f"; the damaged copy {kept!r} was dropped" if kept else ""
    return [Finding("resume", Status.OK, f"{target.name!r} serves again{note}"), rpo]


def now() -> float:
    """A clock reading to measure the RTO from."""
    return time.perf_counter()


def rto_since(detected: float, target: Target) -> Finding:
    """Time from the disaster's detection to the target serving verified data again."""
    elapsed = time.perf_counter() - detected
    objective_s = limits.for_target(target).rto_min * 60
    return Finding(
        "rto achieved",
        level(elapsed, objective_s, objective_s),
        f"{elapsed:.1f} s from the disaster to service resumed",
        value=round(elapsed, 2),
        threshold=f"<= {objective_s / 60:g} min",
    )

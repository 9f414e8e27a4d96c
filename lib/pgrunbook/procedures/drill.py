"""Disaster-recovery drill: the recovery plan rehearsed for real on a non-production target.

The drill writes marker rows after its backup (the traffic a real disaster
would lose), simulates the disaster, restores from the newest verified
backup, and counts what was lost: the RPO actually achieved, in rows and in
time, next to the RTO.

The point-in-time disaster (`pitr-dropped-table`) takes a base backup
instead of a dump, drops the table together with the marker table, restores
the server to the moment just before the drop in a cluster beside it, and
copies both tables back: every marker row written before the disaster that
came back is counted, so the RPO is measured, not assumed.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import UTC, datetime

from psycopg import sql

from ..base import db, limits
from ..base.display import plural
from ..base.errors import PgRunbookError
from ..base.findings import Finding, Status
from ..base.limits import level
from ..base.targets import Target
from ..facts import catalog
from . import admin, dumps, moments, pitr, restore

PITR = "pitr-dropped-table"
DISASTERS = ("dropped-table", "deleted-rows", "dropped-database", PITR)
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

    def _repr_html_(self) -> str:
        """As a person reads it in the report: how many rows, written when (UTC)."""
        span = (self.last_at - self.first_at).total_seconds() if self.rows else 0.0
        first, last = (t.astimezone(UTC) if self.rows else t for t in (self.first_at, self.last_at))
        when = (
            f"{first:%Y-%m-%d %H:%M:%S} to {last:%H:%M:%S} UTC ({span:.2f} s)"
            if self.rows
            else "none"
        )
        return (
            "<table><tr><th>marker rows written after the backup</th><th>written</th></tr>"
            f"<tr><td>{self.rows:,}</td><td>{when}</td></tr></table>"
        )


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


def back_up(target: Target, disaster: str, *, jobs: int = 2):
    """The backup the drill restores from, proven: a dump restored into a scratch database and
    compared, or (point in time) a base backup checked by pg_verifybackup. (backup, verdict)"""
    if disaster == PITR:
        taken = pitr.take_base_backup(target, pitr.locate(target), label="dr-drill")
        return taken, pitr.base_finding(taken)
    from ..facts.backups import DRILL

    backup = dumps.create(target, jobs=jobs, label="dr-drill", purpose=DRILL)
    verdict, _ = restore.verify(target, backup, jobs=jobs)
    return backup, verdict


@dataclass(frozen=True)
class Damage:
    finding: Finding
    at: datetime  # the server's clock just before the damage
    rows: int | None = None  # rows of the dropped table just before


def simulate(target: Target, disaster: str, *, table: str) -> Damage:
    """Do the damage."""
    with db.connect(target, application="pgrunbook/dr_drill") as conn:
        at = conn.execute("SELECT clock_timestamp()").fetchone()[0]
    if disaster == "dropped-database":
        admin.drop_database(target, target.database)
        return Damage(Finding("disaster", Status.OK, f"database {target.database!r} dropped"), at)
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
        if disaster == PITR:
            rows = conn.execute(sql.SQL("SELECT count(*) FROM {}").format(rel)).fetchone()[0]
            at = conn.execute("SELECT clock_timestamp()").fetchone()[0]
            conn.execute(
                sql.SQL("DROP TABLE {}, {} CASCADE").format(rel, sql.Identifier(MARKER))
            )  # fmt: skip
            return Damage(
                Finding(
                    "disaster",
                    Status.OK,
                    f"table {table!r} ({rows} rows) dropped with the marker table, at "
                    f"{at:%H:%M:%S.%f}",
                ),
                at,
                rows,
            )
        if disaster == "dropped-table":
            conn.execute(sql.SQL("DROP TABLE {} CASCADE").format(rel))
            return Damage(
                Finding(
                    "disaster", Status.OK, f"table {table!r} dropped (with what depends on it)"
                ),
                at,
            )
        gone = conn.execute(sql.SQL("DELETE FROM {}").format(rel)).rowcount
    return Damage(Finding("disaster", Status.OK, f"{gone} rows deleted from {table!r}"), at)


def assess(target: Target, backup) -> Finding:
    """What the disaster broke, against the backup's row counts."""
    if not admin.database_exists(target, target.database):
        return Finding("impact", Status.OK, f"database {target.database!r} is gone: restore needed")
    if not hasattr(backup, "manifest"):  # a base backup: what the drop took is said by the drop
        return Finding(
            "impact", Status.OK, "a table is gone: restore to the moment before the drop"
        )

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
            f"{plural(len(damaged), 'table')} {'differs' if len(damaged) == 1 else 'differ'} from"
            " the backup: restore needed"
            if damaged
            else "no table differs from the backup"
        ),
        examples=tuple(damaged),
    )


@dataclass
class Recovery:
    findings: list[Finding]
    timeline: restore.Timeline
    kept_as: str | None = None


def recover(
    target: Target, disaster: str, damage: Damage, *, table: str, jobs: int = 2, backup=None
):
    """Restore: the drill's own dump (`backup`, made by `back_up`) swapped in, or (point in time)
    the server restored to the moment before the damage beside the running one, checked, and
    the dropped tables copied back."""
    if disaster != PITR:
        result = restore.restore(target, backup, mode="swap", jobs=jobs)
        return Recovery(list(result.findings), result.timeline, result.kept_as)
    server = pitr.locate(target)
    moment = moments.Moment("time", damage.at.isoformat())
    recovered, found = moments.restore_checked(target, server, moment, database=target.database)
    if recovered is None:
        return Recovery([found], restore.Timeline())
    findings = [found]
    try:
        findings += moments.verify(recovered, target.database)
        with recovered.phases.phase("copy the tables back"):
            for name in (table, MARKER):
                findings.append(moments.copy_back(recovered, target, name))
    finally:
        findings.append(moments.finish(recovered))
    return Recovery(findings, recovered.phases)


def resume_point_in_time(target: Target, traffic: Traffic, damage: Damage) -> list[Finding]:
    """Count the marker rows that came back and how close to the disaster the last one was: the
    RPO achieved by a restore to a moment. Then drop the marker table."""
    with db.connect(target, readonly=False, application="pgrunbook/dr_drill") as conn:
        marker = sql.Identifier(MARKER)
        if conn.execute("SELECT to_regclass(%s)", [MARKER]).fetchone()[0] is None:
            came_back, last = 0, None
        else:
            came_back, last = conn.execute(
                sql.SQL("SELECT count(*), max(written_at) FROM {}").format(marker)
            ).fetchone()
            conn.execute(sql.SQL("DROP TABLE {}").format(marker))
    lost = traffic.rows - came_back
    window = (damage.at - (last or traffic.first_at)).total_seconds()
    rpo = _rpo(
        target, window, lost,
        f"{came_back} of {traffic.rows} rows written before the disaster came back ({lost} lost);"
        f" the newest was written {window:.3f} s before it",
    )  # fmt: skip
    return [Finding("resume", Status.OK, f"{target.name!r} serves again"), rpo]


def _rpo(target: Target, window_s: float, lost: int, summary: str) -> Finding:
    """The RPO achieved: the writes lost, judged by the time they span against the objective."""
    rpo_h = limits.for_target(target).rpo_h
    return Finding(
        "rpo achieved",
        level(window_s, rpo_h * 3600, rpo_h * 3600),
        summary,
        value=lost,
        threshold=f"< {rpo_h:g} h of writes",
    )


def resume(
    target: Target, traffic: Traffic, backup, *, kept: str | None = None,
    damage: Damage | None = None, disaster: str = "",
) -> list[Finding]:  # fmt: skip
    """Check the target serves again, count the rows lost, drop the marker table and the damaged
    copy."""
    if disaster == PITR and damage is not None:
        return resume_point_in_time(target, traffic, damage)
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
    rpo = _rpo(
        target, window, lost,
        f"{lost} of {traffic.rows} rows written after the backup were lost "
        f"(the last {window:.1f} s before the disaster)",
    )  # fmt: skip
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

"""Restore and verification: nothing is replaced before its replacement is proven.

A backup is restored into a new database beside the target and checked
there (row counts and schema fingerprint against the manifest, sequences
against their columns, amcheck on every btree index). Verification drops
that copy; a restore keeps it, and in swap mode renames it into the
target's place, keeping the old database as <name>_pre_restore_<time>.
"""

from __future__ import annotations

import contextlib
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import psycopg
from psycopg import sql

from ..base import db, limits, pgrestore, pgtools, progress
from ..base.errors import PgRunbookError
from ..base.findings import Check, Finding, Status, worst
from ..base.limits import DEFAULTS, level
from ..base.targets import Target
from ..checks import recovery
from ..facts import backups, catalog, indexes, sequences
from ..facts.backups import Backup
from . import admin, debris, dumps, offsite, swaps


class RestoreFailed(PgRunbookError):
    "The restore did not complete; the target was not touched"


class RestoreRefused(PgRunbookError):
    "The backup cannot be restored into this server; nothing was started"


@dataclass
class Timeline:
    """Phases of an operation: (name, start, end) in seconds from its start."""

    started: float = field(default_factory=time.perf_counter)
    phases: list[tuple[str, float, float]] = field(default_factory=list)

    def phase(self, name: str):
        timeline = self

        class _Phase:
            def __enter__(self):
                self.t0 = time.perf_counter() - timeline.started

            def __exit__(self, *exc):
                timeline.phases.append((name, self.t0, time.perf_counter() - timeline.started))

        return _Phase()

    @property
    def total(self) -> float:
        return max((end for _, _, end in self.phases), default=0.0)

    def table(self):
        import pandas as pd  # here: spares pandas (~270 ms) at start-up

        return pd.DataFrame(
            [(n, round(s, 3), round(e, 3), round(e - s, 3)) for n, s, e in self.phases],
            columns=["phase", "start_s", "end_s", "seconds"],
        )


def plot_timeline(
    timeline: Timeline,
    *,
    objective_s: float | None = DEFAULTS.rto_min * 60,
    title: str = "Restore timeline",
):
    """Horizontal bars of the phases, with the total against the objective (None when nothing
    ran)."""
    from matplotlib.figure import Figure  # here: spares matplotlib (~450 ms) at start-up

    if not timeline.phases:
        return None
    fig = Figure(figsize=(8, 0.5 + 0.4 * max(len(timeline.phases), 1)), layout="constrained")
    ax = fig.subplots()
    for i, (_name, start, end) in enumerate(timeline.phases):
        ax.barh(i, end - start, left=start, color="#4c72b0")
    ax.set_yticks(range(len(timeline.phases)), [p[0] for p in timeline.phases])
    ax.invert_yaxis()
    ax.set_xlabel("seconds")
    goal = f" (objective {objective_s / 60:g} min)" if objective_s else ""
    ax.set_title(f"{title}: {timeline.total:.1f} s{goal}")
    return fig


def admin_connection(target: Target) -> psycopg.Connection:
    """A connection to the target's server, outside the target database, as this runbook."""
    return admin.connect(target, application="pgrunbook/restore")


_IDENT = r'"(?:[^"]|"")+"|[^\s,;"]+'
_ROLE_LINES = (
    re.compile(rf"\bOWNER TO ({_IDENT});$"),
    re.compile(
        rf"^(?:GRANT|REVOKE) .* (?:TO|FROM) ((?:{_IDENT})(?:, (?:{_IDENT}))*)"
        rf"(?: WITH GRANT OPTION)?(?: GRANTED BY {_IDENT})?;$"
    ),
    re.compile(rf"^ALTER DEFAULT PRIVILEGES FOR ROLE ({_IDENT})"),
)


def listed(names: list[str], most: int = 5) -> str:
    """The first `most` names, comma-separated, with ' ...' when there are more."""
    return ", ".join(names[:most]) + (" ..." if len(names) > most else "")


def schema_script(backup: Backup, tool: pgtools.Tool) -> str:
    """The backup's schema as the SQL script `tool` (a pg_restore that reads it) writes."""
    return pgtools.output(tool, ["--schema-only", "--file=-", str(backup.dump_path)], timeout=600)


def roles_in(script: str) -> set[str]:
    """The roles a schema script's objects are owned by or granted to."""
    roles = set()
    for line in script.splitlines():
        for pattern in _ROLE_LINES:
            if m := pattern.search(line):
                roles |= {
                    r[1:-1].replace('""', '"') if r.startswith('"') else r
                    for r in re.findall(_IDENT, m[1])
                }
    return roles - {"PUBLIC"}


def restore_into(
    target: Target,
    backup: Backup,
    database: str,
    *,
    jobs: int,
    timeline: Timeline,
    before_data: Callable[[psycopg.Connection], Any] | None = None,
    after_data: Callable[[psycopg.Connection], Any] | None = None,
    data_env: dict[str, str] | None = None,
    owners: str = "keep",
) -> Restored:
    """Create `database` on the target's server and restore the backup into it.

    Objects keep the owners and grants of the backup. Where the server lacks
    a role the backup names, `owners="keep"` refuses before anything is
    created; `owners="connecting-user"` (a copy for another environment)
    restores without owners and grants, so the role that restores owns
    everything. A backup of a newer major version than the server's is
    refused before anything is created.

    With hooks, the restore runs in three passes: the tables, then
    `before_data(connection)`, the data (its restore gets `data_env`),
    `after_data(connection)`, then indexes, constraints and triggers, which
    are so built on the data as the hooks left it. On any failure the new
    database is dropped (or, if that fails too, named in the error).
    """
    with admin_connection(target) as conn:
        way = way_in(conn, target, backup)
        with timeline.phase("roles"):
            if backup.remote:  # recorded at the backup: the dump is not read twice from the bucket
                named = set(backup.manifest.get("roles", ()))
            else:
                script = schema_script(backup, way.reader)
                named = roles_in(script)
                if rejected := pgrestore.rejected_options(conn, pgrestore.column_options(script)):
                    way = way.leaving_out(rejected)
            have = {
                r
                for (r,) in conn.execute(
                    "SELECT rolname FROM pg_roles WHERE rolname = ANY(%s)", [list(named)]
                )
            }
        missing = sorted(named - have)
        if missing and owners == "keep":
            raise RestoreFailed(
                f"{backup.id} names roles that {target.name!r}'s server does not have: "
                f"{listed(missing)}; create them first; nothing was changed"
            )
        with timeline.phase("create database"):
            admin.create(conn, database, template="template0")
    options = ["--no-password"]
    if missing:
        options += ["--no-owner", "--no-privileges"]
    url = db.with_database(target.url, database)
    dump = pgrestore.Feed(backups.feeder(backup)) if backup.remote else backup.dump_path
    jobs = 1 if backup.remote else jobs  # a pipe is read in order
    left_out = pgrestore.LeftOut()

    def hook(fn: Callable[[psycopg.Connection], Any] | None) -> None:
        if fn is not None:
            with db.connect(
                target,
                readonly=False,
                database=database,
                statement_timeout="0",
                application="pgrunbook/restore",
            ) as conn:
                fn(conn)

    def load(name: str, section: list[str], env: dict[str, str] | None = None) -> None:
        nonlocal left_out
        with timeline.phase(name):
            left_out |= way.run(dump, url, options=options + section, jobs=jobs, env=env)

    held = offsite.leased(backup) if backup.remote else contextlib.nullcontext()
    try:
        moved = progress.meter("pg_restore", total=backup.size, direction="read")
        with held, moved:  # a prune by another runner passes over a backup being read
            _passes(load, hook, before_data, after_data, data_env)
        return Restored(missing, way, left_out)
    except BaseException as e:
        try:
            admin.drop_database(target, database)
            left = "the partial copy was dropped"
        except (PgRunbookError, psycopg.Error):
            left = f"drop the partial copy {database!r} by hand"
        if isinstance(e, (pgtools.ToolFailed, OSError, psycopg.Error, PgRunbookError)):
            raise RestoreFailed(
                f"restore of {backup.id} failed, {target.name!r} untouched, {left}: {e}"
            ) from None
        raise


def _passes(load, hook, before_data, after_data, data_env=None) -> None:
    """One pass of pg_restore, or (with hooks) tables, hook, data, hook, indexes and constraints."""
    if before_data is None and after_data is None:
        load("pg_restore", [])
        return
    load("pg_restore: tables", ["--section=pre-data"])
    hook(before_data)
    load("pg_restore: data", ["--section=data"], data_env)
    hook(after_data)
    load("pg_restore: indexes and constraints", ["--section=post-data"])


@dataclass(frozen=True)
class Restored:
    """What `restore_into` did: the roles the server lacked, how the dump went in, and the
    settings of the dump's header the server does not know (left out)."""

    missing_roles: list[str]
    way: pgrestore.Restorer
    left_out: pgrestore.LeftOut = pgrestore.LeftOut()

    def record(self) -> dict[str, Any]:
        """For a verification's record: the client and the server that proved the backup."""
        return {
            "restored_with": self.way.describe(),
            "pg_restore_version": self.way.reader.version,
            "psql_version": self.way.psql.version if self.way.streamed else None,
            "server_major": self.way.server_major,
            "left_out_settings": list(self.left_out.settings),
            "left_out_column_options": list(self.left_out.column_options),
        }

    def finding(self) -> Finding | None:
        """WARN naming the column options of the source's build that the server rejected and
        the copy therefore lacks (None when nothing was left out but header settings)."""
        if not self.left_out.column_options:
            return None
        names = ", ".join(self.left_out.column_options)
        return Finding(
            "left out",
            Status.WARN,
            f"column options {names} of the source's server are unknown to this PostgreSQL "
            f"{self.way.server_major} server and were left out of the copy (planner settings, "
            "not data); set their equivalents by hand if they mattered",
        )


def dump_major(backup: Backup) -> int | None:
    """The major version of the pg_dump that wrote the backup (older manifests name it in
    'pg_dump' only)."""
    found = pgtools.major_of(backup.manifest.get("pg_dump_version"))
    if found is None and (m := re.search(r"pg_dump (\d+)", backup.manifest.get("pg_dump", ""))):
        found = int(m[1])
    return found


def way_in(conn: psycopg.Connection, target: Target, backup: Backup) -> pgrestore.Restorer:
    """How `backup` goes into the server `conn` reaches. A backup of a newer major version is
    refused: a dump restores into the same or a newer PostgreSQL only."""
    check_versions(backup, conn.info.server_version, target)
    return pgrestore.restorer_for(conn, made_by=dump_major(backup))


def check_versions(backup: Backup, server_version: int, target: Target) -> None:
    """Refuse (RestoreRefused) a backup of a newer major version than `server_version`."""
    refuse_downgrade(backup.manifest.get("server_version"), server_version, target,
                     what=f"backup {backup.id}")  # fmt: skip


def refuse_downgrade(source_version: str | None, server_version: int, target: Target, *,
                     what: str) -> None:  # fmt: skip
    """RestoreRefused, naming both versions, when `what` (a dump of PostgreSQL
    `source_version`) would go into an older server: pg_dump's output is for the same or a newer
    major version only."""
    source, here = pgtools.major_of(source_version), server_version // 10000
    if source is not None and source > here:
        raise RestoreRefused(
            f"{what} is of PostgreSQL {source_version} and {target.name!r}'s server runs "
            f"PostgreSQL {here}: a dump restores into the same or a newer major version only; "
            f"restore it into a PostgreSQL {source} or newer server"
        )


def compare(
    conn: psycopg.Connection,
    backup: Backup,
    *,
    repair_sequences: bool,
    amcheck: bool = True,
    timeline: Timeline | None = None,
) -> list[Finding]:
    """Check a restored copy against the backup's manifest."""
    timeline = timeline or Timeline()
    found = []
    with timeline.phase("row counts"):
        counts = catalog.row_counts(conn)
    expected = backup.manifest["row_counts"]
    wrong = [
        f"{t}: {counts.get(t)} rows, manifest {n}"
        for t, n in expected.items()
        if counts.get(t) != n
    ]
    wrong += [f"{t}: not in the manifest" for t in counts.keys() - expected.keys()]
    found.append(
        Finding(
            "row counts",
            Status.CRIT if wrong else Status.OK,
            (
                "; ".join(wrong[:3])
                if wrong
                else f"{len(expected)} tables, {sum(expected.values()):,} rows, as in the manifest"
            ),
            examples=tuple(wrong[:20]),
        )
    )
    with timeline.phase("schema fingerprint"):
        facts = catalog.schema_facts(conn)
    if catalog.fingerprint(facts) == backup.manifest["schema_fingerprint"]:
        found.append(Finding("schema", Status.OK, "fingerprint matches the manifest"))
    else:
        diff = catalog.schema_difference(backup.manifest.get("schema", []), facts)
        found.append(
            Finding(
                "schema",
                Status.CRIT,
                f"fingerprint differs: {', '.join(diff[:3]) or 'see manifest'}",
                examples=tuple(diff[:20]),
            )
        )
    with timeline.phase("sequences"):
        found.append(_sequences(conn, repair=repair_sequences))
        if "sequences" in backup.manifest:  # every sequence, used by a column or only by the app
            found.append(_sequence_values(conn, backup.manifest["sequences"]))
    if amcheck:
        with timeline.phase("amcheck"):
            found.append(amcheck_finding(conn))
    return found


def _sequences(conn: psycopg.Connection, *, repair: bool) -> Finding:
    behind = [s for s in sequences.sequence_states(conn) if s.behind]
    if not behind:
        return Finding(
            "sequences",
            Status.OK,
            "every sequence a column draws from (owned or by a default) is at or past its max",
        )
    names = tuple(f"{s.sequence} at {s.last_value}, {s.column} max {s.column_max}" for s in behind)
    if not repair:
        return Finding(
            "sequences", Status.WARN, f"{len(behind)} behind their column", examples=names
        )
    for s in behind:
        sequences.repair_sequence(conn, s)
    return Finding(
        "sequences",
        Status.WARN,
        f"{len(behind)} were behind their column and were moved to its max",
        examples=names,
    )


def _sequence_values(conn: psycopg.Connection, recorded: dict[str, int | None]) -> Finding:
    """Every sequence of the copy at or past its value when the backup started."""
    fallen = sequences.fallen_back(recorded, sequences.values(conn))
    if fallen:
        return Finding(
            "sequence values",
            Status.CRIT,
            f"{len(fallen)} sequences behind their value at the backup: {fallen[0]}",
            examples=tuple(fallen[:20]),
        )
    return Finding(
        "sequence values",
        Status.OK,
        f"all {len(recorded)} sequences at or past their values at the backup",
    )


def amcheck_finding(conn: psycopg.Connection) -> Finding:
    """bt_index_check on every btree index of a restored copy. A server without amcheck (no
    contrib) is WARN, a role that may not install or run it UNKNOWN with what would let it."""
    try:
        with conn.transaction():
            conn.execute("CREATE EXTENSION IF NOT EXISTS amcheck")  # in the scratch copy only
    except psycopg.errors.InsufficientPrivilege:
        return Finding(
            "amcheck",
            Status.UNKNOWN,
            f"role {conn.info.user!r} may not create the amcheck extension, so the copy's indexes "
            "were not checked for corruption: have a superuser run CREATE EXTENSION amcheck in "
            "template1, or restore as a role that may",
        )
    except psycopg.Error as e:
        return Finding(
            "amcheck",
            Status.WARN,
            f"amcheck is not available on this server ({str(e).strip().splitlines()[0]}), so "
            "the copy's indexes were not checked for corruption: install PostgreSQL's contrib "
            "package; every other check holds",
        )
    try:
        checked, corrupt, unchecked = indexes.amcheck_btree(conn)
    except psycopg.errors.InsufficientPrivilege:
        return Finding(
            "amcheck",
            Status.UNKNOWN,
            f"role {conn.info.user!r} may not run bt_index_check: GRANT EXECUTE ON FUNCTION "
            f"bt_index_check(regclass, boolean) TO {conn.info.user}",
        )
    if corrupt:
        return Finding(
            "amcheck",
            Status.CRIT,
            f"{len(corrupt)} of {checked} btree indexes corrupt",
            examples=tuple(corrupt[:20]),
        )
    if unchecked:
        return Finding(
            "amcheck",
            Status.UNKNOWN,
            f"{len(unchecked)} btree indexes could not be checked: {unchecked[0]}",
            examples=tuple(unchecked[:20]),
        )
    return Finding("amcheck", Status.OK, f"{checked} btree indexes pass bt_index_check")


def _scratch_name(backup: Backup, kind: str) -> str:
    """A scratch database's name: its own (backups of databases on one server may share an id:
    made in the same second), then the backup's id for a person reading the server's list."""
    import uuid

    return f"pgrb_{kind}_{uuid.uuid4().hex[:8]}_{backup.id.lower().replace('-', '_')}"[:63]


def verify(
    target: Target, backup: Backup, *, jobs: int = 2, enabled: bool = True
) -> tuple[Finding, Timeline]:
    """Restore into a scratch database, compare with the manifest, amcheck, drop. Records the
    result."""
    timeline = Timeline()
    if not enabled:
        return (
            Finding(
                Check.VERIFY, Status.WARN, "skipped (verify=False): the backup is not trusted yet"
            ),
            timeline,
        )
    scratch = _scratch_name(backup, "verify")
    with debris.working_on(target, scratch, f"verification of {backup.id}"):
        admin.drop_database(target, scratch)
        restored: Restored | None = None
        try:
            restored = restore_into(target, backup, scratch, jobs=jobs, timeline=timeline)
            with db.connect(
                target,
                readonly=False,
                database=scratch,
                statement_timeout="0",
                application="pgrunbook/verify",
            ) as conn:
                checks = compare(conn, backup, repair_sequences=False, timeline=timeline)
        except RestoreFailed as e:  # the backup does not restore: that is the verdict
            checks = [Finding("restore", Status.CRIT, str(e).split(": ", 1)[-1])]
        finally:
            with timeline.phase("drop scratch"):
                admin.drop_database(target, scratch)
    bad = [f for f in checks if f.status is Status.CRIT]
    result = {
        "ok": not bad,
        "at": datetime.now(UTC).isoformat(),
        "phases": timeline.phases,
        "findings": [f.to_dict() for f in checks],
        **(restored.record() if restored else {}),
    }
    dumps.record_verification(backup, result)
    summary = "; ".join(f"{f.check}: {f.summary}" for f in bad or checks)
    # what each check that is not OK names (the sequence behind, the table that differs) stays
    # with the verdict: a WARN that does not say what is left for the reader to find
    named = tuple(
        f"{f.check}: {e}" for f in bad or checks if f.status is not Status.OK for e in f.examples
    )[:20]
    # restored and matching its manifest is a verified backup; a check that could not run (amcheck
    # on a server without it, or for a role that may not) keeps the verdict from reading OK
    return (
        Finding(
            Check.VERIFY,
            Status.CRIT if bad else worst(f.status for f in checks),
            f"{'FAILED' if bad else 'verified'} in {timeline.total:.1f} s: {summary}",
            examples=named,
        ),
        timeline,
    )


@dataclass
class RestoreResult:
    backup: Backup
    database: str
    findings: list[Finding]
    timeline: Timeline
    kept_as: str | None = None
    verified: bool = True  # False: the copy failed verification and replaced nothing


def check_request(target: Target, backup: Backup, *, mode: str, confirm: str) -> Finding:
    """Everything that must hold before a restore touches anything."""
    if mode not in ("new-database", "swap"):
        raise ValueError(f"mode must be 'new-database' or 'swap', not {mode!r}")
    if mode == "swap":
        target.require_confirm(confirm, action="swapping a restored copy in")
    problems = backups.check(backup)
    source = backup.manifest.get("database")
    if not problems and source != target.database:
        return Finding(
            "manifest",
            Status.CRIT,
            f"backup {backup.id} is of database {source!r}, "
            f"not {target.database!r}: restore it into its own target",
        )
    return recovery.check_finding(backup, problems)


@dataclass
class Plan:
    """A restore checked and ready: the manifest verdict, and the clock already running."""

    target: Target
    backup: Backup
    mode: str
    confirm: str
    check: Finding
    timeline: Timeline


def prepare(
    target: Target, backup: Backup, *, mode: str = "new-database", confirm: str = ""
) -> Plan:
    """Start the RTO clock and check everything that must hold before anything is touched."""
    timeline = Timeline()
    with timeline.phase("check manifest"):
        gate = check_request(target, backup, mode=mode, confirm=confirm)
    return Plan(target, backup, mode, confirm, gate, timeline)


def execute(plan: Plan, *, jobs: int = 2, verify: bool = True) -> RestoreResult:
    """Restore beside the target and verify; in swap mode, then put the copy in its place.

    Holds the target database's lock throughout: a second restore or refresh
    of it meanwhile is refused (swaps.Busy) before it changes anything.
    """
    with swaps.exclusive(plan.target, f"restore of {plan.backup.id}"):
        return _execute(plan, jobs=jobs, verify=verify)


def _execute(plan: Plan, *, jobs: int, verify: bool) -> RestoreResult:
    target, backup, timeline = plan.target, plan.backup, plan.timeline
    if plan.check.status is Status.CRIT:
        raise RestoreFailed(f"{plan.check.summary}; nothing was changed")
    stamp = datetime.now(UTC).strftime("%Y%m%d%H%M%S")
    new = f"{target.database}_restore_{stamp}"[:63]
    restored = restore_into(target, backup, new, jobs=jobs, timeline=timeline)
    found = [f for f in [restored.finding()] if f]
    if not verify:
        found.append(
            Finding(Check.VERIFY, Status.WARN, "skipped (verify=False): the copy is not proven")
        )
    if verify:
        with db.connect(
            target,
            readonly=False,
            database=new,
            statement_timeout="0",
            application="pgrunbook/restore",
        ) as conn:
            found += compare(conn, backup, repair_sequences=True, timeline=timeline)
    if any(f.status is Status.CRIT for f in found):
        verb = "not swapped" if plan.mode == "swap" else "not proven"
        found.append(
            Finding(
                "restore",
                Status.CRIT,
                f"{verb}: the copy failed verification; "
                f"{target.database!r} is untouched; the copy is kept as {new!r} for inspection "
                f"(drop it with DROP DATABASE {sql.Identifier(new).as_string(None)})",
                value=new,
            )
        )
        return RestoreResult(backup, new, found, timeline, verified=False)
    kept = None
    if (
        plan.mode == "new-database"
    ):  # the copy is the result: renamed out of the work-in-progress names
        done = f"{target.database}_restored_{stamp}"[:63]
        with admin_connection(target) as conn:
            admin.rename(conn, new, done)
        new = done
        found.append(
            Finding(
                "restore",
                Status.OK,
                f"restored into {new!r} beside {target.database!r}, which is untouched"
                f" (new-database mode); kept {limits.for_target(target).keep_h:g} h like a swap's"
                " old database",
            )
        )
    if plan.mode == "swap":
        kept = f"{target.database}_pre_restore_{stamp}"[:63]
        existed = admin.database_exists(target, target.database)
        with timeline.phase("maintenance: swap"):
            try:
                found.append(swap(target, new, kept))
            except swaps.SwapFailed as e:
                found.append(
                    Finding(
                        "swap", Status.CRIT, f"{e}; the verified copy is kept as {new!r}", value=new
                    )
                )
                return RestoreResult(backup, new, found, timeline, verified=False)
        kept = kept if existed else None
        found.append(
            Finding(
                "swap",
                Status.OK,
                f"{new!r} is now {target.database!r}; "
                + (
                    f"the old one is kept as {kept!r} for {limits.for_target(target).keep_h:g} h"
                    if kept
                    else "there was no old one to keep"
                ),
            )
        )
    return RestoreResult(
        backup, target.database if plan.mode == "swap" else new, found, timeline, kept
    )


def restore(
    target: Target,
    backup: Backup,
    *,
    mode: str = "new-database",
    jobs: int = 2,
    confirm: str = "",
    verify: bool = True,
) -> RestoreResult:
    """`prepare` then `execute`: raises RestoreFailed, changing nothing, when the check fails."""
    return execute(prepare(target, backup, mode=mode, confirm=confirm), jobs=jobs, verify=verify)


def swap(target: Target, new: str, kept: str, *, operation: str = "restore") -> Finding:
    """Put database `new` in the target's place; the old one becomes `kept` (see `swaps`)."""
    return swaps.swap(target, new, kept, operation=operation)


def rto_finding(
    timeline: Timeline,
    *,
    objective_s: float = DEFAULTS.rto_min * 60,
    result: RestoreResult | None = None,
) -> Finding:
    """Time from start to a verified copy against the objective; no recovery time when nothing was
    recovered."""
    threshold = f"<= {objective_s / 60:g} min"
    if result is not None and not result.verified:
        return Finding(
            "rto",
            Status.CRIT,
            f"nothing recovered: the copy failed verification after {timeline.total:.1f} s",
            value=round(timeline.total, 2),
            threshold=threshold,
        )
    return Finding(
        "rto",
        level(timeline.total, objective_s, objective_s),
        f"{timeline.total:.1f} s from start to verified",
        value=round(timeline.total, 2),
        threshold=threshold,
    )


def kept(target: Target, *, kind: str = "pre_restore") -> dict[str, float]:
    """Databases kept by earlier swaps of `target` (<database>_<kind>_<UTC time>), with their age in
    hours."""
    with admin_connection(target) as conn:
        return admin.stamped_ages(admin.starting_with(conn, [f"{target.database}_{kind}_"]))


def kept_databases(target: Target, *, older_than_h: float = DEFAULTS.keep_h) -> Finding:
    """Databases kept by earlier swaps, and copies left by new-database restores, past their keeping
    time."""
    ages = {**kept(target), **kept(target, kind="restored")}
    old = [n for n, age in ages.items() if age > older_than_h]
    if old:
        return Finding(
            "kept databases",
            Status.WARN,
            f"{len(old)} kept past {older_than_h:g} h: drop them",
            examples=tuple(old),
        )
    return Finding("kept databases", Status.OK, f"{len(ages)} kept, none past {older_than_h:g} h")

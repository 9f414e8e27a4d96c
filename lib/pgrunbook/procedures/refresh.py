"""Staging refresh: a sanitized copy of the source put in the target's place, proven first.

The source is only read (pg_dump in one snapshot, through a backup with its
manifest). The copy is restored beside the target in three passes: tables;
data, masked row by row in the server as COPY loads it (a trigger per table,
so no source value is ever stored in the copy); then indexes and
constraints, built on masked values (a rule that broke a unique key fails the
build). Then
row counts and schema against the manifest, foreign keys, and the proof that
no source value of a masked column is left; only then the swap, keeping the
previous target database for `keep_previous_hours`. A protected target is
refused whatever the parameters.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import UTC, datetime

import psycopg

from ..base import db
from ..base.errors import PgRunbookError
from ..base.findings import Finding, Status
from ..base.limits import DEFAULTS
from ..base.targets import Target
from ..checks import integrity, recovery
from ..facts import backups
from ..facts.backups import Backup
from . import admin, dumps, restore, sanitize, swaps
from .restore import Timeline

MODES = ("plan", "apply")
KIND = "pre_refresh"


class RefreshRefused(PgRunbookError):
    "The refresh would write where it must not, or was not confirmed"


def check_request(source: Target, target: Target, *, mode: str, confirm: str) -> Finding:
    """Refuse a protected target, the source itself, or an unconfirmed apply on a real server."""
    if mode not in MODES:
        raise ValueError(f"mode must be 'plan' or 'apply', not {mode!r}")
    if target.protected:
        raise RefreshRefused(
            f"{target.name!r} is protected: a staging refresh never writes to it, "
            "whatever the parameters; refresh an unprotected target such as staging"
        )
    if target.fingerprint == source.fingerprint or (
        target.sandbox and source.sandbox and target.database == source.database
    ):
        raise RefreshRefused(
            f"{target.name!r} and {source.name!r} are the same database: "
            "the source is only ever read"
        )
    if mode == "apply" and not target.sandbox and confirm != target.name:
        refused = RefreshRefused(
            f"apply replaces the database of {target.name!r} (the previous one is kept) and "
            f"needs its name as confirmation (confirm={target.name!r}), given on purpose"
        )
        refused.confirm_target = target.name
        raise refused
    return Finding(
        "request",
        Status.OK,
        f"{source.name!r} is only read; {target.name!r} is not protected"
        + ("" if mode == "apply" else " (plan mode: nothing is written)"),
    )


def check_versions(
    source: Target, target: Target, conn: psycopg.Connection, ref: str = "new"
) -> None:
    """Refuse (before anything starts) a refresh whose copy cannot go into the target's server:
    a source, or a chosen backup of it, of a newer major version than the target's server."""
    if ref != "new":
        restore.check_versions(backups.find(source, ref), conn.info.server_version, target)
        return
    with db.connect(source, application="pgrunbook/refresh") as theirs:
        version = db.server_version(theirs)
    restore.refuse_downgrade(
        version, conn.info.server_version, target, what=f"a copy of {source.name!r}"
    )


def source_backup(
    source: Target, ref: str = "new", *, jobs: int = 2, enabled: bool = True
) -> Backup | None:
    """A fresh backup of the source (`new`), its newest verified one (`latest`), or one by id."""
    if not enabled:
        return None
    if ref == "new":
        return dumps.create(source, jobs=jobs, label="staging-refresh")
    return backups.find(source, ref)


def backup_finding(backup: Backup | None) -> Finding:
    if backup is None:
        return Finding("source copy", Status.OK, "not taken (plan mode)")
    problems = backups.check(backup)
    if problems:
        return recovery.check_finding(backup, problems)
    return recovery.summary(backup)


@dataclass
class RefreshResult:
    database: str | None
    findings: list[Finding]
    timeline: Timeline
    masked: list[sanitize.Masked] = field(default_factory=list)
    kept_as: str | None = None
    swapped: bool = False
    row_counts: dict[str, int] = field(default_factory=dict)

    def masked_table(self):
        """The masked tables, their masked columns and rows, as a DataFrame."""
        return sanitize.masked_frame(self.masked, self.row_counts)


def _verify(
    source: Target,
    target: Target,
    new: str,
    backup: Backup,
    rules: sanitize.Rules,
    timeline: Timeline,
) -> list[Finding]:
    copy = Target(
        f"{target.name} (copy)", db.with_database(target.url, new), sandbox=target.sandbox
    )
    with db.connect(
        copy, readonly=False, statement_timeout="0", application="pgrunbook/refresh"
    ) as conn:
        found = restore.compare(
            conn, backup, repair_sequences=True, amcheck=False, timeline=timeline
        )
        with timeline.phase("verify: foreign and unique keys"):
            found += integrity.foreign_keys(conn) + integrity.unique_keys(conn)
    with timeline.phase("verify: no personal value left"):
        found += sanitize.prove(source, copy, rules)
    return found


def _free_stamp(target: Target) -> str:
    """A UTC time (to the second) that names no database of an earlier refresh yet."""
    with admin.connect(target, application="pgrunbook/refresh") as conn:
        while True:
            stamp = datetime.now(UTC).strftime("%Y%m%d%H%M%S")
            names = [
                f"{target.database}_refresh_{stamp}"[:63],
                f"{target.database}_{KIND}_{stamp}"[:63],
            ]
            if not conn.execute(
                "SELECT 1 FROM pg_database WHERE datname = ANY(%s)", [names]
            ).fetchone():
                return stamp
            time.sleep(1)


def owners_finding(target: Target, missing: list[str]) -> Finding:
    if not missing:
        return Finding("owners", Status.OK, "owners and grants as in the source")
    with admin.connect(target, application="pgrunbook/refresh") as conn:
        user = conn.info.user
    return Finding(
        "owners",
        Status.WARN,
        f"{len(missing)} role(s) of the source do not exist on {target.name!r}'s "
        f"server ({restore.listed(missing)}): every object is owned "
        f"by {user!r}, the role the refresh connects as, and the source's grants were not restored",
        examples=tuple(missing[:20]),
    )


def apply(
    source: Target,
    target: Target,
    backup: Backup,
    rules: sanitize.Rules,
    salt: sanitize.Salt,
    *,
    jobs: int = 2,
    keep_previous_hours: float = DEFAULTS.keep_h,
    verdict: Finding | None = None,
) -> RefreshResult:
    """Restore `backup` beside the target, mask, verify; swap only when nothing is CRIT.

    `verdict` is `backup_finding(backup)` when the caller already has it (the
    files are then not hashed a second time). Holds the target database's lock
    throughout: a second refresh or restore of it meanwhile is refused.
    """
    with swaps.exclusive(target, "staging refresh"):
        return _apply(
            source,
            target,
            backup,
            rules,
            salt,
            jobs=jobs,
            keep_previous_hours=keep_previous_hours,
            verdict=verdict,
        )


def _apply(
    source: Target,
    target: Target,
    backup: Backup,
    rules: sanitize.Rules,
    salt: sanitize.Salt,
    *,
    jobs: int,
    keep_previous_hours: float,
    verdict: Finding | None,
) -> RefreshResult:
    timeline = Timeline()
    verdict = verdict or backup_finding(backup)
    if verdict.status is Status.CRIT:
        raise RefreshRefused(f"{verdict.summary}; nothing was changed")
    stamp = _free_stamp(target)
    new = f"{target.database}_refresh_{stamp}"[:63]

    masked: list[sanitize.Masked] = []

    def install(conn: psycopg.Connection) -> None:
        masked.extend(sanitize.install_masks(conn, rules))

    missing = restore.restore_into(
        target,
        backup,
        new,
        jobs=jobs,
        timeline=timeline,
        before_data=install,
        after_data=lambda conn: sanitize.remove_masks(conn, masked),
        data_env=sanitize.data_env(salt),
        owners="connecting-user",
    ).missing_roles
    try:
        found = [owners_finding(target, missing)] + _verify(
            source, target, new, backup, rules, timeline
        )
    except BaseException:
        admin.drop_database(target, new)
        raise
    if any(f.status is Status.CRIT for f in found):
        admin.drop_database(target, new)
        found.append(
            Finding(
                "swap",
                Status.CRIT,
                "not swapped: the copy failed verification and was dropped; "
                f"{target.name!r} is untouched",
            )
        )
        return RefreshResult(
            None, found, timeline, masked, row_counts=backup.manifest["row_counts"]
        )
    kept = f"{target.database}_{KIND}_{stamp}"[:63]
    existed = admin.database_exists(target, target.database)
    with timeline.phase("maintenance: swap"):
        try:
            found.append(restore.swap(target, new, kept, operation="staging refresh"))
        except swaps.SwapFailed as e:
            admin.drop_database(target, new)
            found.append(Finding("swap", Status.CRIT, f"{e}; the sanitized copy was dropped"))
            return RefreshResult(
                None, found, timeline, masked, row_counts=backup.manifest["row_counts"]
            )
    kept = kept if existed else None
    found.append(
        Finding(
            "swap",
            Status.OK,
            f"the sanitized copy is now {target.database!r}; "
            + (
                f"the previous one is kept as {kept!r} for {keep_previous_hours:g} h"
                if kept
                else "there was no previous one to keep"
            ),
        )
    )
    return RefreshResult(
        target.database,
        found,
        timeline,
        masked,
        kept,
        swapped=True,
        row_counts=backup.manifest["row_counts"],
    )


def run(
    source: Target,
    target: Target,
    backup: Backup | None,
    rules: sanitize.Rules,
    *,
    jobs: int = 2,
    keep_previous_hours: float = DEFAULTS.keep_h,
    enabled: bool = True,
    verdict: Finding | None = None,
) -> RefreshResult:
    """`apply` with the salt read here (never held by the notebook); in plan mode, nothing."""
    if not enabled or backup is None:
        return RefreshResult(None, [skipped("refresh")], Timeline())
    salt = sanitize.salt(sandbox=source.sandbox)
    return apply(
        source,
        target,
        backup,
        rules,
        salt,
        jobs=jobs,
        keep_previous_hours=keep_previous_hours,
        verdict=verdict,
    )


def plot(result: RefreshResult):
    """The refresh's phases as a timeline chart (None in plan mode)."""
    return restore.plot_timeline(result.timeline, objective_s=None, title="Staging refresh")


def prune_kept(target: Target, *, older_than_h: float, enabled: bool) -> Finding:
    """Drop databases kept by earlier refreshes once past their keeping time (only when
    `enabled`)."""
    ages = restore.kept(target, kind=KIND)
    old = sorted(n for n, age in ages.items() if age > older_than_h)
    if not enabled:
        return Finding(
            "kept databases",
            Status.OK,
            f"{len(ages)} kept by earlier refreshes, {len(old)} past "
            f"{older_than_h:g} h (dropped only in apply mode)",
            examples=tuple(old),
        )
    for name in old:
        admin.drop_database(target, name)
    return Finding(
        "kept databases",
        Status.OK,
        f"{len(old)} dropped (past {older_than_h:g} h), {len(ages) - len(old)} kept",
        examples=tuple(old),
    )


def skipped(step: str) -> Finding:
    return Finding(step, Status.OK, "skipped (plan mode): run with mode=apply to refresh")

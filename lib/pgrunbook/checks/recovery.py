"""Judgements of the backup catalogue: is it sound, proven, and young enough for the RPO?"""

from __future__ import annotations

import math
from datetime import datetime

from ..base.display import plural, timestamp
from ..base.findings import Check, Finding, Status, worst
from ..base.limits import DEFAULTS, level
from ..facts import wal
from ..facts.backups import Backup, Catalogue, check


def summary(backup: Backup) -> Finding:
    """What the backup holds and which pg_dump made it."""
    m = backup.manifest
    took = (backup.end - datetime.fromisoformat(m["start"])).total_seconds()
    return Finding(
        "backup",
        Status.OK,
        f"{backup.id}: {len(m['row_counts'])} tables, "
        f"{sum(m['row_counts'].values()):,} rows, {backup.size / 2**20:.1f} MiB in {took:.1f} s "
        f"with pg_dump {m['pg_dump_version']} for server {m['server_version']}",
        value=backup.location,
    )


def left_out_finding(backup: Backup) -> Finding:
    """What pg_dump leaves out by design and a restore will not bring back: invalid indexes."""
    gone = backup.manifest.get("left_out") or []
    if gone:
        return Finding(
            "left out",
            Status.WARN,
            f"{len(gone)} invalid indexes are not in the dump (pg_dump leaves "
            f"them out): {', '.join(gone[:5])}; drop and create them again on the target",
            examples=tuple(gone),
        )
    return Finding("left out", Status.OK, "no invalid index: the dump holds every index")


def check_finding(backup: Backup, problems: list[str] | None = None) -> Finding:
    """`check` as a finding (pass `problems` when already checked)."""
    problems = check(backup) if problems is None else problems
    if problems:
        return Finding(
            "manifest",
            Status.CRIT,
            f"backup {backup.id} does not match its manifest: {problems[0]}"
            + (f" (+{len(problems) - 1} more)" if len(problems) > 1 else ""),
            examples=tuple(problems[:20]),
        )
    n = len(backup.manifest["parts" if backup.remote else "files"])
    what = f"{n} objects in {backup.repository.url}" if backup.remote else f"{n} files"
    return Finding(
        "manifest",
        Status.OK,
        f"backup {backup.id}: {what} match the manifest "
        f"({backup.size / 2**20:.1f} MiB, {sum(backup.manifest['row_counts'].values()):,} rows)",
    )


def choice_finding(backup: Backup) -> Finding:
    """Whether the backup about to be used was proven by a restore."""
    if backup.verified:
        return Finding(
            "backup chosen",
            Status.OK,
            f"{backup.id}, verified {timestamp(backup.verification.get('at'))}",
        )
    if backup.failed:
        return Finding(
            "backup chosen",
            Status.WARN,
            f"{backup.id} FAILED its verification: it is used only because it was named by id",
        )
    return Finding(
        "backup chosen",
        Status.WARN,
        f"{backup.id} was never verified (no verified backup of "
        "this target): it is checked here for the first time",
    )


def catalogue_finding(found: Catalogue, target: str) -> Finding:
    """The backups that cannot be used (a manifest damaged or gone), each named, and those read
    from their manifest's copy; the others are unaffected, and said to be. WARN: a backup lost,
    not the target's recovery (that is the RPO's judgement, of the usable ones)."""
    bad, mended = found.unreadable, found.mended
    if not bad and not mended:
        return Finding(
            "backups", Status.OK, f"{plural(len(found.backups), 'backup')}, every one readable"
        )
    said = []
    if bad:
        said.append(f"{plural(len(bad), 'backup')} cannot be used: " + "; ".join(map(str, bad[:3])))
    if mended:
        said.append(
            f"{plural(len(mended), 'backup')} read from its manifest's copy ("
            + ", ".join(b.id for b in mended[:3])
            + ")"
        )
    sound = len(found.backups) - len(mended)
    others = {0: "no other backup", 1: "the other backup is sound"}.get(
        sound, f"the other {sound:,} are sound"
    )
    return Finding(
        "backups",
        Status.WARN,
        "; ".join(said) + f"; {others}: `pgrunbook backups repair --target {target}` puts back"
        " what a copy holds",
        examples=tuple(f"{u.id}: {u.why} ({u.location})" for u in bad)
        + tuple(f"{b.id}: {b.notes[0]}" for b in mended),
    )


def with_catalogue(verdict: Finding, found: Catalogue, target: str) -> Finding:
    """`verdict` (of the usable backups' age) with what `catalogue_finding` says of the others
    added, at least WARN where a backup cannot be used: one finding, for a check's one line."""
    more = catalogue_finding(found, target)
    if more.status is Status.OK:
        return verdict
    return Finding(
        verdict.check,
        worst([verdict.status, more.status]),
        f"{verdict.summary}; {more.summary}",
        value=verdict.value,
        threshold=verdict.threshold,
        examples=more.examples,
    )


def rpo_finding(
    backups: list[Backup], *, rpo_h: float, required: bool = True, check: str = "rpo",
    crit_h: float = DEFAULTS.backup_crit_h,
) -> Finding:  # fmt: skip
    """The one judgement of backup age: the newest *verified* backup against the RPO, OK within
    it, WARN until `crit_h` (26 h: a daily backup missed is CRIT two hours late, the dead man's
    switch; never later than twice the RPO), CRIT beyond; none at all is CRIT. Where backups are
    not `required` (see `required`), none is OK and an old one at most WARN."""
    crit_h = max(rpo_h, min(crit_h, 2 * rpo_h))
    threshold = f"OK < {rpo_h:g} h, WARN < {crit_h:g} h" + (
        "" if required else " (not required here)"
    )
    verified = [b for b in backups if b.verified]
    if not verified:
        if not required:
            return Finding(
                check,
                Status.OK,
                f"no verified backup ({len(backups)} unverified): none is required here (only a"
                " protected target outside the sandbox must have one)",
                threshold=threshold,
            )
        return Finding(
            check,
            Status.CRIT,
            f"no verified backup ({len(backups)} unverified)",
            threshold=threshold,
        )
    age = verified[-1].age_h()
    status = level(age, rpo_h, crit_h if required else math.inf)
    return Finding(
        check,
        status,
        f"newest verified backup {verified[-1].id} is {age:.1f} h old",
        value=round(age, 2),
        threshold=threshold,
    )


def archiving(state: wal.Archiving, *, warn_s: float, crit_s: float) -> Finding:
    """Continuous WAL archiving as part of the RPO: a restore to a moment reaches what has been
    archived, so the oldest segment still waiting is what a lost server would lose. A failing
    archive command is CRIT (WAL piles up in pg_wal until the disk fills); a gap in pgrunbook's
    archive folder is CRIT (replay cannot pass it). Off is said, not alarmed on: the RPO is then
    the newest dump's age, judged by the backup check."""
    name = Check.WAL_ARCHIVING
    threshold = f"oldest unarchived WAL: OK < {warn_s:g} s, WARN < {crit_s:g} s"
    if not state.on:
        return Finding(
            name,
            Status.OK,
            "off: the RPO is the age of the newest dump (the pitr runbook turns continuous "
            "archiving on)",
        )
    if state.failing:
        return Finding(
            name,
            Status.CRIT,
            f"the archive command fails: {state.failed_count} failed attempts, segment "
            f"{state.last_failed_wal} not archived since "
            f"{timestamp(state.last_failed_time)}; WAL piles up in pg_wal and restores "
            "to a moment stop before it",
            value=state.failed_count,
            threshold=threshold,
        )
    folder = state.folder
    if folder is not None and folder.is_dir():
        bases = wal.base_backups(folder.parent)
        missing = wal.gaps(wal.segments(folder), since=bases[0].start_wal if bases else None)
        if missing:
            return Finding(
                name,
                Status.CRIT,
                f"{len(missing)} WAL segments missing from the archive ({folder}): restores to "
                f"a moment stop at {missing[0]}",
                value=len(missing),
                examples=tuple(missing[:20]),
            )
    if state.waiting is None:
        return Finding(
            name,
            Status.UNKNOWN,
            f"on; last segment archived {state.last_archived_wal or 'none yet'}: how much waits "
            "cannot be read by this role (grant it pg_monitor)",
            threshold=threshold,
        )
    waited = state.oldest_waiting_s or 0.0
    where = f" into {folder}" if folder else ""
    last = (
        f"last segment {state.last_archived_wal} archived "
        f"{(state.now - state.last_archived_time).total_seconds():.0f} s ago"
        if state.last_archived_time
        else "no segment archived yet"
    )
    return Finding(
        name,
        level(waited, warn_s, crit_s),
        f"on{where}: {last}; {state.waiting} waiting"
        + (f", the oldest for {waited:.0f} s" if state.waiting else ""),
        value=round(waited, 1),
        threshold=threshold,
    )

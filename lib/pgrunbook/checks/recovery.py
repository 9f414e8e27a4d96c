"""Judgements of the backup catalogue: is it sound, proven, and young enough for the RPO?"""

from __future__ import annotations

import math
from datetime import datetime

from ..base.findings import Finding, Status
from ..base.limits import level
from ..facts.backups import Backup, check


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
        value=str(backup.path),
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
    n = len(backup.manifest["files"])
    return Finding(
        "manifest",
        Status.OK,
        f"backup {backup.id}: {n} files match the manifest "
        f"({backup.size / 2**20:.1f} MiB, {sum(backup.manifest['row_counts'].values()):,} rows)",
    )


def choice_finding(backup: Backup) -> Finding:
    """Whether the backup about to be used was proven by a restore."""
    if backup.verified:
        return Finding(
            "backup chosen", Status.OK, f"{backup.id}, verified {backup.verification.get('at', '')}"
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


def rpo_finding(
    backups: list[Backup], *, rpo_h: float, required: bool = True, check: str = "rpo"
) -> Finding:
    """The one judgement of backup age: the newest *verified* backup against the RPO, OK within
    it, WARN within twice it, CRIT beyond; none at all is CRIT. Where backups are not `required`
    (see `required`), none is OK and an old one at most WARN."""
    threshold = f"OK < {rpo_h:g} h, WARN < {2 * rpo_h:g} h" + (
        "" if required else " (not required here)"
    )
    verified = [b for b in backups if b.verified]
    if not verified:
        if not required:
            return Finding(
                check,
                Status.OK,
                f"no verified backup ({len(backups)} unverified): none is required "
                "of a target that is not protected",
                threshold=threshold,
            )
        return Finding(
            check,
            Status.CRIT,
            f"no verified backup ({len(backups)} unverified)",
            threshold=threshold,
        )
    age = verified[-1].age_h()
    status = level(age, rpo_h, 2 * rpo_h if required else math.inf)
    return Finding(
        check,
        status,
        f"newest verified backup {verified[-1].id} is {age:.1f} h old",
        value=round(age, 2),
        threshold=threshold,
    )

"""What killed runs leave behind, named by every later run and removed by `pgrunbook cleanup`.

Work in progress is told from debris by a lock its owner holds (an flock,
which the kernel releases when the owner dies):

- databases on the target's server: a restore's or refresh's copy in progress
  (`<db>_restore_<time>`, `<db>_refresh_<time>`) while nobody holds the
  target's lock, and scratch databases (`pgrb_verify_...`, `pgrb_drift_...`,
  `pgrb_rehearse_...`) while nobody holds their own;
- files: a backup's `.partial` folder, and a run's working notebook in
  state/running, whose owning process is gone.

Databases kept by swaps (`_pre_restore_`, `_pre_refresh_`) and copies a
new-database restore left on purpose (`_restored_`) are debris only once past
the target's keeping hours (keep_h, 48 h); never within them.
"""

from __future__ import annotations

import re
import shutil
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from ..base import config, db, fileio, limits, repository
from ..base.errors import PgRunbookError
from ..base.fileio import CLAIM
from ..base.findings import Check, Finding, Status
from ..base.targets import Target
from ..facts import backups
from . import admin, offsite, swaps

OWNER = ".owner"  # inside a .partial folder: "host pid"
SCRATCH = ("pgrb_verify_", "pgrb_drift_", "pgrb_rehearse_")  # scratch databases pgrunbook creates


@dataclass(frozen=True)
class Debris:
    kind: str  # "database", "backup folder", "working notebook", "repository leftover"
    name: str  # the database's name, the file's path, the object's key
    what: str = ""  # what it was, where its name does not say (a repository's leftovers)
    item: object = None  # what removes it (a repository's Leftover)

    def __str__(self) -> str:
        return f"{self.kind} {self.name}" + (f" ({self.what})" if self.what else "")


owner_tag = fileio.owner_tag
_dead = fileio.owner_gone


def scratch_key(target: Target, database: str) -> Target:
    """The Target naming a scratch database beside `target`: its lock is that database's own."""
    return Target(
        f"{target.name}:{database}", db.with_database(target.url, database), sandbox=target.sandbox
    )


@contextmanager
def working_on(target: Target, database: str, operation: str) -> Iterator[None]:
    """Hold the lock of scratch database `database` while it exists for `operation`."""
    key = scratch_key(target, database)
    try:
        with swaps.exclusive(key, operation):
            yield
    finally:
        swaps.lock_path(key).unlink(missing_ok=True)  # scratch names are used once


def _databases(target: Target) -> list[str]:
    prefixes = [f"{target.database}_restore_", f"{target.database}_refresh_", *SCRATCH]
    try:
        with admin.connect(target, application="pgrunbook/cleanup") as conn:
            return admin.starting_with(conn, prefixes)
    except PgRunbookError:  # the server cannot be reached: its debris cannot be listed either
        return []


def find(target: Target) -> list[Debris]:
    """Everything an ended run of `target` left that no live run is working on."""
    found = []
    target_busy = swaps.busy(target) is not None
    for name in _databases(target):
        if name.startswith(SCRATCH):
            if swaps.busy(scratch_key(target, name)) is None:
                found.append(Debris("database", name))
        elif not target_busy:
            found.append(Debris("database", name))
    found += [Debris("database", name) for name in kept_past_hours(target)]
    folder = config.settings().backups_dir / target.name
    for partial in sorted(folder.glob(".*.partial")) if folder.is_dir() else []:
        try:
            tag = (partial / OWNER).read_text().strip()
        except OSError:
            tag = ""
        if not tag or _dead(tag):
            found.append(Debris("backup folder", str(partial)))
    if (repo := _repository(target)) is not None:
        found += [
            Debris("repository leftover", f"{repo.url}/{item.key}", item.what, item)
            for item in backups.leftovers(repo, target.name)
        ]
    found += _unfinished_reports(target)
    running = config.settings().state_dir / "running"
    for work in sorted(running.glob(f"*_{target.name}*.ipynb")) if running.is_dir() else []:
        pid = work.name.split("_", 1)[0]
        if pid.isdigit() and _dead(f"{socket.gethostname()} {pid}"):
            found.append(Debris("working notebook", str(work)))
    return found


CLAIM_STALE_S = 86400  # a claim that does not say whose (written on a full disk), this old


def _unfinished_reports(target: Target) -> list[Debris]:
    """In the audit archive: the claim on a report's name that a killed run of `target` left,
    and an empty report (earlier versions wrote the name's placeholder there)."""
    root = config.settings().reports_dir
    own = re.compile(rf"\.?\d{{8}}T\d{{6}}Z_{re.escape(target.name)}(-\d+)?\.ipynb({CLAIM})?$")
    found = []
    for path in sorted(root.glob("*/*.ipynb*")) if root.is_dir() else []:
        if not own.match(path.name):
            continue
        if path.name.endswith(CLAIM):
            try:
                tag = path.read_text().strip()
                old = time.time() - path.stat().st_mtime > CLAIM_STALE_S
            except OSError:
                continue
            if (tag and _dead(tag)) or (not tag and old):  # an empty claim: its owner unknown
                found.append(Debris("report claim", str(path), "the name a killed run claimed"))
        elif path.suffix == ".ipynb" and path.stat().st_size == 0:
            found.append(Debris("empty report", str(path), "left by a run killed mid-way"))
    return found


KEPT = ("pre_restore", "pre_refresh", "restored")  # databases swaps and new-database restores keep


def kept_past_hours(target: Target) -> list[str]:
    """Databases kept by swaps and new-database restores of `target` past the target's keep_h (48
    h):
    debris now; never one still within its hours."""
    keep_h = limits.for_target(target).keep_h
    try:
        with admin.connect(target, application="pgrunbook/cleanup") as conn:
            names = admin.starting_with(conn, [f"{target.database}_{k}_" for k in KEPT])
    except PgRunbookError:
        return []
    return [name for name, age in admin.stamped_ages(names).items() if age > keep_h]


def finding(target: Target) -> Finding:
    """WARN naming what earlier runs left, with the command that removes it."""
    left = find(target)
    if not left:
        return Finding(Check.DEBRIS, Status.OK, "nothing left behind by earlier runs")
    return Finding(
        Check.DEBRIS,
        Status.WARN,
        f"{len(left)} left behind by killed runs ({left[0]}{' ...' if len(left) > 1 else ''}):"
        f" remove with `pgrunbook cleanup --target {target.name} --apply`",
        examples=tuple(str(d) for d in left),
    )


def _repository(target: Target):
    """The target's remote repository, where it has one that opens (debris is looked for where
    it can be; the backup findings say why a repository does not open)."""
    try:
        return repository.for_target(target)
    except PgRunbookError:
        return None


def earlier_runs(target: Target) -> list[Finding]:
    """What earlier runs of `target` left: an unfinished swap (recovered here) and debris."""
    return [swaps.finding(target), finding(target)]


def clean(target: Target) -> list[Debris]:
    """Remove what `find` names (and only that); what was removed."""
    removed = []
    for item in find(target):
        if item.kind == "database":
            with admin.connect(target, application="pgrunbook/cleanup") as conn:
                admin.drop(conn, item.name)
        elif item.kind == "backup folder":
            shutil.rmtree(item.name, ignore_errors=True)
        elif item.kind == "repository leftover":
            offsite.clean(_repository(target), [item.item])
        else:
            Path(item.name).unlink(missing_ok=True)
        removed.append(item)
    return removed

"""Taking a backup: pg_dump with a manifest that proves what it holds.

A backup is a folder backups/<target>/<id>/ holding the dump (directory or
custom format), manifest.json and manifest.json.sha256. The manifest lists
every file's size and sha256, the exact row count of every table and the
schema fingerprint, all read in the very snapshot pg_dump dumps (exported
from a REPEATABLE READ transaction and handed to pg_dump --snapshot), so
they describe the dump exactly. The dump is written into a hidden .partial
folder and renamed into place only once its manifest is written: a folder
without a manifest, or whose files do not match it, is not a backup.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg

from ..base import db, pgtools, progress, repository
from ..base.display import plural
from ..base.errors import BackupFailed
from ..base.fileio import DIR_MODE, private_dir, write_atomic
from ..base.findings import Finding, Status
from ..base.targets import Target
from ..facts import sequences
from ..facts.backups import (
    FORMATS,
    MANIFEST,
    VERIFIED,
    Backup,
    all_backups,
    described,
    folder,
    hash_all,
    load,
)
from . import debris, offsite


def _file_table(root: Path, dump: Path) -> dict[str, dict[str, Any]]:
    files = [dump] if dump.is_file() else sorted(p for p in dump.rglob("*") if p.is_file())
    return {
        str(p.relative_to(root)): {"size": p.stat().st_size, "sha256": h}
        for p, h in zip(files, hash_all(files), strict=True)
    }


def _reserve(name: str, started: datetime, label: str) -> tuple[str, Path]:
    """A backup id no other call has, and its private `.partial` folder, created atomically.

    Two backups of one target started in the same second with one label get
    ids `..._label` and `..._label-2`: the folder is the reservation.
    """
    clean = re.sub(r"[^A-Za-z0-9_-]+", "-", label).strip("-")[:40]
    base = f"{started:%Y%m%dT%H%M%SZ}" + (f"_{clean}" if clean else "")
    where = private_dir(folder(name))
    for n in range(1, 10_000):
        candidate = base if n == 1 else f"{base}-{n}"
        if (where / candidate).exists():
            continue
        try:
            (where / f".{candidate}.partial").mkdir(mode=DIR_MODE)
        except FileExistsError:
            continue
        os.chmod(where / f".{candidate}.partial", DIR_MODE)
        write_atomic(
            where / f".{candidate}.partial" / ".owner", debris.owner_tag()
        )  # named if its run dies
        return candidate, where / f".{candidate}.partial"
    raise RuntimeError(f"too many backups named {base} in {where}")


def _write_manifest(where: Path, manifest: dict[str, Any]) -> None:
    data = json.dumps(manifest, indent=1, sort_keys=True).encode()
    write_atomic(where / MANIFEST, data)
    write_atomic(where / f"{MANIFEST}.sha256", hashlib.sha256(data).hexdigest() + "\n")


def create(
    target: Target, *, format: str = "directory", jobs: int = 2, label: str = "", purpose: str = ""
) -> Backup:
    """Dump `target` with its manifest, into its remote repository (streamed, see `offsite`) or
    the local backups folder. On any failure nothing is left that claims success. `purpose`:
    backups.DRILL for a drill's backup, never taken as 'latest'."""
    if format not in FORMATS:
        raise ValueError(f"format must be 'directory' or 'custom', not {format!r}")
    if (repo := repository.for_target(target)) is not None:
        return offsite.create(target, repo, label=label, jobs=jobs, purpose=purpose)
    started = datetime.now(UTC)
    conn = db.connect(
        target, application="pgrunbook/backup", autocommit=False, statement_timeout="0"
    )
    partial = None
    try:
        conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
        snapshot = conn.execute("SELECT pg_export_snapshot()").fetchone()[0]
        major = conn.info.server_version // 10000
        tool = pgtools.choose("pg_dump", major)
        backup_id, partial = _reserve(target.name, started, label)
        flag, name = FORMATS[format]
        args = [
            "--format",
            flag,
            "--file",
            str(partial / name),
            "--snapshot",
            snapshot,
            "--no-password",
        ]
        values = sequences.values(conn)  # before pg_dump reads them: a copy is at or past these
        expected = _expected_size(target) if progress.watched() else None  # for its bar
        proc = pgtools.start(
            tool, args + (["--jobs", str(jobs)] if format == "directory" else []), target.url
        )
        with progress.meter("pg_dump", total=expected, direction="write"):
            # read in the dump's snapshot while pg_dump runs
            manifest = described(
                conn,
                target,
                tool,
                backup_id=backup_id,
                label=label,
                purpose=purpose,
                started=started,
                sequence_values=values,
            )
            pgtools.wait(tool, proc)
        manifest |= {
            "format": format,
            "end": datetime.now(UTC).isoformat(),
            "files": _file_table(partial, partial / name),
        }
        _write_manifest(partial, manifest)
        final = folder(target.name) / backup_id
        (partial / debris.OWNER).unlink()
        os.rename(partial, final)
        return Backup(backup_id, final, manifest)
    except (pgtools.ToolFailed, OSError, psycopg.Error) as e:
        if partial is not None:
            shutil.rmtree(partial, ignore_errors=True)
        raise BackupFailed(f"backup of {target.name!r} failed, nothing kept: {_why(e)}") from None
    finally:
        conn.close()


def _expected_size(target: Target) -> int | None:
    """What this dump will about weigh: the previous backup's size (None for a first one)."""
    try:
        earlier = all_backups(target)
    except (OSError, ValueError):
        return None
    return earlier[-1].size if earlier else None


def _why(error: Exception) -> str:
    if isinstance(error, OSError) and error.strerror:
        return f"{error.strerror} ({error.filename})" if error.filename else error.strerror
    return str(error).strip().splitlines()[-1] if str(error).strip() else type(error).__name__


def record_verification(backup: Backup, result: dict[str, Any]) -> Backup:
    if backup.remote:
        return offsite.record_verification(backup, result)
    write_atomic(backup.path / VERIFIED, json.dumps(result, indent=1, sort_keys=True))
    return load(backup.path)


def clear_leftovers(target: Target) -> Finding:
    """Remove what killed backups of `target` left (a `.partial` folder whose writer is gone,
    a repository's unfinished backups and uploads: see `debris`), before a new one starts; each
    one named. Never a finished backup, damaged or not."""
    left = [d for d in debris.find(target) if d.kind in ("backup folder", "repository leftover")]
    for item in left:
        if item.kind == "backup folder":
            shutil.rmtree(item.name, ignore_errors=True)
        else:
            offsite.clean(repository.for_target(target), [item.item])
    if not left:
        return Finding("leftovers", Status.OK, "no killed backup left anything behind")
    return Finding(
        "leftovers",
        Status.OK,
        f"removed what {plural(len(left), 'killed backup')} left: "
        + "; ".join(str(d) for d in left[:3])
        + (" ..." if len(left) > 3 else ""),
        examples=tuple(str(d) for d in left),
    )


def retention_plan(
    backups: list[Backup], *, retention_days: float = 7, now: datetime | None = None,
    keep: tuple[str, ...] = (),
) -> list[Backup]:  # fmt: skip
    """Backups older than the retention, never the newest verified one, nor those in `keep`
    (the backup this run made)."""
    now = now or datetime.now(UTC)
    verified = [b for b in backups if b.verified]
    kept = {*keep, *([verified[-1].id] if verified else [])}
    limit = now - timedelta(days=retention_days)
    return [b for b in backups if b.end < limit and b.id not in kept]


def prune(plan: list[Backup], *, enabled: bool) -> Finding:
    """Delete the planned backups when `enabled`; otherwise only say what would go."""
    names = tuple(b.id for b in plan)
    if not plan:
        return Finding("retention", Status.OK, "nothing to delete")
    if not enabled:
        return Finding(
            "retention",
            Status.OK,
            f"{plural(len(plan), 'backup')} past retention, kept (prune=False): {_ids(names)}",
            examples=names,
        )
    locked = {b.id: u for b in plan if b.remote and (u := offsite.locked_until(b))}
    busy = [b for b in plan if b.id not in locked and b.remote and offsite.in_use(b)]
    plan = [b for b in plan if b not in busy and b.id not in locked]  # another runner reads it
    for b in plan:
        if b.remote:
            offsite.delete(b)
        else:
            shutil.rmtree(b.path)
    names = tuple(b.id for b in plan)
    note = f"; {len(busy)} in use by another runner kept for now" if busy else ""
    if locked:
        note += (
            f"; {len(locked)} kept under S3 Object Lock (object_lock_days) until "
            f"{max(locked.values()):%Y-%m-%d %H:%M} UTC at the latest: the next prune after "
            "that removes them"
        )
    return Finding(
        "retention",
        Status.OK,
        f"deleted {plural(len(plan), 'backup')} past retention"
        + (f": {_ids(names)}" if names else "")
        + note,
        examples=names
        + tuple(f"kept (in use): {b.id}" for b in busy)
        + tuple(f"kept (locked until {u:%Y-%m-%d}): {i}" for i, u in locked.items()),
    )


def _ids(names: tuple[str, ...], most: int = 5) -> str:
    more = len(names) - most
    return ", ".join(names[:most]) + (f" and {more} more (listed below)" if more > 0 else "")

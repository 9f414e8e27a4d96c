"""Backups: pg_dump with a manifest that proves what it holds.

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
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import psycopg

from . import catalog, config, db, debris, migrations, pgtools
from .errors import PgRunbookError
from .fileio import DIR_MODE, private_dir, sha256_file, write_atomic
from .findings import Finding, Status
from .targets import Target

MANIFEST = "manifest.json"
VERIFIED = "verify.json"
FORMATS = {"directory": ("d", "dump"), "custom": ("c", "dump.custom")}
RPO_H = 24


class BackupFailed(PgRunbookError):
    "The backup could not be completed; nothing claims it succeeded"


class BackupNotFound(PgRunbookError):
    "No backup of that id for the target"


@dataclass(frozen=True)
class Backup:
    id: str
    path: Path
    manifest: dict[str, Any]
    verification: dict[str, Any] | None = None

    @property
    def end(self) -> datetime:
        return datetime.fromisoformat(self.manifest["end"])

    @property
    def verified(self) -> bool:
        return bool(self.verification and self.verification.get("ok"))

    @property
    def failed(self) -> bool:
        """Verified, and the verification failed: never to be restored as 'latest'."""
        return bool(self.verification) and not self.verified

    @property
    def identity(self) -> dict[str, Any]:
        return self.manifest.get("identity") or {}

    @property
    def size(self) -> int:
        return sum(f["size"] for f in self.manifest["files"].values())

    @property
    def dump_path(self) -> Path:
        return self.path / FORMATS[self.manifest["format"]][1]

    def age_h(self, now: datetime | None = None) -> float:
        return ((now or datetime.now(timezone.utc)) - self.end).total_seconds() / 3600


def folder(target: Target | str) -> Path:
    return config.settings().backups_dir / getattr(target, "name", target)


IDENTITY = """
    SELECT current_database() AS database,
           (SELECT oid FROM pg_database WHERE datname = current_database()) AS database_oid,
           has_function_privilege('pg_control_system()', 'EXECUTE') AS can_read_control
"""


def identity(conn: psycopg.Connection, target: Target) -> dict[str, Any]:
    """What a backup copies: the cluster (system identifier, where the role may read it), the
    server's address as the target reaches it, and the database's name and oid."""
    database, oid, can_read = conn.execute(IDENTITY).fetchone()
    system = conn.execute("SELECT system_identifier::text FROM pg_control_system()").fetchone()[0] \
        if can_read else None
    return {"system_identifier": system, "address": target.address, "database": database, "database_oid": oid}


def belongs(backup: Backup, current: dict[str, Any]) -> bool:
    """Whether `backup` is a copy of the database `current` identifies.

    Same database name on the same cluster: by system identifier where both
    sides know it, else by server address. The oid is recorded but not
    compared: a restore recreates the database under a new one. A backup
    made before identities were recorded is matched by its target's name.
    """
    mine = backup.identity
    if not mine:
        return True
    if mine.get("database") != current.get("database"):
        return False
    if mine.get("system_identifier") and current.get("system_identifier"):
        return mine["system_identifier"] == current["system_identifier"]
    return mine.get("address") == current.get("address")


def current_identity(target: Target) -> dict[str, Any]:
    """The identity of the database `target` reaches; read from the server's maintenance database
    when the target's own is gone (a dropped database still has its backups)."""
    for database in (None, "postgres", "template1"):
        try:
            with db.connect(target, application="pgrunbook/backup", database=database) as conn:
                found = identity(conn, target)
        except PgRunbookError:
            continue
        return found if database is None else {**found, "database": target.database, "database_oid": None}
    raise BackupFailed(f"cannot reach the server of {target.name!r} to tell which backups are its own")


def _hash_all(paths: list[Path]) -> list[str]:
    """sha256 of each file, on as many threads as there are cores (hashlib releases the GIL)."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
        return list(pool.map(sha256_file, paths))


def _file_table(root: Path, dump: Path) -> dict[str, dict[str, Any]]:
    files = [dump] if dump.is_file() else sorted(p for p in dump.rglob("*") if p.is_file())
    return {str(p.relative_to(root)): {"size": p.stat().st_size, "sha256": h}
            for p, h in zip(files, _hash_all(files))}


def _reserve(target: str, started: datetime, label: str) -> tuple[str, Path]:
    """A backup id no other call has, and its private `.partial` folder, created atomically.

    Two backups of one target started in the same second with one label get
    ids `..._label` and `..._label-2`: the folder is the reservation.
    """
    clean = re.sub(r"[^A-Za-z0-9_-]+", "-", label).strip("-")[:40]
    base = f"{started:%Y%m%dT%H%M%SZ}" + (f"_{clean}" if clean else "")
    where = private_dir(folder(target))
    for n in range(1, 10_000):
        candidate = base if n == 1 else f"{base}-{n}"
        if (where / candidate).exists():
            continue
        try:
            (where / f".{candidate}.partial").mkdir(mode=DIR_MODE)
        except FileExistsError:
            continue
        os.chmod(where / f".{candidate}.partial", DIR_MODE)
        write_atomic(where / f".{candidate}.partial" / ".owner", debris.owner_tag())  # named if its run dies
        return candidate, where / f".{candidate}.partial"
    raise RuntimeError(f"too many backups named {base} in {where}")


def _write_manifest(where: Path, manifest: dict[str, Any]) -> None:
    data = json.dumps(manifest, indent=1, sort_keys=True).encode()
    write_atomic(where / MANIFEST, data)
    write_atomic(where / f"{MANIFEST}.sha256", hashlib.sha256(data).hexdigest() + "\n")


def create(target: Target, *, format: str = "directory", jobs: int = 2, label: str = "") -> Backup:
    """Dump `target` with its manifest. On any failure nothing is left that claims success."""
    if format not in FORMATS:
        raise ValueError(f"format must be 'directory' or 'custom', not {format!r}")
    started = datetime.now(timezone.utc)
    conn = db.connect(target, application="pgrunbook/backup", autocommit=False, statement_timeout="0")
    partial = None
    try:
        conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
        snapshot = conn.execute("SELECT pg_export_snapshot()").fetchone()[0]
        major = conn.info.server_version // 10000
        tool = pgtools.choose("pg_dump", major)
        backup_id, partial = _reserve(target.name, started, label)
        flag, name = FORMATS[format]
        args = ["--format", flag, "--file", str(partial / name), "--snapshot", snapshot, "--no-password"]
        proc = pgtools.start(tool, args + (["--jobs", str(jobs)] if format == "directory" else []), target.url)
        counts, facts = catalog.row_counts(conn), catalog.schema_facts(conn)  # same snapshot, meanwhile
        left_out = [i.index for i in catalog.invalid_indexes(conn)]
        revision = migrations.current(conn)
        pgtools.wait(tool, proc)
        manifest = {
            "id": backup_id, "target": target.name, "database": target.database, "format": format,
            "label": label, "start": started.isoformat(), "end": datetime.now(timezone.utc).isoformat(),
            "identity": identity(conn, target), "left_out": left_out,
            "server_version": conn.info.parameter_status("server_version"), "pg_dump": str(tool),
            "pg_dump_version": tool.version, "alembic_revision": ",".join(revision or ()) or None,
            "schema_fingerprint": catalog.fingerprint(facts), "schema": facts, "row_counts": counts,
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


def summary(backup: Backup) -> Finding:
    """What the backup holds and which pg_dump made it."""
    m = backup.manifest
    took = (backup.end - datetime.fromisoformat(m["start"])).total_seconds()
    return Finding("backup", Status.OK, f"{backup.id}: {len(m['row_counts'])} tables, "
                   f"{sum(m['row_counts'].values()):,} rows, {backup.size / 2**20:.1f} MiB in {took:.1f} s "
                   f"with pg_dump {m['pg_dump_version']} for server {m['server_version']}",
                   value=str(backup.path))


def left_out_finding(backup: Backup) -> Finding:
    """What pg_dump leaves out by design and a restore will not bring back: invalid indexes."""
    gone = backup.manifest.get("left_out") or []
    if gone:
        return Finding("left out", Status.WARN, f"{len(gone)} invalid indexes are not in the dump (pg_dump leaves "
                       f"them out): {', '.join(gone[:5])}; drop and create them again on the target",
                       examples=tuple(gone))
    return Finding("left out", Status.OK, "no invalid index: the dump holds every index")


def rows(backup: Backup):
    """Per-table row counts recorded in the manifest, as a DataFrame."""
    import pandas as pd

    return pd.DataFrame(sorted(backup.manifest["row_counts"].items()), columns=["table", "rows"])


def _why(error: Exception) -> str:
    if isinstance(error, OSError) and error.strerror:
        return f"{error.strerror} ({error.filename})" if error.filename else error.strerror
    return str(error).strip().splitlines()[-1] if str(error).strip() else type(error).__name__


def load(path: Path) -> Backup:
    """The backup in `path` as its manifest describes it (not checked: see `check`)."""
    manifest = json.loads((path / MANIFEST).read_text())
    try:
        verification = json.loads((path / VERIFIED).read_text())
    except FileNotFoundError:
        verification = None
    except ValueError:  # a record cut short (written by an older version): the backup is not proven
        verification = None
    return Backup(path.name, path, manifest, verification)


def all_backups(target: Target | str, *, current: dict[str, Any] | None = None) -> list[Backup]:
    """Backups of `target` with a readable manifest, oldest first.

    For a Target, only those that copied the database it reaches now (see
    `belongs`); `current` is its identity when the caller has read it already.
    """
    if isinstance(target, Target) and current is None:
        current = current_identity(target)
    found = []
    for path in sorted(folder(target).glob("[!.]*")):
        try:
            backup = load(path)
        except (OSError, ValueError, KeyError):
            continue
        if current is None or belongs(backup, current):
            found.append(backup)
    return sorted(found, key=lambda b: b.end)


def find(target: Target | str, ref: str = "latest", *, current: dict[str, Any] | None = None) -> Backup:
    """A backup by id, or 'latest': the newest verified one, else the newest never verified.

    A backup whose verification failed is never 'latest'; a chosen backup
    that was never verified says so (see `choice_finding`).
    """
    name = getattr(target, "name", target)
    backups = all_backups(target, current=current)
    if ref == "latest":
        usable = [b for b in backups if not b.failed]
        if not usable:
            failed = f" ({len(backups)} failed verification)" if backups else ""
            raise BackupNotFound(f"no usable backup of {name!r} in {folder(target)}{failed}: "
                                 "run the backup runbook first")
        verified = [b for b in usable if b.verified]
        return (verified or usable)[-1]
    path = folder(target) / ref
    if ref.startswith(".") or "/" in ref or not path.is_dir():
        ids = ", ".join(b.id for b in backups[-5:]) or "none"
        raise BackupNotFound(f"no backup {ref!r} of {name!r} (newest: {ids}): see the backup runbook's status")
    # a folder without its manifest is returned as such: `check` then says it is not a backup
    return load(path) if (path / MANIFEST).exists() else Backup(ref, path, {})


def check(backup: Backup) -> list[str]:
    """Everything about `backup` that does not match its manifest (empty when sound)."""
    path = backup.path
    if not (path / MANIFEST).exists():
        return [f"{path / MANIFEST} is missing: this folder is not a backup"]
    data = (path / MANIFEST).read_bytes()
    recorded = (path / f"{MANIFEST}.sha256")
    if not recorded.exists() or recorded.read_text().strip() != hashlib.sha256(data).hexdigest():
        return [f"{path / MANIFEST} was changed after the backup (its sha256 does not match)"]
    files = json.loads(data)["files"]
    problems = [f"missing: {path / rel}" for rel in files if not (path / rel).exists()]
    problems += [f"checksum mismatch: {path / rel}" for rel, info in files.items()
                 if (path / rel).exists() and (path / rel).stat().st_size != info["size"]]
    sound = [rel for rel, info in files.items() if (path / rel).exists()
             and (path / rel).stat().st_size == info["size"]]
    problems += [f"checksum mismatch: {path / rel}" for rel, h in zip(sound, _hash_all([path / r for r in sound]))
                 if h != files[rel]["sha256"]]
    dump = path / FORMATS[json.loads(data)["format"]][1]
    on_disk = [dump] if dump.is_file() else [p for p in dump.rglob("*") if p.is_file()]
    problems += [f"not in the manifest: {p}" for p in on_disk if str(p.relative_to(path)) not in files]
    return problems


def check_finding(backup: Backup, problems: list[str] | None = None) -> Finding:
    """`check` as a finding (pass `problems` when already checked)."""
    problems = check(backup) if problems is None else problems
    if problems:
        return Finding("manifest", Status.CRIT, f"backup {backup.id} does not match its manifest: "
                       f"{problems[0]}" + (f" (+{len(problems) - 1} more)" if len(problems) > 1 else ""),
                       examples=tuple(problems[:20]))
    n = len(backup.manifest["files"])
    return Finding("manifest", Status.OK, f"backup {backup.id}: {n} files match the manifest "
                   f"({backup.size / 2**20:.1f} MiB, {sum(backup.manifest['row_counts'].values()):,} rows)")


def choice_finding(backup: Backup) -> Finding:
    """Whether the backup about to be used was proven by a restore."""
    if backup.verified:
        return Finding("backup chosen", Status.OK, f"{backup.id}, verified {backup.verification.get('at', '')}")
    if backup.failed:
        return Finding("backup chosen", Status.WARN, f"{backup.id} FAILED its verification: it is used only "
                       "because it was named by id")
    return Finding("backup chosen", Status.WARN, f"{backup.id} was never verified (no verified backup of "
                   "this target): it is checked here for the first time")


def record_verification(backup: Backup, result: dict[str, Any]) -> Backup:
    write_atomic(backup.path / VERIFIED, json.dumps(result, indent=1, sort_keys=True))
    return load(backup.path)


def table(backups: list[Backup]):
    """Backups as a DataFrame: id, end, age, size, verified, label."""
    import pandas as pd

    rows = [{"id": b.id, "end": b.manifest["end"], "age_h": round(b.age_h(), 2), "size_mb": round(b.size / 2**20, 2),
             "format": b.manifest["format"], "verified": b.verified, "label": b.manifest.get("label", "")}
            for b in backups]
    return pd.DataFrame(rows, columns=["id", "end", "age_h", "size_mb", "format", "verified", "label"])


def required(target: Target) -> bool:
    """Whether the target must have a verified backup within the RPO: a protected one, not on the sandbox."""
    return target.protected and not target.sandbox


def rpo_finding(backups: list[Backup], *, rpo_h: float = RPO_H, required: bool = True,
                check: str = "rpo") -> Finding:
    """The one judgement of backup age: the newest *verified* backup against the RPO, OK within
    it, WARN within twice it, CRIT beyond; none at all is CRIT. Where backups are not `required`
    (see `required`), none is OK and an old one at most WARN."""
    threshold = f"OK <= {rpo_h:g} h, WARN <= {2 * rpo_h:g} h" + ("" if required else " (not required here)")
    verified = [b for b in backups if b.verified]
    if not verified:
        if not required:
            return Finding(check, Status.OK, f"no verified backup ({len(backups)} unverified): none is required "
                           "of a target that is not protected", threshold=threshold)
        return Finding(check, Status.CRIT, f"no verified backup ({len(backups)} unverified)", threshold=threshold)
    age = verified[-1].age_h()
    status = Status.OK if age <= rpo_h else Status.WARN if age <= 2 * rpo_h or not required else Status.CRIT
    return Finding(check, status, f"newest verified backup {verified[-1].id} is {age:.1f} h old",
                   value=round(age, 2), threshold=threshold)


def retention_plan(backups: list[Backup], *, retention_days: float = 7,
                   now: datetime | None = None) -> list[Backup]:
    """Backups older than the retention, never the newest verified one."""
    now = now or datetime.now(timezone.utc)
    verified = [b for b in backups if b.verified]
    keep = verified[-1].id if verified else None
    limit = now - timedelta(days=retention_days)
    return [b for b in backups if b.end < limit and b.id != keep]


def prune(plan: list[Backup], *, enabled: bool) -> Finding:
    """Delete the planned backups when `enabled`; otherwise only say what would go."""
    names = tuple(b.id for b in plan)
    if not plan:
        return Finding("retention", Status.OK, "nothing to delete")
    if not enabled:
        return Finding("retention", Status.OK, f"{len(plan)} backups past retention (prune=False keeps them)",
                       examples=names)
    for b in plan:
        shutil.rmtree(b.path)
    return Finding("retention", Status.OK, f"deleted {len(plan)} backups past retention", examples=names)

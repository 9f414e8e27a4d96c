"""The backup catalogue: what backups of a target exist, what each holds, whose copy it is.

A backup is a folder backups/<target>/<id>/ holding the dump (directory or
custom format), manifest.json and manifest.json.sha256, and, once a restore
proved it, verify.json. This module reads them and checks a folder against
its manifest; taking a backup is `procedures.backup`, judging the catalogue
against the RPO is `checks.recovery`.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg

from ..base import config, db, repository
from ..base.errors import BackupFailed, BackupNotFound, BackupUnreadable, PgRunbookError
from ..base.fileio import owner_gone, sha256_file
from ..base.repository import Repository
from ..base.storage import Missing, StorageError
from ..base.targets import Target
from . import catalog, indexes

MANIFEST = "manifest.json"
COPY = "manifest.copy.json"  # a remote backup's manifest, twice (pgBackRest keeps a .copy too)
VERIFIED = "verify.json"
DRILL = "drill"  # a manifest's purpose when a drill made it


FORMATS = {"directory": ("d", "dump"), "custom": ("c", "dump.custom")}


@dataclass(frozen=True)
class Backup:
    id: str
    path: Path  # its folder; in a remote repository, its prefix there
    manifest: dict[str, Any]
    verification: dict[str, Any] | None = None
    repository: Any = None  # the remote repository it lives in (None: the local folder)
    notes: tuple[str, ...] = ()  # what is amiss but does not keep it from use (a manifest's copy)

    @property
    def drill(self) -> bool:
        """Made by a disaster-recovery drill: it holds the drill's marker table, so it is never
        'latest' (restore it by its id)."""
        return self.manifest.get("purpose") == DRILL or (
            "purpose" not in self.manifest and self.manifest.get("label") == "dr-drill"
        )

    @property
    def remote(self) -> bool:
        return self.repository is not None

    @property
    def location(self) -> str:
        """Where it lives, as an operator finds it: a folder, or the repository URL and key."""
        return f"{self.repository.url}/{self.path}" if self.remote else str(self.path)

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
        if self.remote:
            return sum(p["size"] for p in self.manifest["parts"])
        return sum(f["size"] for f in self.manifest["files"].values())

    @property
    def dump_path(self) -> Path:
        return self.path / FORMATS[self.manifest["format"]][1]

    def age_h(self, now: datetime | None = None) -> float:
        return ((now or datetime.now(UTC)) - self.end).total_seconds() / 3600


@dataclass(frozen=True)
class Unreadable:
    """A backup that cannot be used (its manifest damaged or gone): named, with why."""

    id: str
    location: str
    why: str

    def __str__(self) -> str:
        return f"{self.id}: {self.why}"


@dataclass(frozen=True)
class Catalogue:
    """A target's backups: those that can be used, oldest first, and those that cannot."""

    backups: list[Backup]
    unreadable: list[Unreadable]

    @property
    def mended(self) -> list[Backup]:
        """Usable backups read from their manifest's copy (`pgrunbook backups repair`)."""
        return [b for b in self.backups if b.notes]


def _where(target: Target | str) -> str:
    url = repository.url_for(getattr(target, "name", target))
    return url if repository.is_remote(url) else str(folder(target))


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
    system = (
        conn.execute("SELECT system_identifier::text FROM pg_control_system()").fetchone()[0]
        if can_read
        else None
    )
    return {
        "system_identifier": system,
        "address": target.address,
        "database": database,
        "database_oid": oid,
    }


def described(
    conn: psycopg.Connection, target: Target, tool, *, backup_id: str, label: str,
    started: datetime, sequence_values: dict[str, int | None], purpose: str = "",
) -> dict[str, Any]:  # fmt: skip
    """What every manifest says of a dump (wherever it is kept), read on `conn`, in the snapshot
    the dump is taken in: row counts, schema and its fingerprint, the invalid indexes pg_dump
    leaves out, the migration revision, the database's identity, the versions, the sequences'
    values read before pg_dump started (`sequence_values`)."""
    from ..base import migrations  # here: alembic only once a backup is taken

    facts = catalog.schema_facts(conn)
    revision = migrations.current(conn, target)
    return {
        "id": backup_id,
        "target": target.name,
        "database": target.database,
        "label": label,
        "purpose": purpose,
        "start": started.isoformat(),
        "end": datetime.now(UTC).isoformat(),
        "identity": identity(conn, target),
        "left_out": [i.index for i in indexes.invalid_indexes(conn)],
        "server_version": conn.info.parameter_status("server_version"),
        "pg_dump": str(tool),
        "pg_dump_version": tool.version,
        "alembic_revision": ",".join(revision or ()) or None,
        "schema_fingerprint": catalog.fingerprint(facts),
        "schema": facts,
        "row_counts": catalog.row_counts(conn),
        "sequences": sequence_values,
    }


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
        return (
            found
            if database is None
            else {**found, "database": target.database, "database_oid": None}
        )
    raise BackupFailed(
        f"cannot reach the server of {target.name!r} to tell which backups are its own"
    )


def hash_all(paths: list[Path]) -> list[str]:
    """sha256 of each file, on as many threads as there are cores (hashlib releases the GIL)."""
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
        return list(pool.map(sha256_file, paths))


def rows(backup: Backup):
    """Per-table row counts recorded in the manifest, as a DataFrame."""
    import pandas as pd  # here: spares pandas (~270 ms) at start-up

    return pd.DataFrame(sorted(backup.manifest["row_counts"].items()), columns=["table", "rows"])


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


def catalogue(target: Target | str, *, current: dict[str, Any] | None = None) -> Catalogue:
    """Every backup of `target`: those with a readable manifest (oldest first) and those without.
    One damaged or missing object costs only the backup it belongs to.

    For a Target, only backups that copied the database it reaches now (see `belongs`);
    `current` is its identity when the caller has read it already.
    """
    if isinstance(target, Target) and current is None:
        current = current_identity(target)
    name = getattr(target, "name", target)
    if (repo := repository.for_target(name)) is not None:
        found = remote_backups(repo, name)
    else:
        found = Catalogue([], [])
        for path in sorted(folder(target).glob("[!.]*")):
            try:
                found.backups.append(load(path))
            except FileNotFoundError:
                found.unreadable.append(Unreadable(path.name, str(path), f"no {MANIFEST}"))
            except (OSError, ValueError, KeyError) as e:
                why = f"{MANIFEST} cannot be read ({type(e).__name__})"
                found.unreadable.append(Unreadable(path.name, str(path), why))
    mine = [b for b in found.backups if current is None or belongs(b, current)]
    return Catalogue(sorted(mine, key=lambda b: b.end), found.unreadable)


def all_backups(target: Target | str, *, current: dict[str, Any] | None = None) -> list[Backup]:
    """The usable backups of `target`, oldest first (see `catalogue`)."""
    return catalogue(target, current=current).backups


def find(
    target: Target | str, ref: str = "latest", *, current: dict[str, Any] | None = None
) -> Backup:
    """A backup by id, or 'latest': the newest verified one, else the newest never verified.

    A backup whose verification failed is never 'latest', nor a drill's (it holds the drill's
    marker table); a chosen backup that was never verified says so (see `choice_finding`).
    """
    name = getattr(target, "name", target)
    backups = all_backups(target, current=current)
    if ref == "latest":
        usable = [b for b in backups if not b.failed and not b.drill]
        if not usable:
            failed = len([b for b in backups if b.failed])
            drills = len([b for b in backups if b.drill and not b.failed])
            failed = ", ".join(
                [f"{failed} failed verification"] * bool(failed)
                + [f"{drills} made by drills, restored only by id"] * bool(drills)
            )
            failed = f" ({failed})" if failed else ""
            raise BackupNotFound(
                f"no usable backup of {name!r} in {_where(target)}{failed}: "
                "run the backup runbook first"
            )
        verified = [b for b in usable if b.verified]
        return (verified or usable)[-1]
    if (repo := repository.for_target(name)) is not None:
        if ref in _remote_folders(repo, name):
            return load_usable(repo, name, ref)
        ids = ", ".join(b.id for b in backups[-5:]) or "none"
        raise BackupNotFound(
            f"no backup {ref!r} of {name!r} in {repo.url} (newest: {ids}): see the backup"
            " runbook's status"
        )
    path = folder(target) / ref
    if ref.startswith(".") or "/" in ref or not path.is_dir():
        ids = ", ".join(b.id for b in backups[-5:]) or "none"
        raise BackupNotFound(
            f"no backup {ref!r} of {name!r} (newest: {ids}): see the backup runbook's status"
        )
    # a folder without its manifest is returned as such: `check` then says it is not a backup
    return load(path) if (path / MANIFEST).exists() else Backup(ref, path, {})


def check(backup: Backup) -> list[str]:
    """Everything about `backup` that does not match its manifest (empty when sound)."""
    if backup.remote:
        return check_remote(backup)
    path = backup.path
    if not (path / MANIFEST).exists():
        return [f"{path / MANIFEST} is missing: this folder is not a backup"]
    data = (path / MANIFEST).read_bytes()
    recorded = path / f"{MANIFEST}.sha256"
    if not recorded.exists() or recorded.read_text().strip() != hashlib.sha256(data).hexdigest():
        return [f"{path / MANIFEST} was changed after the backup (its sha256 does not match)"]
    files = json.loads(data)["files"]
    problems = [f"missing: {path / rel}" for rel in files if not (path / rel).exists()]
    problems += [
        f"checksum mismatch: {path / rel}"
        for rel, info in files.items()
        if (path / rel).exists() and (path / rel).stat().st_size != info["size"]
    ]
    sound = [
        rel
        for rel, info in files.items()
        if (path / rel).exists() and (path / rel).stat().st_size == info["size"]
    ]
    problems += [
        f"checksum mismatch: {path / rel}"
        for rel, h in zip(sound, hash_all([path / r for r in sound]), strict=True)
        if h != files[rel]["sha256"]
    ]
    dump = path / FORMATS[json.loads(data)["format"]][1]
    on_disk = [dump] if dump.is_file() else [p for p in dump.rglob("*") if p.is_file()]
    problems += [
        f"not in the manifest: {p}" for p in on_disk if str(p.relative_to(path)) not in files
    ]
    return problems


def table(backups: list[Backup]):
    """Backups as a DataFrame: id, end, age, size, verified, label."""
    import pandas as pd  # here: spares pandas (~270 ms) at start-up

    rows = [
        {
            "id": b.id,
            "end": b.manifest["end"],
            "age_h": round(b.age_h(), 2),
            "size_mb": round(b.size / 2**20, 2),
            "format": b.manifest["format"],
            "verified": b.verified,
            "label": b.manifest.get("label", ""),
        }
        for b in backups
    ]
    return pd.DataFrame(
        rows, columns=["id", "end", "age_h", "size_mb", "format", "verified", "label"]
    )


def required(target: Target) -> bool:
    """Whether the target must have a verified backup within the RPO: a protected one, not on the
    sandbox."""
    return target.protected and not target.sandbox


# -- in a remote repository ------------------------------------------------------------

RESERVED = "reserved"
STALE = timedelta(hours=12)  # a reservation from another host, unfinished this long, is debris
UPLOADS_STALE = timedelta(hours=1)  # an unfinished multipart upload this old is debris


def remote_folder(target: str, backup_id: str = "") -> str:
    """The prefix of `target`'s backups (or of one of them) in a remote repository."""
    return f"backups/{target}/{backup_id}/" if backup_id else f"backups/{target}/"


def _get_json(repo: Repository, key: str) -> tuple[Any, str]:
    """(the JSON object at `key`, '') or (None, why it cannot be read)."""
    try:
        return repo.get_json(key), ""
    except Missing:
        return None, "missing"
    except (StorageError, PgRunbookError) as e:
        return None, str(e).split(": ", 1)[-1] if str(e) else type(e).__name__


def load_remote(repo: Repository, target: str, backup_id: str) -> Backup | Unreadable:
    """The backup `backup_id` of `target` as its manifest (or that manifest's copy) describes
    it; Unreadable, saying why, where neither can be read."""
    where = remote_folder(target, backup_id)
    manifest, why = _get_json(repo, where + MANIFEST)
    notes: tuple[str, ...] = ()
    if manifest is None:
        manifest, why_copy = _get_json(repo, where + COPY)
        if manifest is None:
            return Unreadable(
                backup_id, f"{repo.url}/{where}", f"{MANIFEST}: {why}; its copy: {why_copy}"
            )
        notes = (f"{MANIFEST} {why}: read from its copy (`pgrunbook backups repair` puts it back)",)
    verification, _ = _get_json(repo, where + VERIFIED)
    return Backup(backup_id, Path(where), manifest, verification, repository=repo, notes=notes)


def load_usable(repo: Repository, target: str, backup_id: str) -> Backup:
    """`load_remote`, or BackupUnreadable saying why the backup cannot be used."""
    found = load_remote(repo, target, backup_id)
    if isinstance(found, Unreadable):
        raise BackupUnreadable(f"backup {backup_id!r} of {target!r} cannot be used: {found.why}")
    return found


def _remote_folders(repo: Repository, target: str) -> dict[str, set[str]]:
    """Each backup id of `target` in the repository, and the names of its objects."""
    by_id: dict[str, set[str]] = {}
    for e in repo.store.list(remote_folder(target)):
        backup_id, _, name = e.key[len(remote_folder(target)) :].partition("/")
        by_id.setdefault(backup_id, set()).add(name)
    return by_id


def _finished(repo: Repository, target: str, backup_id: str, names: set[str]) -> str:
    """Why a folder without a manifest was a finished backup ('' : nothing says it was)."""
    if VERIFIED in names:
        return "it was verified"
    tag, _ = _get_json(repo, remote_folder(target, backup_id) + RESERVED)
    if tag is None and RESERVED in names:
        return "its reservation cannot be read"
    return "its writer finished it" if (tag or {}).get("complete") else ""


def remote_backups(repo: Repository, target: str) -> Catalogue:
    """Every backup of `target` in `repo` (see `catalogue`)."""
    found = Catalogue([], [])
    for backup_id, names in sorted(_remote_folders(repo, target).items()):
        if names & {MANIFEST, COPY}:
            loaded = load_remote(repo, target, backup_id)
        elif why := _finished(repo, target, backup_id, names):
            where = f"{repo.url}/{remote_folder(target, backup_id)}"
            loaded = Unreadable(backup_id, where, f"both copies of its manifest are gone ({why})")
        else:
            continue  # a run under way, or a killed one's: see `leftovers`
        (found.unreadable if isinstance(loaded, Unreadable) else found.backups).append(loaded)
    return found


def check_remote(backup: Backup) -> list[str]:
    """Every part the manifest names is in the bucket with its recorded size (its content is
    checked as it is read: sha256 and each chunk's authentication)."""
    repo = backup.repository
    stored = {e.key: e.size for e in repo.store.list(f"{backup.path}/")}
    problems = []
    for part in backup.manifest.get("parts", []):
        if part["key"] not in stored:
            problems.append(f"missing: {repo.url}/{part['key']}")
        elif stored[part["key"]] != part["size"]:
            problems.append(f"size mismatch: {repo.url}/{part['key']}")
    return problems


def stream(backup: Backup) -> Iterator[bytes]:
    """The dump, read back from the repository part by part, each checked against the manifest
    (Damaged naming the object at the first difference)."""
    yield from backup.repository.read_all(backup.manifest["parts"])


def feeder(backup: Backup) -> Callable[[Any], None]:
    """A function writing the dump into a pipe (a pg_restore's standard input)."""

    def feed(pipe) -> None:
        for piece in stream(backup):
            pipe.write(piece)

    return feed


@dataclass(frozen=True)
class Leftover:
    """What a killed or failed writer left: a folder of parts (`upload` empty) or an upload."""

    key: str  # the folder's prefix, or the unfinished upload's object
    what: str  # what it is, said for a person deciding whether to remove it
    upload: bool = False

    def __str__(self) -> str:
        return f"{self.key} ({self.what})"


def leftovers(repo: Repository, target: str) -> list[Leftover]:
    """What killed or failed writers left in the repository for `target`: folders without a
    manifest that nothing says were finished (not verified, not marked complete), whose writer is
    gone (on this host) or older than STALE, and multipart uploads older than UPLOADS_STALE. A
    finished backup that lost its manifest is never one of them: see `remote_backups`."""
    now = datetime.now(UTC)
    found = []
    for backup_id, names in sorted(_remote_folders(repo, target).items()):
        if names & {MANIFEST, COPY, VERIFIED}:
            continue
        where = remote_folder(target, backup_id)
        tag, why = _get_json(repo, where + RESERVED)
        if tag is None and why != "missing" or (tag or {}).get("complete"):
            continue  # unreadable, or finished: a damaged backup, never debris
        tag = tag or {}
        at = datetime.fromisoformat(tag["at"]) if tag.get("at") else now - STALE
        if owner_gone(tag.get("owner", "")) or now - at >= STALE:
            parts = len([n for n in names if n.startswith("part-")])
            by = f" by {tag['owner']}" if tag.get("owner") else ""
            found.append(Leftover(where, (
                f"an unfinished backup, started {at:%Y-%m-%d %H:%M} UTC{by} and never finished:"
                f" {parts} parts, no manifest"
            )))  # fmt: skip
    found += [
        Leftover(
            p.key, f"an upload started {p.started:%Y-%m-%d %H:%M} UTC, never finished", upload=True
        )  # fmt: skip
        for p in repo.store.pending(remote_folder(target))
        if now - p.started >= UPLOADS_STALE and not any(p.key.startswith(f.key) for f in found)
    ]
    return found

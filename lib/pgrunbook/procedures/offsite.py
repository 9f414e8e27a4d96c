"""Backups in a remote repository: pg_dump's output streamed to the bucket as it is made.

`backups/<target>/<id>/` holds a reservation (`reserved`, written with create-only, so two
runners never share an id), the dump in parts (`part-00001`, ...: each PART bytes of pg_dump's
custom-format output, compressed and sealed, uploaded while pg_dump goes on, none of it kept on
the local disk) and, written last, its manifest twice (`manifest.copy.json`, then
`manifest.json`: what the local manifest holds, and each part's size and sha256 as stored), then
the reservation marked complete. One lost or damaged manifest is read from the other; a finished
backup that lost both (verified, or its reservation marked complete) is listed as damaged, never
taken for debris. A folder that nothing says was finished is a killed writer's: never listed,
removed by the next backup of its target once its writer is gone (with the uploads a killed
writer left). `verify.json` records a verification, done by restoring what is in the bucket,
read back through the repository.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg

from ..base import db, fileio, pgtools
from ..base.errors import BackupFailed, PgRunbookError
from ..base.repository import Repository
from ..base.storage import Exists, Missing, StorageError
from ..base.targets import Target
from ..facts import sequences
from ..facts.backups import (
    COPY,
    MANIFEST,
    RESERVED,
    VERIFIED,
    Backup,
    Leftover,
    described,
    load_usable,
)
from ..facts.backups import remote_folder as folder

PART = 32 * 2**20  # bytes of pg_dump's output per part object
UPLOADERS = 3  # parts sealed and uploaded at once

ROLES = """
    SELECT DISTINCT r.rolname
      FROM pg_shdepend d
      JOIN pg_roles r ON r.oid = d.refobjid
     WHERE d.dbid = (SELECT oid FROM pg_database WHERE datname = current_database())
       AND d.refclassid = 'pg_authid'::regclass
       AND d.deptype IN ('o', 'a', 'i')
     ORDER BY 1
"""


def _reserve(repo: Repository, target: str, started: datetime, label: str, owner: str) -> str:
    """A backup id no other runner has: its reservation written create-only."""
    clean = "".join(c if c.isalnum() or c in "_-" else "-" for c in label).strip("-")[:40]
    base = f"{started:%Y%m%dT%H%M%SZ}" + (f"_{clean}" if clean else "")
    for n in range(1, 1000):
        candidate = base if n == 1 else f"{base}-{n}"
        try:
            repo.put_json(folder(target, candidate) + RESERVED,
                          {"owner": owner, "at": started.isoformat()},
                          create_only=True)  # fmt: skip
            return candidate
        except Exists:
            continue
    raise BackupFailed(f"too many backups named {base} in {repo.url}")


def create(
    target: Target, repo: Repository, *, label: str = "", jobs: int = 2, purpose: str = ""
) -> Backup:
    """Dump `target` into the repository as it is made, then its manifest. On any failure the
    parts are deleted and nothing claims success. A repository that may not be written (see
    `Repository.may_write`) is refused before pg_dump starts."""
    repo.writable()
    started = datetime.now(UTC)
    conn = db.connect(
        target, application="pgrunbook/backup", autocommit=False, statement_timeout="0"
    )
    backup_id, owner = None, fileio.owner_tag()
    try:
        conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
        snapshot = conn.execute("SELECT pg_export_snapshot()").fetchone()[0]
        tool = pgtools.choose("pg_dump", conn.info.server_version // 10000)
        backup_id = _reserve(repo, target.name, started, label, owner)
        values = sequences.values(conn)
        proc = pgtools.start(
            tool, ["--format", "c", "--compress", "0", "--snapshot", snapshot, "--no-password"],
            target.url, text=False,
        )  # fmt: skip
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
        roles = [r for (r,) in conn.execute(ROLES)]
        database_owner = conn.execute(
            "SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = current_database()"
        ).fetchone()[0]
        parts = _upload(repo, folder(target.name, backup_id), proc)
        pgtools.wait(tool, proc)
        manifest |= {
            "format": "custom",
            "storage": "repository",
            "compression": "zstd",
            "encrypted": repo.sealer.encrypted,
            "end": datetime.now(UTC).isoformat(),
            "roles": sorted({*roles, database_owner}),
            "parts": [p.to_dict() for p in parts],
        }
        where = folder(target.name, backup_id)
        repo.put_json(where + COPY, manifest, create_only=True)
        repo.put_json(where + MANIFEST, manifest, create_only=True)
        finished, backup_id = backup_id, None  # whatever fails now, the backup stays
        _mark_complete(repo, where, owner, started, manifest["end"])
        return Backup(finished, Path(where), manifest, None, repository=repo)
    except (pgtools.ToolFailed, OSError, psycopg.Error, PgRunbookError) as e:
        if backup_id is not None:
            _remove(repo, folder(target.name, backup_id))
        raise BackupFailed(
            f"backup of {target.name!r} to {repo.url} failed, nothing kept: {_why(e)}"
        ) from None
    finally:
        fileio.release(owner)
        conn.close()


def _mark_complete(repo: Repository, where: str, owner: str, started: datetime, end: str) -> None:
    """The reservation says the backup was finished: a third witness beside its two manifests
    (never taken for debris, whatever else is lost). Best effort: the manifests are written."""
    try:
        repo.put_json(where + RESERVED,
                      {"owner": owner, "at": started.isoformat(), "complete": end})  # fmt: skip
    except (StorageError, PgRunbookError):
        pass


def mend_manifests(repo: Repository) -> list[str]:
    """Each backup of every target whose manifest or its copy is missing or damaged, the other
    readable: the lost one written again from it (a damaged one kept beside it). What was done."""
    folders: dict[str, set[str]] = {}
    for entry in repo.store.list("backups/"):
        where, _, name = entry.key.rpartition("/")
        folders.setdefault(f"{where}/", set()).add(name)
    done = []
    for where, names in sorted(folders.items()):
        if names & {MANIFEST, COPY}:
            done += _mend(repo, where, MANIFEST, COPY) + _mend(repo, where, COPY, MANIFEST)
    return done


def _mend(repo: Repository, where: str, lost: str, good: str) -> list[str]:
    try:
        repo.get_json(where + lost)
        return []
    except Missing:
        old = None
    except (StorageError, PgRunbookError):
        old = repo.store.get(where + lost)
    try:
        manifest = repo.get_json(where + good)
    except (StorageError, PgRunbookError):
        return []
    if old is not None:
        repo.store.put(f"{where}{lost}.damaged", old)
    repo.put_json(where + lost, manifest)
    return [f"{repo.url}/{where}{lost} written again from {good}"]


def _upload(repo: Repository, where: str, proc) -> list:
    """pg_dump's standard output, PART bytes at a time, each sealed into its own object while
    the next is read."""
    out = repo.parts(where, size=PART, threads=UPLOADERS)
    try:
        while data := proc.stdout.read(2**20):
            out.write(data)
        if not out.number and not out.buffer:
            raise BackupFailed("pg_dump wrote nothing")
        return out.close()
    except BaseException:
        proc.kill()  # pg_dump stops: nothing more to send
        out.abandon()
        raise


def _why(error: Exception) -> str:
    text = str(error).strip()
    return text.splitlines()[-1] if text else type(error).__name__


FIRST = (VERIFIED, RESERVED, COPY, MANIFEST)  # what says a backup is finished, removed first


def _remove(repo: Repository, prefix: str) -> None:
    """Every object under `prefix`, and any upload left there (best effort: what stays is named
    and removed by the next run). What says the backup was finished goes first, its parts last:
    a removal cut short leaves a folder the next run takes for debris, never a damaged backup."""

    def order(key: str) -> int:
        name = key.rsplit("/", 1)[-1]
        return FIRST.index(name) if name in FIRST else len(FIRST)

    try:
        for item in repo.store.pending(prefix):
            repo.store.abort_pending(item)
        for entry in sorted(repo.store.list(prefix), key=lambda e: order(e.key)):
            repo.store.delete(entry.key)
    except StorageError:
        pass


def record_verification(backup: Backup, result: dict[str, Any]) -> Backup:
    backup.repository.put_json(f"{backup.path}/{VERIFIED}", result)
    return load_usable(backup.repository, backup.manifest["target"], backup.id)


def delete(backup: Backup) -> None:
    backup.repository.may_write()
    _remove(backup.repository, f"{backup.path}/")


def clean(repo: Repository, found: list[Leftover]) -> None:
    """Remove what `facts.backups.leftovers` found."""
    repo.may_write()
    for item in found:
        if item.upload:
            for p in repo.store.pending(item.key):
                if p.key == item.key:
                    repo.store.abort_pending(p)
        else:
            _remove(repo, item.key)


LEASE = "lease-"
LEASE_HOURS = 6  # a verification's lease counts this long (a verification killed midway expires)


@contextmanager
def leased(backup: Backup) -> Iterator[None]:
    """Hold a lease on `backup` while it is read (verified, restored): a prune by any runner
    passes it over meanwhile."""
    if backup.repository.refusal:  # nothing is written there, and no prune runs meanwhile
        yield
        return
    key = f"{backup.path}/{LEASE}{uuid.uuid4().hex[:12]}"
    backup.repository.put_json(
        key, {"owner": fileio.owner_tag(), "at": datetime.now(UTC).isoformat()}
    )
    try:
        yield
    finally:
        try:
            backup.repository.store.delete(key)
        except StorageError:
            pass  # it expires


def locked_until(backup: Backup) -> datetime | None:
    """Until when S3 Object Lock keeps `backup` (what was written last is locked longest);
    None where it is not locked, or no longer."""
    store, now = backup.repository.store, datetime.now(UTC)
    found = []
    for name in (MANIFEST, RESERVED):  # the last written: the reservation, marked complete
        try:
            found.append(store.locked_until(f"{backup.path}/{name}"))
        except StorageError:
            continue
    until = max((u for u in found if u), default=None)
    return until if until and until > now else None


def in_use(backup: Backup) -> bool:
    """Whether another runner holds a fresh lease on `backup` (it is being verified)."""
    entries = backup.repository.store.list(f"{backup.path}/{LEASE}")
    limit = datetime.now(UTC) - timedelta(hours=LEASE_HOURS)
    return any(e.modified > limit for e in entries)

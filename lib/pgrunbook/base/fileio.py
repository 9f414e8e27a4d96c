"""File helpers shared by the archive and the backups.

Everything pgrunbook writes may hold production data (dumps, query results,
findings), so it is private to the operator whatever the umask: files 0600,
folders 0700.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path


def sha256_file(path: Path) -> str:
    """sha256 of a file, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


FILE_MODE = 0o600
DIR_MODE = 0o700


def private_dir(path: Path) -> Path:
    """Create `path` and any missing parent as folders only the operator can enter (0700)."""
    missing = []
    for p in (path, *path.parents):
        if p.exists():
            break
        missing.append(p)
    for p in reversed(missing):
        try:
            p.mkdir(mode=DIR_MODE)
        except FileExistsError:
            continue
        os.chmod(p, DIR_MODE)  # mkdir's mode is masked by the umask
    return path


SOCKET_PATH_MAX = 100  # a Unix socket's path: 107 bytes on Linux, 103 on macOS


def socket_dir(prefix: str, longest: str) -> str:
    """A new private folder (0700, its maker's alone) for Unix sockets named up to `longest`: in
    the temp folder, or in /tmp where the temp folder's path is too long for a socket's (a long
    TMPDIR, as macOS and pytest's workers give, makes ZeroMQ and PostgreSQL refuse to bind)."""
    folder = tempfile.mkdtemp(prefix=prefix)
    if len(os.path.join(folder, longest)) <= SOCKET_PATH_MAX:
        return folder
    os.rmdir(folder)
    return tempfile.mkdtemp(prefix=prefix, dir="/tmp")


def sync_tree(path: Path, *, workers: int = 8) -> None:
    """Flush every file under `path` to disk, then every folder (deepest first) and `path`'s
    parent: what a program run with --no-sync wrote is then as durable as if it had synced.
    The files are flushed several at a time, so that the disk gets them together (as
    PostgreSQL's own sync starts every file's writeback before it waits on any)."""
    folders, files = [], []
    for root, _dirs, names in os.walk(path):
        folders.append(root)
        files += [os.path.join(root, name) for name in names]

    def flush(file: str) -> None:
        fd = os.open(file, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    with ThreadPoolExecutor(max_workers=workers) as pool:
        list(pool.map(flush, files))  # raises the first error
    for folder in [*reversed(folders), str(path.parent)]:
        fsync_dir(folder)


def fsync_dir(folder: Path | str) -> None:
    """Flush a folder's entries (a rename into it, a file made in it) to disk."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def create_private(path: Path, *, exclusive: bool = True) -> None:
    """Create `path` as an empty private file; FileExistsError if `exclusive` and it exists."""
    flags = os.O_WRONLY | os.O_CREAT | (os.O_EXCL if exclusive else 0)
    os.close(os.open(path, flags, FILE_MODE))
    os.chmod(path, FILE_MODE)


def write_atomic(path: Path, data: str | bytes, *, mode: int = FILE_MODE) -> None:
    """Write `data` to `path` so that readers see the old file or the new one, never half.

    The data goes to a private temporary file of its own beside `path` (two
    writers never share one), is flushed to disk, then renamed over `path`.
    A full disk raises OSError and leaves the old file as it was. `mode` other
    than 0600 is for files another program must read (a metrics collector).
    """
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")  # created 0600
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data.encode() if isinstance(data, str) else data)
            f.flush()
            os.fsync(f.fileno())
        if mode != FILE_MODE:
            os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


_LIVE: set[str] = set()  # owner tags of this process's writers still at work


def owner_tag() -> str:
    """Who is writing something ("host pid token"), for whoever finds it unfinished later; live
    until `release`d (or the process ends)."""
    import socket
    import uuid

    tag = f"{socket.gethostname()} {os.getpid()} {uuid.uuid4().hex[:12]}"
    _LIVE.add(tag)
    return tag


def release(tag: str) -> None:
    """The writer of `tag` is done (finished or failed): what it left unfinished is debris."""
    _LIVE.discard(tag)


def owner_gone(tag: str) -> bool:
    """Whether the writer an owner tag names is gone: in this process, a released tag; on this
    host, a process that no longer runs; from another host, never judged (only age can tell)."""
    import socket

    try:
        host, pid, *rest = tag.split()
        if host != socket.gethostname():
            return False
        if int(pid) == os.getpid():
            return bool(rest) and tag not in _LIVE
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except (ValueError, PermissionError):
        return False
    return False


CLAIM = ".claim"  # a name claimed while what gets it is being made: `.NAME.claim`


def claim_of(path: Path) -> Path:
    """The hidden file that holds `path`'s name while it is being made (a report is written
    whole at the end of its run, so a killed run leaves no empty report in the archive)."""
    return path.with_name(f".{path.name}{CLAIM}")

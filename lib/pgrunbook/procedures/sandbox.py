"""The embedded sandbox, provisioned: settings, roles, databases, schema and demo data.

The cluster (its folder, socket and binaries) is `base.cluster`; this module
makes it the sandbox: it preloads pg_stat_statements and holds the databases
`production` and `staging` with the Fixia schema at head and demo data.
"""

from __future__ import annotations

import shutil

from psycopg import sql

from ..base import db, migrations
from ..base.cluster import Cluster, SandboxStatus, embedded
from ..base.errors import SandboxError
from ..base.targets import Target
from . import admin, pitr, seed

# production and staging simulate the team's two environments (production protected, as the
# real one); `sandbox` is the playground the `sandbox` target reaches, where anything may be tried
DATABASES = ("production", "staging", "sandbox")
PRELOAD = "pg_stat_statements"
EXTENSIONS = ("pg_stat_statements", "amcheck", "pgstattuple")
APP_ROLE = "fixia_app"  # what the application connects as: reads and writes data, owns nothing
AUDIT_SETTINGS = (("log_connections", "on"), ("log_disconnections", "on"), ("log_statement", "ddl"))


class Sandbox(Cluster):
    """The embedded cluster with the sandbox's databases in it."""

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
        ep = embedded()
        self.root.mkdir(parents=True, exist_ok=True)
        fresh = not (self.data_dir / "PG_VERSION").exists()
        server = ep.get_server(self.data_dir, cleanup_mode=None)
        if not self.running:  # get_server hands back a cached handle after a stop in this process
            server.ensure_postgres_running()
        self.share_handle_file()
        if fresh or not (self.root / "ready").exists():
            self._configure(ep, server)
            self._populate(demo_users, DATABASES)
            (self.root / "ready").write_text("ok\n")
        elif missing := self._missing():  # a sandbox made before one of its databases existed
            self._populate(demo_users, missing)
        return self.status()

    def _missing(self) -> tuple[str, ...]:
        maintenance = Target("sandbox-admin", self.url("postgres"), sandbox=True)
        with db.connect(maintenance, readonly=False) as conn:
            missing = tuple(n for n in DATABASES if not admin.exists(conn, n))
            for name in missing:
                admin.create(conn, name)
        return missing

    def _configure(self, ep, server) -> None:
        maintenance = Target("sandbox-admin", server.get_uri("postgres"), sandbox=True)
        with db.connect(maintenance, readonly=False) as conn:
            conn.execute(
                sql.SQL("ALTER SYSTEM SET shared_preload_libraries = {}").format(
                    sql.Literal(PRELOAD)
                )
            )
            conn.execute("ALTER SYSTEM SET pg_stat_statements.track = 'all'")
            for setting, value in AUDIT_SETTINGS:
                conn.execute(
                    sql.SQL("ALTER SYSTEM SET {} = {}").format(
                        sql.Identifier(setting), sql.Literal(value)
                    )
                )
            if not conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", [APP_ROLE]).fetchone():
                conn.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(APP_ROLE)))
            for name in DATABASES:
                if not admin.exists(conn, name):
                    admin.create(conn, name)
        # continuous WAL archiving, on from the start: restores to any moment since the first
        # base backup (the pitr runbook takes them)
        box = pitr.locate(maintenance)
        folder = pitr.archive_folder(box)
        pitr.prepare_archive(box, folder)
        with db.connect(maintenance, readonly=False) as conn:
            for setting, value in pitr.settings_for(folder, box.major):
                conn.execute(
                    sql.SQL("ALTER SYSTEM SET {} = {}").format(
                        sql.Identifier(setting), sql.Literal(value)
                    )
                )
        ep.pg_ctl(["-w", "-m", "fast", "stop"], pgdata=server.pgdata, user=server.system_user)
        server.ensure_postgres_running()

    def _populate(self, demo_users: int, names: tuple[str, ...]) -> None:
        for index, name in enumerate(DATABASES):
            if name not in names:
                continue
            target = Target(f"sandbox-{name}", self.url(name), sandbox=True)
            with db.connect(target, readonly=False) as conn:
                for ext in EXTENSIONS:
                    conn.execute(
                        sql.SQL("CREATE EXTENSION IF NOT EXISTS {}").format(sql.Identifier(ext))
                    )
            migrations.upgrade(target, "head")
            with db.connect(
                target, readonly=False
            ) as conn:  # the app reads and writes, owns nothing
                role = sql.Identifier(APP_ROLE)
                for grant in (
                    "GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO {}",
                    "GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA public TO {}",
                    (
                        "ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT SELECT, INSERT, UPDATE,"
                        " DELETE ON TABLES TO {}"
                    ),
                    (
                        "ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT USAGE, SELECT ON SEQUENCES"
                        " TO {}"
                    ),
                ):
                    conn.execute(sql.SQL(grant).format(role))
            with db.connect(target, readonly=False, statement_timeout="30min") as conn:
                seed.seed(conn, target, mode="production")
                if seed.counts(conn)["users"] == 0:
                    seed.seed(conn, target, mode="development", users=demo_users, seed=index + 1)

    def down(self) -> None:
        """Stop the cluster (fast shutdown). Raises if it is not running."""
        if not self.running:
            raise SandboxError(f"the sandbox is not running ({self.data_dir}): nothing to stop")
        self.stop()

    def reset(self, *, demo_users: int = 1000) -> SandboxStatus:
        """Stop, delete every database in the sandbox, and start a fresh one."""
        if self.running:
            self.stop()
        shutil.rmtree(self.root, ignore_errors=True)
        return self.ensure(demo_users=demo_users)

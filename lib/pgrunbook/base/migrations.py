"""A target's migration history, seen from the library: alembic (the project's migrations/,
the Fixia schema), or a folder of SQL files (Prisma Migrate's, or plain; see `sqlhistory`),
as the target's app says.

Status is read with a plain (read-only) connection; alembic upgrades run with a SQLAlchemy
connection whose session carries the timeouts.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import psycopg
from alembic import command
from alembic.config import Config
from alembic.script import ScriptDirectory
from alembic.util.exc import CommandError
from sqlalchemy import Engine, create_engine
from sqlalchemy.pool import NullPool

from . import config, db, targets
from .errors import MigrationRefused
from .sqlhistory import SqlHistory
from .targets import Target

DEFAULT_FOLDERS = {"prisma": "prisma/migrations", "sql": "migrations/sql"}


@dataclass(frozen=True)
class Revision:
    revision: str
    message: str


@dataclass(frozen=True)
class MigrationStatus:
    current: tuple[str, ...]
    heads: tuple[str, ...]
    pending: list[Revision] = field(default_factory=list)
    unknown: tuple[str, ...] = ()
    managed: bool = True
    failed: tuple[str, ...] = ()  # SQL-file histories: started, never finished nor rolled back
    modified: tuple[str, ...] = ()  # SQL-file histories: the file changed after it was applied
    history: SqlHistory | None = None  # None: alembic

    @property
    def kind(self) -> str:
        return self.history.kind if self.history else "alembic"


def history(target: Target | None) -> SqlHistory | None:
    """The SQL-file history that manages `target`, or None where alembic does."""
    app = target.app if target is not None else None
    if app is None or app.migrations not in DEFAULT_FOLDERS:
        return None
    folder = config.settings().home / (app.migrations_path or DEFAULT_FOLDERS[app.migrations])
    return SqlHistory(app.migrations, folder)


def alembic_config() -> Config:
    """The project's alembic configuration ([tool.alembic] in pyproject.toml)."""
    s = config.settings()
    cfg = Config(toml_file=str(s.home / "pyproject.toml"))
    cfg.set_main_option("script_location", str(s.migrations_dir))
    extra = [p for p in os.environ.get("PGRUNBOOK_EXTRA_VERSIONS", "").split(os.pathsep) if p]
    if (
        extra
    ):  # more revision folders on top of migrations/versions (test fixtures, hotfix branches)
        cfg.set_main_option("path_separator", "os")
        cfg.set_main_option(
            "version_locations", os.pathsep.join([str(s.migrations_dir / "versions"), *extra])
        )
    return cfg


def script_directory() -> ScriptDirectory:
    return ScriptDirectory.from_config(alembic_config())


def sqlalchemy_url(url: str) -> str:
    """A libpq URL in SQLAlchemy's psycopg 3 dialect form."""
    scheme, rest = url.split("://", 1)
    return "postgresql+psycopg://" + rest if scheme in ("postgres", "postgresql") else url


def engine(
    target: Target | str,
    *,
    readonly: bool = False,
    statement_timeout: str = "30min",
    lock_timeout: str = "5s",
    application: str = "pgrunbook/migrate",
) -> Engine:
    """An engine for alembic on `target`, every session carrying its timeouts."""
    t = targets.resolve(target) if isinstance(target, str) else target
    options = db.session_options(
        readonly=readonly, statement_timeout=statement_timeout, lock_timeout=lock_timeout
    )
    args = {"application_name": application, "options": options, "connect_timeout": 10}
    if "://" not in t.url:  # a key=value string: SQLAlchemy takes only URLs, psycopg takes both
        return create_engine(
            "postgresql+psycopg://",
            poolclass=NullPool,
            creator=lambda: psycopg.connect(t.url, **args),
        )
    return create_engine(sqlalchemy_url(t.url), poolclass=NullPool, connect_args=args)


def current(conn: psycopg.Connection, target: Target | None = None) -> tuple[str, ...] | None:
    """Revisions recorded (the last applied migration of a SQL-file history), or None when the
    database is not migrated."""
    if h := history(target):
        st = h.status(conn)
        return None if st.records is None else tuple(st.applied[-1:])
    if conn.execute("SELECT to_regclass('alembic_version')").fetchone()[0] is None:
        return None
    rows = conn.execute("SELECT version_num FROM alembic_version ORDER BY 1").fetchall()
    return tuple(r[0] for r in rows)


def managed(target: Target, conn: psycopg.Connection) -> bool:
    """Whether these migrations manage `target`: its app says so, or an alembic_version table is
    there."""
    if target.app.migrations:
        return True
    return conn.execute("SELECT to_regclass('alembic_version') IS NOT NULL").fetchone()[0]


def status(conn: psycopg.Connection, target: Target | None = None) -> MigrationStatus:
    """Where the database stands against the target's migrations (migrations/versions where
    alembic manages it)."""
    if h := history(target):
        st = h.status(conn)
        names = [m.name for m in st.migrations]
        return MigrationStatus(
            tuple(st.applied[-1:]),
            tuple(names[-1:]),
            [Revision(n, "") for n in st.pending],
            tuple(st.unknown),
            managed=st.records is not None,
            failed=tuple(st.failed),
            modified=tuple(st.modified),
            history=h,
        )
    script = script_directory()
    heads = tuple(sorted(script.get_heads()))
    recorded = current(conn)
    if recorded is None:
        pending = _between(script, "heads", "base")
        return MigrationStatus((), heads, pending, managed=False)
    known = tuple(r for r in recorded if _exists(script, r))
    unknown = tuple(r for r in recorded if r not in known)
    pending = _between(script, "heads", known or "base")
    return MigrationStatus(recorded, heads, pending, unknown)


def _exists(script: ScriptDirectory, rev: str) -> bool:
    try:
        return script.get_revision(rev) is not None
    except CommandError:
        return False


def _between(script: ScriptDirectory, upper, lower) -> list[Revision]:
    revs = list(script.iterate_revisions(upper, lower))
    return [Revision(r.revision, (r.doc or "").strip()) for r in reversed(revs)]


def upgrade(target: Target, revision: str = "head", **engine_options) -> None:
    """Apply migrations on `target` up to `revision`."""
    if h := history(target):
        timeouts = ("lock_timeout", "statement_timeout")
        h.upgrade(target, revision, **{k: v for k, v in engine_options.items() if k in timeouts})
        return
    _run(target, command.upgrade, revision, **engine_options)


def downgrade(target: Target, revision: str, **engine_options) -> None:
    """Revert migrations on `target` down to `revision`."""
    if h := history(target):
        raise MigrationRefused(
            f"a {h.kind} history has no down migrations: nothing reverts to {revision}"
        )
    _run(target, command.downgrade, revision, **engine_options)


def stamp(target: Target, revision: str) -> None:
    """Record `revision` as current without running anything (a SQL-file history: as applied,
    like `prisma migrate resolve --applied`)."""
    if h := history(target):
        h.resolve(target, revision, applied=True)
        return
    _run(target, command.stamp, revision)


def _run(target: Target, fn, revision: str, **engine_options) -> None:
    cfg = alembic_config()
    eng = engine(target, **engine_options)
    try:
        # A connection outside any transaction: env.py gives each revision its own.
        with eng.connect() as connection:
            cfg.attributes["connection"] = connection
            fn(cfg, revision)
    finally:
        eng.dispose()

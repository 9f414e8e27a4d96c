"""Migration histories written as folders of SQL files: Prisma Migrate's, and a plain one.

- `prisma`: `prisma/migrations/<timestamp>_<name>/migration.sql` beside `migration_lock.toml`,
  recorded in `_prisma_migrations` exactly as Prisma writes it (id, checksum: the sha256 of the
  file, started_at, finished_at, rolled_back_at, logs, applied_steps_count), so that either tool
  reads the other's work.
- `sql`: ordered `*.sql` files, recorded in `pgrunbook_migrations` (the same columns, and who
  applied each).

Each file is read as PostgreSQL's parser reads it, as it is (a last statement without its
semicolon is a statement; a file's own BEGIN ... COMMIT is followed), and every error names the
migration and the line. Unlike `prisma migrate deploy`, which sends a file's statements one by
one (a failure midway leaves it half applied), a file runs in one transaction with its record,
so a failure changes nothing, the record included: the migration stays pending, as real Prisma
reads it too (a row marked rolled back reads as applied to `prisma migrate status`), and the
failure is in the run's report. A file holding a statement that cannot run in a
transaction (CONCURRENTLY, VACUUM) runs statement by statement, its progress counted in
applied_steps_count; a failure there is recorded as failed, as Prisma records it, and needs
`resolve` before anything else is applied. A success is recorded as Prisma records it: one
applied step, finished_at set, no logs.
"""

from __future__ import annotations

import getpass
import hashlib
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from functools import cached_property
from pathlib import Path

import psycopg
from psycopg import sql

from . import db
from .errors import ConfigError, MigrationRefused, PgRunbookError
from .targets import Target

TABLES = {"prisma": "_prisma_migrations", "sql": "pgrunbook_migrations"}

CREATE = {
    "prisma": """
CREATE TABLE IF NOT EXISTS "_prisma_migrations" (
    "id"                    VARCHAR(36) NOT NULL,
    "checksum"              VARCHAR(64) NOT NULL,
    "finished_at"           TIMESTAMPTZ,
    "migration_name"        VARCHAR(255) NOT NULL,
    "logs"                  TEXT,
    "rolled_back_at"        TIMESTAMPTZ,
    "started_at"            TIMESTAMPTZ NOT NULL DEFAULT now(),
    "applied_steps_count"   INTEGER NOT NULL DEFAULT 0,
    CONSTRAINT "_prisma_migrations_pkey" PRIMARY KEY ("id")
)""",
    "sql": """
CREATE TABLE IF NOT EXISTS pgrunbook_migrations (
    id                  VARCHAR(36) NOT NULL PRIMARY KEY,
    checksum            VARCHAR(64) NOT NULL,
    finished_at         TIMESTAMPTZ,
    migration_name      VARCHAR(255) NOT NULL,
    logs                TEXT,
    rolled_back_at      TIMESTAMPTZ,
    started_at          TIMESTAMPTZ NOT NULL DEFAULT now(),
    applied_steps_count INTEGER NOT NULL DEFAULT 0,
    applied_by          TEXT NOT NULL DEFAULT current_user
)""",
}

RECORDS = """
SELECT id, migration_name, checksum, started_at, finished_at, rolled_back_at, logs,
       applied_steps_count
FROM {table}
ORDER BY started_at, migration_name
"""


class MigrationFailed(PgRunbookError):
    """A migration's statement failed; names the migration and the line (`orig`: the driver's
    error, for retries)."""

    def __init__(self, message: str, orig: BaseException | None = None):
        super().__init__(message)
        self.orig = orig


@dataclass(frozen=True)
class SqlMigration:
    """One file, read once: its bytes are what is parsed, linted, applied and checksummed."""

    name: str
    path: Path
    data: bytes

    @classmethod
    def read(cls, name: str, path: Path) -> SqlMigration:
        return cls(name, path, path.read_bytes())

    @cached_property
    def sql(self) -> str:
        """The file's text as it stands (UTF-8, as Prisma reads it; no newline translated)."""
        return self.data.decode("utf-8")

    @cached_property
    def checksum(self) -> str:
        """Prisma's checksum: the sha256 of the file's bytes, in hex."""
        return hashlib.sha256(self.data).hexdigest()

    @property
    def where(self) -> str:
        """The file, as an operator finds it: `<migration>/migration.sql` or `<name>.sql`."""
        return f"{self.path.parent.name}/{self.path.name}" if self.path.name == "migration.sql" \
            else self.path.name  # fmt: skip

    @cached_property
    def statements(self):
        """The file's statements as PostgreSQL's parser reads them (its own BEGIN and COMMIT
        followed, not listed); LintParseError naming the file and the line."""
        from .sqlparse import LintParseError, parse  # here: pglast only for SQL-file histories

        try:
            return parse(self.sql)
        except LintParseError as e:
            raise LintParseError(f"{self.where}: {e}") from None

    @property
    def transactional(self) -> bool:
        """Whether the file can run in one transaction (no CONCURRENTLY, VACUUM and the like)."""
        return not any(s.needs_autocommit for s in self.statements)


@dataclass(frozen=True)
class Record:
    id: str
    migration_name: str
    checksum: str
    started_at: datetime
    finished_at: datetime | None
    rolled_back_at: datetime | None
    logs: str | None
    applied_steps_count: int

    @property
    def state(self) -> str:
        if self.rolled_back_at is not None:
            return "rolled back"
        return "applied" if self.finished_at is not None else "failed"


@dataclass(frozen=True)
class SqlStatus:
    """Where a database stands against a folder: each migration's latest record decides."""

    migrations: list[SqlMigration]
    records: list[Record] | None  # None: the history table does not exist
    applied: list[str] = field(default_factory=list)
    pending: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    modified: list[str] = field(default_factory=list)
    unknown: list[str] = field(default_factory=list)  # recorded, but not in the folder


class SqlHistory:
    def __init__(self, kind: str, folder: Path):
        if kind not in TABLES:
            raise ConfigError(f"unknown migration history {kind!r}: alembic, prisma or sql")
        self.kind, self.folder, self.table = kind, folder, TABLES[kind]
        self._found: list[SqlMigration] | None = None

    def migrations(self) -> list[SqlMigration]:
        """The folder's migrations, in the order they apply (by name, as Prisma orders them). Read
        once for this object: what was planned and linted is what is applied."""
        if self._found is None:
            self._found = self._read()
        return self._found

    def _read(self) -> list[SqlMigration]:
        if not self.folder.is_dir():
            raise ConfigError(f"the {self.kind} migrations folder {self.folder} does not exist")
        if self.kind == "prisma":
            lock = self.folder / "migration_lock.toml"
            if not lock.is_file() or 'provider = "postgresql"' not in lock.read_text():
                raise ConfigError(
                    f"{lock} is missing or not for postgresql: is {self.folder} a Prisma"
                    " migrations folder?"
                )
            files = sorted(p / "migration.sql" for p in self.folder.iterdir() if p.is_dir())
            return [SqlMigration.read(f.parent.name, f) for f in files if f.is_file()]
        files = sorted(self.folder.glob("*.sql"))
        return [SqlMigration.read(f.stem, f) for f in files]

    def records(self, conn: psycopg.Connection) -> list[Record] | None:
        if conn.execute("SELECT to_regclass(%s)", [_quoted(self.table)]).fetchone()[0] is None:
            return None
        with conn.cursor(row_factory=psycopg.rows.class_row(Record)) as cur:
            return cur.execute(sql.SQL(RECORDS).format(table=sql.Identifier(self.table))).fetchall()

    def failed(self, conn: psycopg.Connection) -> list[str]:
        """Migrations whose latest record started and never finished nor rolled back."""
        latest: dict[str, Record] = {}
        for r in self.records(conn) or ():
            latest[r.migration_name] = r
        return [name for name, r in latest.items() if r.state == "failed"]

    def status(self, conn: psycopg.Connection) -> SqlStatus:
        found = self.migrations()
        records = self.records(conn)
        latest: dict[str, Record] = {}
        for r in records or ():
            latest[r.migration_name] = r  # in start order: the last one stands
        st = SqlStatus(found, records)
        names = {m.name for m in found}
        for m in found:
            r = latest.get(m.name)
            if r is None or r.state == "rolled back":
                st.pending.append(m.name)
            elif r.state == "failed":
                st.failed.append(m.name)
            else:
                st.applied.append(m.name)
                if r.checksum != m.checksum:
                    st.modified.append(m.name)
        st.unknown.extend(n for n, r in latest.items() if n not in names and r.state == "applied")
        return st

    def get(self, name: str) -> SqlMigration:
        for m in self.migrations():
            if m.name == name:
                return m
        raise MigrationRefused(
            f"no migration named {name!r} in {self.folder}: `pgrunbook migrations status` lists"
            " them"
        )

    def script(self, m: SqlMigration) -> str:
        """The SQL of a migration, as the file has it (see `SqlMigration.transactional` for
        whether it runs in one transaction)."""
        return m.sql

    def _ensure_table(self, conn: psycopg.Connection) -> None:
        conn.execute(CREATE[self.kind])

    @contextmanager
    def session(
        self, target: Target, *, lock_timeout: str = "3s", statement_timeout: str = "30min"
    ) -> Iterator[psycopg.Connection]:
        """One connection to apply any number of migrations on (see `apply_on`): the history
        table made, and refused where a failed migration waits to be resolved."""
        with db.connect(
            target,
            readonly=False,
            application="pgrunbook/migrate",
            lock_timeout=lock_timeout,
            statement_timeout=statement_timeout,
        ) as conn:
            self._ensure_table(conn)
            if failed := self.failed(conn):
                raise MigrationRefused(
                    f"{', '.join(failed)} failed earlier and is recorded half applied: resolve"
                    " it first (mode resolve, or `prisma migrate resolve`)"
                )
            yield conn

    def apply(self, target: Target, m: SqlMigration, **timeouts) -> None:
        """Apply one migration on a connection of its own (see `apply_on`)."""
        with self.session(target, **timeouts) as conn:
            self.apply_on(conn, m)

    def apply_on(self, conn: psycopg.Connection, m: SqlMigration) -> None:
        """Apply one migration and record it (see the module's docstring). Raises the error that
        stopped it, after recording it; a file the parser rejects, before recording anything."""
        steps, whole = m.statements, m.transactional
        row = str(uuid.uuid4())
        table = sql.Identifier(self.table)
        record = sql.SQL(
            "INSERT INTO {} (id, checksum, migration_name, started_at, applied_steps_count)"
            " VALUES (%s, %s, %s, now(), 0)"
        ).format(table)
        finish = sql.SQL(
            "UPDATE {} SET finished_at = now(), applied_steps_count = %s WHERE id = %s"
        ).format(table)
        if whole:  # its record in its own transaction: a failure leaves no trace but the
            # report's, and the migration reads as pending, to pgrunbook and Prisma alike
            with conn.transaction():
                conn.execute(record, [row, m.checksum, m.name])
                for stmt in steps:
                    _run_statement(conn, m, stmt)
                conn.execute(finish, [1 if self.kind == "prisma" else len(steps), row])
            return
        conn.execute(record, [row, m.checksum, m.name])  # as Prisma: started, step by step
        done = 0
        try:
            for stmt in steps:
                _run_statement(conn, m, stmt)
                done += 1
                conn.execute(
                    sql.SQL("UPDATE {} SET applied_steps_count = %s WHERE id = %s").format(table),
                    [done, row],
                )
        except MigrationFailed as e:  # recorded failed (never finished), as Prisma does
            log = f"failed at statement {done + 1} of {len(steps)}: {e}"
            conn.execute(sql.SQL("UPDATE {} SET logs = %s WHERE id = %s").format(table),
                         [log, row])  # fmt: skip
            raise
        conn.execute(finish, [1 if self.kind == "prisma" else done, row])

    def upgrade(self, target: Target, to: str = "head", **timeouts) -> None:
        """Apply the pending migrations up to `to` (a name, or head; `base`, alembic's name for
        before the first, is nothing to apply)."""
        if to == "base":
            return
        with db.connect(target) as conn:
            pending = self.status(conn).pending
        found = {m.name: m for m in self.migrations()}
        if to not in ("head", "heads") and to not in pending:
            if to in found:
                return  # already applied
            self.get(to)  # names what is wrong
        with self.session(target, **timeouts) as conn:
            for name in pending:
                self.apply_on(conn, found[name])
                if name == to:
                    break

    def resolve(self, target: Target, name: str, *, applied: bool) -> str:
        """`prisma migrate resolve --applied NAME` (recorded as applied, nothing run) or
        `--rolled-back NAME` (its failed record marked rolled back). Returns what was done."""
        m = self.get(name)
        with db.connect(target, readonly=False, application="pgrunbook/migrate") as conn:
            self._ensure_table(conn)
            st = self.status(conn)
            table = sql.Identifier(self.table)
            if applied:
                if name in st.applied:
                    raise MigrationRefused(f"{name} is already recorded as applied")
                # as Prisma's resolve --applied: a failed record of it is marked rolled back,
                # then a finished one added (else `prisma migrate status` still reads it failed)
                conn.execute(
                    sql.SQL(
                        "UPDATE {} SET rolled_back_at = now() WHERE migration_name = %s"
                        " AND finished_at IS NULL AND rolled_back_at IS NULL"
                    ).format(table),
                    [name],
                )
                conn.execute(
                    sql.SQL(
                        "INSERT INTO {} (id, checksum, migration_name, started_at, finished_at,"
                        " applied_steps_count, logs) VALUES (%s, %s, %s, now(), now(), 0, %s)"
                    ).format(table),
                    [str(uuid.uuid4()), m.checksum, name, f"resolved as applied by {_who()}"],
                )
                return f"recorded {name} as applied; nothing was run"
            if name not in st.failed:
                raise MigrationRefused(
                    f"{name} is not a failed migration ({', '.join(st.failed) or 'none is'}):"
                    " only a failed one can be marked rolled back"
                )
            # its failed record removed, not marked rolled back: real `prisma migrate status`
            # reads a rolled-back row as applied, so the next deploy's work would be hidden
            conn.execute(
                sql.SQL(
                    "DELETE FROM {} WHERE migration_name = %s"
                    " AND finished_at IS NULL AND rolled_back_at IS NULL"
                ).format(table),
                [name],
            )
            return (
                f"resolved the failed {name} as rolled back (its failed record removed; the run's"
                " report keeps it): it will be applied again"
            )


def _run_statement(conn: psycopg.Connection, m: SqlMigration, stmt) -> None:
    """One statement of `m`; MigrationFailed naming the migration and the line."""
    try:
        conn.execute(stmt.text)
    except psycopg.Error as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise MigrationFailed(f"{m.where} line {stmt.line}: {first}", e) from e


@contextmanager
def _nothing():
    yield


def _quoted(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _who() -> str:
    try:
        return getpass.getuser()
    except Exception:  # no user name in this environment
        return "unknown"

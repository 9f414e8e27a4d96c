"""Migration histories written as folders of SQL files: Prisma Migrate's, and a plain one.

- `prisma`: `prisma/migrations/<timestamp>_<name>/migration.sql` beside `migration_lock.toml`,
  recorded in `_prisma_migrations` exactly as Prisma writes it (id, checksum: the sha256 of the
  file, started_at, finished_at, rolled_back_at, logs, applied_steps_count), so that either tool
  reads the other's work.
- `sql`: ordered `*.sql` files, recorded in `pgrunbook_migrations` (the same columns, and who
  applied each).

Unlike `prisma migrate deploy`, which sends a file's statements one by one (a failure midway
leaves it half applied), a file runs in one transaction, so a failure changes nothing and is
recorded as rolled back. A file holding a statement that cannot run in a transaction
(CONCURRENTLY, VACUUM) runs statement by statement, its progress counted in
applied_steps_count; a failure there is recorded as failed, as Prisma records it, and needs
`resolve` before anything else is applied.
"""

from __future__ import annotations

import getpass
import hashlib
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import psycopg
from psycopg import sql

from . import db
from .errors import ConfigError, MigrationRefused
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


@dataclass(frozen=True)
class SqlMigration:
    name: str
    path: Path
    sql: str

    @property
    def checksum(self) -> str:
        """Prisma's checksum: the sha256 of the file's bytes, in hex."""
        return hashlib.sha256(self.path.read_bytes()).hexdigest()


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

    def migrations(self) -> list[SqlMigration]:
        """The folder's migrations, in the order they apply (by name, as Prisma orders them)."""
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
            return [SqlMigration(f.parent.name, f, f.read_text()) for f in files if f.is_file()]
        files = sorted(self.folder.glob("*.sql"))
        return [SqlMigration(f.stem, f, f.read_text()) for f in files]

    def records(self, conn: psycopg.Connection) -> list[Record] | None:
        if conn.execute("SELECT to_regclass(%s)", [_quoted(self.table)]).fetchone()[0] is None:
            return None
        with conn.cursor(row_factory=psycopg.rows.class_row(Record)) as cur:
            return cur.execute(sql.SQL(RECORDS).format(table=sql.Identifier(self.table))).fetchall()

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
        """The SQL as it will run: wrapped in its transaction where it runs in one (the lint then
        sees the same thing as alembic's offline SQL shows it)."""
        return f"BEGIN;\n{m.sql}\nCOMMIT;\n" if transactional(m.sql) else m.sql

    def _ensure_table(self, conn: psycopg.Connection) -> None:
        conn.execute(CREATE[self.kind])

    def apply(
        self,
        target: Target,
        m: SqlMigration,
        *,
        lock_timeout: str = "3s",
        statement_timeout: str = "30min",
    ) -> None:
        """Apply one migration and record it (see the module's docstring). Raises the error that
        stopped it, after recording it."""
        with db.connect(
            target,
            readonly=False,
            application="pgrunbook/migrate",
            lock_timeout=lock_timeout,
            statement_timeout=statement_timeout,
        ) as conn:
            self._ensure_table(conn)
            st = self.status(conn)
            if st.failed:
                raise MigrationRefused(
                    f"{', '.join(st.failed)} failed earlier and is recorded half applied: resolve"
                    " it first (mode resolve, or `prisma migrate resolve`)"
                )
            row = str(uuid.uuid4())
            table = sql.Identifier(self.table)
            conn.execute(
                sql.SQL(
                    "INSERT INTO {} (id, checksum, migration_name, started_at, applied_steps_count)"
                    " VALUES (%s, %s, %s, now(), 0)"
                ).format(table),
                [row, m.checksum, m.name],
            )
            steps = _statements(m.sql)
            try:
                if transactional(m.sql):
                    with conn.transaction():
                        conn.execute(m.sql)
                    done = len(steps)
                else:
                    done = 0
                    for text in steps:
                        conn.execute(text)
                        done += 1
                        conn.execute(
                            sql.SQL("UPDATE {} SET applied_steps_count = %s WHERE id = %s").format(
                                table
                            ),
                            [done, row],
                        )
            except psycopg.Error as e:
                log = str(e).strip()
                if transactional(m.sql):  # rolled back whole: nothing of it stays
                    conn.execute(
                        sql.SQL(
                            "UPDATE {} SET rolled_back_at = now(), logs = %s WHERE id = %s"
                        ).format(table),
                        [f"rolled back: {log}", row],
                    )
                else:
                    conn.execute(
                        sql.SQL("UPDATE {} SET logs = %s WHERE id = %s").format(table),
                        [f"failed at statement {done + 1} of {len(steps)}: {log}", row],
                    )
                raise
            conn.execute(
                sql.SQL(
                    "UPDATE {} SET finished_at = now(), applied_steps_count = %s WHERE id = %s"
                ).format(table),
                [done, row],
            )

    def upgrade(self, target: Target, to: str = "head", **timeouts) -> None:
        """Apply the pending migrations up to `to` (a name, or head)."""
        with db.connect(target) as conn:
            pending = self.status(conn).pending
        if to not in ("head", "heads") and to not in pending:
            if to in {m.name for m in self.migrations()}:
                return  # already applied
            self.get(to)  # names what is wrong
        for name in pending:
            self.apply(target, self.get(name), **timeouts)
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
            conn.execute(
                sql.SQL(
                    "UPDATE {} SET rolled_back_at = now() WHERE migration_name = %s"
                    " AND finished_at IS NULL AND rolled_back_at IS NULL"
                ).format(table),
                [name],
            )
            return f"marked the failed {name} rolled back: it will be applied again"


def transactional(script: str) -> bool:
    """Whether the file can run in one transaction (no CONCURRENTLY, VACUUM and the like)."""
    from .sqlparse import parse  # here: pglast is needed only by SQL-file histories

    return not any(s.needs_autocommit for s in parse(script))


def _statements(script: str) -> list[str]:
    from .sqlparse import parse  # here: pglast is needed only by SQL-file histories

    return [s.text for s in parse(script)]


def _quoted(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _who() -> str:
    try:
        return getpass.getuser()
    except Exception:  # no user name in this environment
        return "unknown"

"""Server administration: databases beside the target's, created, listed, renamed, emptied of
sessions, dropped.

Every procedure that works beside the target database (restore, refresh,
swap, migrate's rehearsal and drift check, the drill, cleanup) does it
through here: one maintenance connection (the server's `postgres`, else
`template1` database), names always through `psycopg.sql.Identifier`.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from datetime import UTC, datetime

import psycopg
from psycopg import sql

from ..base import db
from ..base.errors import PgRunbookError
from ..base.targets import Target

MAINTENANCE = ("postgres", "template1")
STAMP = (  # the UTC time that ends the names of databases kept or made beside the target
    "%Y%m%d%H%M%S"
)

EXISTS = "SELECT 1 FROM pg_database WHERE datname = %(name)s"
STARTING_WITH = """
    SELECT datname AS name
      FROM pg_database
     WHERE EXISTS (SELECT FROM unnest(%(prefixes)s::text[]) AS p WHERE starts_with(datname, p))
     ORDER BY 1
"""
OWNER = "SELECT pg_get_userbyid(datdba) AS owner FROM pg_database WHERE datname = %(name)s"
TERMINATE = """
    SELECT pg_terminate_backend(pid)
      FROM pg_stat_activity
     WHERE datname = %(name)s
       AND pid <> pg_backend_pid()
"""
SESSIONS_ON = "SELECT 1 FROM pg_stat_activity WHERE datname = %(name)s AND pid <> pg_backend_pid()"


class AdminFailed(PgRunbookError):
    "The server's maintenance database cannot be reached, or an operation on a database failed"


def connect(
    target: Target,
    *,
    application: str = "pgrunbook/admin",
    statement_timeout: str = "5min",
    lock_timeout: str = "30s",
) -> psycopg.Connection:
    """A connection to the target's server, outside the target database (autocommit, read-write)."""
    for maintenance in MAINTENANCE:
        try:
            return db.connect(
                target,
                readonly=False,
                database=maintenance,
                application=application,
                statement_timeout=statement_timeout,
                lock_timeout=lock_timeout,
            )
        except PgRunbookError:
            continue
    raise AdminFailed(
        f"cannot reach a maintenance database ({', '.join(MAINTENANCE)}) on {target.name!r}"
    )


def exists(conn: psycopg.Connection, name: str) -> bool:
    return conn.execute(EXISTS, {"name": name}).fetchone() is not None


def database_exists(target: Target, name: str) -> bool:
    with connect(target) as conn:
        return exists(conn, name)


def starting_with(conn: psycopg.Connection, prefixes: Iterable[str]) -> list[str]:
    """Databases of the server whose names start with one of `prefixes`."""
    return [r[0] for r in conn.execute(STARTING_WITH, {"prefixes": list(prefixes)})]


def owner(conn: psycopg.Connection, name: str) -> str | None:
    row = conn.execute(OWNER, {"name": name}).fetchone()
    return row[0] if row else None


def create(
    conn: psycopg.Connection, name: str, *, template: str | None = None, owner: str | None = None
) -> None:
    query = sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name))
    if template:
        query += sql.SQL(" TEMPLATE {}").format(sql.Identifier(template))
    if owner:
        query += sql.SQL(" OWNER {}").format(sql.Identifier(owner))
    conn.execute(query)


def rename(conn: psycopg.Connection, old: str, new: str) -> None:
    conn.execute(
        sql.SQL("ALTER DATABASE {} RENAME TO {}").format(sql.Identifier(old), sql.Identifier(new))
    )


def allow_connections(conn: psycopg.Connection, name: str, allowed: bool) -> None:
    conn.execute(
        sql.SQL("ALTER DATABASE {} WITH ALLOW_CONNECTIONS {}").format(
            sql.Identifier(name), sql.SQL("true" if allowed else "false")
        )
    )


def drop(conn: psycopg.Connection, name: str) -> None:
    """Drop `name` if it exists, ending its sessions (WITH (FORCE))."""
    conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


def drop_database(target: Target, name: str) -> None:
    with connect(target) as conn:
        drop(conn, name)


def end_sessions(conn: psycopg.Connection, name: str, *, within_s: float = 10) -> None:
    """Terminate every other session on database `name` and wait until they are gone."""
    deadline = time.monotonic() + within_s
    while True:
        conn.execute(TERMINATE, {"name": name})
        if not conn.execute(SESSIONS_ON, {"name": name}).fetchone():
            return
        if time.monotonic() > deadline:
            raise AdminFailed(f"sessions on {name!r} did not end within {within_s:g} s")
        time.sleep(0.1)


def stamp(now: datetime | None = None) -> str:
    return (now or datetime.now(UTC)).strftime(STAMP)


def stamped_ages(names: Iterable[str], now: datetime | None = None) -> dict[str, float]:
    """The age in hours of each database whose name ends with a UTC `stamp` (others are left
    out)."""
    now = now or datetime.now(UTC)
    ages = {}
    for name in names:
        try:
            when = datetime.strptime(name.rsplit("_", 1)[-1], STAMP).replace(tzinfo=UTC)
        except ValueError:
            continue
        ages[name] = (now - when).total_seconds() / 3600
    return ages

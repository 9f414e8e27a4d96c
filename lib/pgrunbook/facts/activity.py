"""Activity: the server's client sessions, and who waits on whose locks.

One reading of pg_stat_activity that every check derives from (connections
against the pool, long and idle-in-transaction sessions, SSL, direct access,
a migration's pre-flight): this runbook's own session is never counted.
"""

from __future__ import annotations

from dataclasses import dataclass

import psycopg
from psycopg.rows import class_row

SESSIONS = """
    SELECT a.pid,
           a.datname AS database,
           a.usename AS role,
           coalesce(nullif(a.application_name, ''), '(none)') AS application,
           a.client_addr::text AS client,
           coalesce(a.state, '(unknown)') AS state,
           a.datname = current_database() AS here,
           extract(epoch FROM now() - a.xact_start)::float8 AS xact_s,
           extract(epoch FROM now() - a.state_change)::float8 AS state_s,
           coalesce(s.ssl, false) AS ssl
      FROM pg_stat_activity a
      LEFT JOIN pg_stat_ssl s ON s.pid = a.pid
     WHERE a.backend_type = 'client backend'
       AND a.pid <> pg_backend_pid()
     ORDER BY a.pid
"""

MAX_CONNECTIONS = "SELECT current_setting('max_connections')::int AS max_connections"

LOCK_WAITS = """
    SELECT w.pid AS waiting_pid,
           w.usename AS "user",
           now() - w.query_start AS waiting_for,
           left(w.query, 120) AS waiting_query,
           b.pid AS blocking_pid,
           b.state AS blocking_state,
           left(b.query, 120) AS blocking_query
      FROM pg_stat_activity w
     CROSS JOIN LATERAL unnest(pg_blocking_pids(w.pid)) AS blocker(pid)
      JOIN pg_stat_activity b ON b.pid = blocker.pid
     WHERE w.wait_event_type = 'Lock'
     ORDER BY 3 DESC
"""

LOCK_HOLDERS = """
    SELECT DISTINCT a.pid,
           a.usename AS role,
           a.application_name AS application,
           a.state,
           c.relname AS "table",
           l.mode,
           (now() - a.xact_start)::text AS held_for
      FROM pg_locks l
      JOIN pg_class c ON c.oid = l.relation
      JOIN pg_stat_activity a ON a.pid = l.pid
     WHERE c.relname = ANY(%(tables)s)
       AND a.pid <> pg_backend_pid()
       AND a.datname = current_database()
"""


@dataclass(frozen=True)
class Session:
    pid: int
    database: str | None
    role: str | None
    application: str
    client: str | None  # None: a Unix-socket session
    state: str
    here: bool  # connected to the database this runbook is connected to
    xact_s: float | None  # age of its open transaction; None when none is open
    state_s: float | None  # time in its current state
    ssl: bool

    @property
    def idle_in_transaction(self) -> bool:
        return self.state.startswith("idle in transaction")

    def __str__(self) -> str:
        return f"pid {self.pid} {self.role} ({self.application}, {self.client or 'local'})"


@dataclass(frozen=True)
class LockHolder:
    pid: int
    role: str | None
    application: str | None
    state: str | None
    table: str
    mode: str
    held_for: str | None


def sessions(conn: psycopg.Connection) -> list[Session]:
    """Every client session on the server but this one."""
    with conn.cursor(row_factory=class_row(Session)) as cur:
        return cur.execute(SESSIONS).fetchall()


def max_connections(conn: psycopg.Connection) -> int:
    return conn.execute(MAX_CONNECTIONS).fetchone()[0]


def lock_waits(conn: psycopg.Connection):
    """Sessions waiting on a lock, each with a session blocking it (the blocking tree, one edge per
    row)."""
    import pandas as pd  # here: spares pandas (~270 ms) at start-up

    cur = conn.execute(LOCK_WAITS)
    return pd.DataFrame(cur.fetchall(), columns=[c.name for c in cur.description])


def lock_holders(conn: psycopg.Connection, tables: list[str]) -> list[LockHolder]:
    """Other sessions of this database holding a lock on one of `tables` (by name)."""
    with conn.cursor(row_factory=class_row(LockHolder)) as cur:
        return cur.execute(LOCK_HOLDERS, {"tables": tables}).fetchall()

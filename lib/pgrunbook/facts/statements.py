"""Statements: the application's query statistics, from pg_stat_statements.

The one reader of query statistics: the performance review ranks them, health
counts the slow ones, and both see the same statements. pgrunbook's own work,
its tools' (pg_dump, pg_restore, the seed's COPY, compare's hashing, amcheck)
and catalog reads are left out, and counted in the frame's `attrs`.
"""

from __future__ import annotations

import re

import psycopg
from psycopg import sql

from ..base.db import TAG

HAS_STATEMENTS = "SELECT 1 FROM pg_extension WHERE extname = 'pg_stat_statements'"

STATEMENTS = """
    SELECT queryid,
           query,
           calls,
           total_exec_time AS total_ms,
           mean_exec_time AS mean_ms,
           max_exec_time AS max_ms,
           rows,
           shared_blks_read AS shared_read,
           temp_blks_written AS temp_written
      FROM pg_stat_statements
     WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database())
       {toplevel}
       AND query NOT LIKE '%%pg_stat_statements%%'
     ORDER BY total_exec_time DESC
     LIMIT %(limit)s
"""


EXPLAINABLE = re.compile(
    r"^\s*(\(\s*)*(select|with|insert|update|delete|values|table)\b", re.I | re.S
)


OWN_WORK = re.compile(
    r"^\s*copy\b.*\b(to\s+stdout|from\s+stdin)\b"
    r"|\b(bt_index_check|verify_heapam|pg_export_snapshot|pg_terminate_backend"
    r"|hash\w*extended|pg_stat_statements)\s*\(",
    re.I | re.S,
)


def has_statements(conn: psycopg.Connection) -> bool:
    """Whether pg_stat_statements is created in the connected database."""
    return conn.execute(HAS_STATEMENTS).fetchone() is not None


def own_work(query: str) -> bool:
    """Whether a statement is pgrunbook's own (it carries pgrunbook's tag: see `db.TaggedCursor`;
    where the role may, its sessions are not tracked at all), its tools' (the COPY of pg_dump and
    pg_restore, which cannot be tagged), or a read of the catalog alone (introspection): work on
    the database, not the application's queries."""
    if query.rstrip().endswith(TAG) or OWN_WORK.search(query):
        return True
    relations = _RELATION.findall(query)
    return bool(relations) and all(_CATALOG.match(r) for r in relations)


def statements(conn: psycopg.Connection, *, limit: int = 5000):
    """The application's statements in this database from pg_stat_statements (top-level only where
    the server tells nested ones apart), by total time, with their share of it. The one reader of
    query statistics (see the module's docstring)."""
    import pandas as pd  # here: spares pandas (~270 ms) at start-up

    columns = [
        "queryid",
        "query",
        "calls",
        "total_ms",
        "mean_ms",
        "max_ms",
        "rows",
        "shared_read",
        "temp_written",
    ]
    if not has_statements(conn):
        return pd.DataFrame(columns=[*columns[:2], "kind", *columns[2:], "share_pct"])
    toplevel = sql.SQL(
        "AND toplevel" if conn.info.server_version >= 140000 else ""
    )  # not nested calls
    rows = conn.execute(sql.SQL(STATEMENTS).format(toplevel=toplevel), {"limit": limit}).fetchall()
    frame = pd.DataFrame(rows, columns=columns)
    own = frame["query"].map(own_work)
    excluded = {"statements": int(own.sum()), "total_ms": float(frame.loc[own, "total_ms"].sum())}
    frame = frame[~own].reset_index(drop=True)
    frame.insert(
        2, "kind", ["query" if EXPLAINABLE.match(q) else "utility" for q in frame["query"]]
    )
    total = frame["total_ms"].sum()
    frame["share_pct"] = (100 * frame["total_ms"] / total).round(2) if total else 0.0
    frame = frame.round({"total_ms": 2, "mean_ms": 3, "max_ms": 2})
    frame.attrs["excluded"] = excluded
    return frame


_RELATION = re.compile(
    r"\b(?:from|join)\s+(?:lateral\s+)?(?:only\s+)?"
    r'((?:"[^"]+"|[a-z_][\w$]*)(?:\.(?:"[^"]+"|[a-z_][\w$]*))?)(?![\w$."]|\s*\()',
    re.I,
)


_CATALOG = re.compile(r'^(pg_catalog\.)?"?pg_|^information_schema\.', re.I)

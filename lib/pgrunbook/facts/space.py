"""Space: how big the database and its tables are, and how much of a table is dead rows.

One reader of table sizes (status, the performance review and the migration
linter all derive from it) and one of the database's size. The disk that
holds the data directory is read by `checks.health.storage`, the one place
that knows whether this host can see it.
"""

from __future__ import annotations

from dataclasses import dataclass

import psycopg
from psycopg.rows import class_row

from .catalog import USER_SCHEMAS

DATABASE_SIZE = "SELECT pg_database_size(current_database()) AS bytes"

TABLE_SIZES = f"""
    SELECT n.nspname AS schema,
           c.relname AS table,
           greatest(c.reltuples, 0)::bigint AS rows_estimate,
           pg_total_relation_size(c.oid) AS total_bytes,
           pg_relation_size(c.oid) AS heap_bytes,
           pg_indexes_size(c.oid) AS index_bytes,
           coalesce(pg_total_relation_size(nullif(c.reltoastrelid, 0)), 0) AS toast_bytes
      FROM pg_class c
      JOIN pg_namespace n ON n.oid = c.relnamespace
     WHERE c.relkind IN ('r', 'p', 'm')
       AND {USER_SCHEMAS}
       AND (%(only)s::oid IS NULL OR c.oid = %(only)s::oid)
     ORDER BY total_bytes DESC, 1, 2
     LIMIT %(top)s
"""

TABLE_STATS = """
    SELECT s.schemaname AS schema,
           s.relname AS table,
           s.n_live_tup AS live_rows,
           s.n_dead_tup AS dead_rows,
           greatest(s.last_vacuum, s.last_autovacuum) AS last_vacuum,
           greatest(s.last_analyze, s.last_autoanalyze) AS last_analyze,
           s.seq_scan AS seq_scans,
           s.idx_scan AS index_scans,
           io.heap_blks_hit AS blocks_hit,
           io.heap_blks_read AS blocks_read
      FROM pg_stat_user_tables s
      JOIN pg_statio_user_tables io ON io.relid = s.relid
"""


@dataclass(frozen=True)
class TableSize:
    schema: str
    table: str
    rows_estimate: int
    total_bytes: int
    heap_bytes: int
    index_bytes: int
    toast_bytes: int


def database_size(conn: psycopg.Connection) -> int:
    """Bytes of the connected database."""
    return conn.execute(DATABASE_SIZE).fetchone()[0]


def table_sizes(conn: psycopg.Connection, *, top: int | None = None) -> list[TableSize]:
    """Tables, partitioned parents and materialized views, largest first (`top` of them)."""
    with conn.cursor(row_factory=class_row(TableSize)) as cur:
        return cur.execute(TABLE_SIZES, {"only": None, "top": top}).fetchall()


def table_size(conn: psycopg.Connection, table: str) -> TableSize | None:
    """The size of one table (a name as to_regclass reads it), or None when there is no such
    table."""
    oid = conn.execute("SELECT to_regclass(%s)::oid", [table]).fetchone()[0]
    if oid is None:
        return None
    with conn.cursor(row_factory=class_row(TableSize)) as cur:
        return cur.execute(TABLE_SIZES, {"only": oid, "top": 1}).fetchone()


def table_stats(conn: psycopg.Connection):
    """Per-table activity statistics (live and dead rows, vacuum, scans, cache), as a DataFrame."""
    import pandas as pd  # here: spares pandas (~270 ms) at start-up

    cur = conn.execute(TABLE_STATS)
    return pd.DataFrame(cur.fetchall(), columns=[c.name for c in cur.description])

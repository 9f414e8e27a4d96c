"""Indexes: every index with its use and size, the ones not valid or not ready, amcheck's verdict on
btrees."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

import psycopg
from psycopg import sql
from psycopg.rows import class_row, namedtuple_row

from .catalog import USER_SCHEMAS


@dataclass(frozen=True)
class InvalidIndex:
    schema: str
    table: str
    index: str  # as regclass prints it: qualified where off the search_path
    valid: bool
    ready: bool

    @property
    def state(self) -> str:
        return {(False, False): "invalid and not ready", (False, True): "invalid"}.get(
            (self.valid, self.ready), "not ready"
        )


INVALID_INDEXES = f"""
    SELECT n.nspname AS schema, t.relname AS table, x.indexrelid::regclass::text AS index,
           x.indisvalid AS valid, x.indisready AS ready
      FROM pg_index x
      JOIN pg_class t ON t.oid = x.indrelid
      JOIN pg_namespace n ON n.oid = t.relnamespace
     WHERE NOT (x.indisvalid AND x.indisready)
       AND {USER_SCHEMAS}
     ORDER BY 1, 2, 3
"""


def invalid_indexes(conn: psycopg.Connection) -> list[InvalidIndex]:
    """Indexes not valid or not ready (a failed or running CREATE INDEX CONCURRENTLY): pg_dump
    leaves them out."""
    with conn.cursor(row_factory=class_row(InvalidIndex)) as cur:
        return cur.execute(INVALID_INDEXES).fetchall()


BTREE_INDEXES = f"""
    SELECT n.nspname AS schema, t.relname AS table, i.oid::regclass::text AS index
      FROM pg_index x
      JOIN pg_class i ON i.oid = x.indexrelid
      JOIN pg_class t ON t.oid = x.indrelid
      JOIN pg_namespace n ON n.oid = t.relnamespace
      JOIN pg_am am ON am.oid = i.relam
     WHERE am.amname = 'btree'
       AND i.relkind = 'i'
       AND x.indisvalid
       AND x.indisready
       AND {USER_SCHEMAS}
       AND t.relpersistence <> 't'
     ORDER BY 1, 2, 3
"""


CORRUPTION = ("XX001", "XX002")  # data_corrupted, index_corrupted: what amcheck reports


def amcheck_btree(
    conn: psycopg.Connection,
    *,
    heapallindexed: bool = False,
    keep: Callable[[str, str], bool] | None = None,
) -> tuple[int, list[str], list[str]]:
    """bt_index_check on every valid btree index (of the tables `keep(schema, table)` accepts);
    (indexes checked, corrupt ones, ones that could not be checked: a lock or statement timeout,
    say). amcheck must be installed; a role not allowed to run it raises InsufficientPrivilege at
    the first index."""
    with conn.cursor(row_factory=namedtuple_row) as cur:
        indexes = [
            r.index for r in cur.execute(BTREE_INDEXES) if keep is None or keep(r.schema, r.table)
        ]
    corrupt, unchecked = [], []
    for index in indexes:
        try:
            with conn.transaction():
                conn.execute("SELECT bt_index_check(%s::regclass, %s)", [index, heapallindexed])
        except psycopg.errors.InsufficientPrivilege:
            raise
        except psycopg.Error as e:
            problem = f"{index}: {str(e).strip().splitlines()[0]}"
            (corrupt if e.sqlstate in CORRUPTION else unchecked).append(problem)
    return len(indexes) - len(unchecked), corrupt, unchecked


INDEXES = f"""
    SELECT n.nspname AS schema,
           t.relname AS table,
           i.relname AS name,
           x.indisunique OR x.indisprimary AS unique,
           x.indisvalid AS valid,
           coalesce(s.idx_scan, 0) AS scans,
           pg_relation_size(i.oid) AS bytes,
           am.amname AS method,
           x.indexprs IS NOT NULL OR x.indpred IS NOT NULL AS partial_or_expression,
           ARRAY(SELECT a.attname
                   FROM unnest(x.indkey[0:x.indnkeyatts - 1]) WITH ORDINALITY k(num, ord)
                   JOIN pg_attribute a ON a.attrelid = x.indrelid AND a.attnum = k.num
                  ORDER BY k.ord) AS columns,
           EXISTS (SELECT 1 FROM pg_constraint c WHERE c.conindid = i.oid) AS backs_constraint
      FROM pg_index x
      JOIN pg_class i ON i.oid = x.indexrelid
      JOIN pg_class t ON t.oid = x.indrelid
      JOIN pg_namespace n ON n.oid = t.relnamespace
      JOIN pg_am am ON am.oid = i.relam
      LEFT JOIN pg_stat_user_indexes s ON s.indexrelid = i.oid
     WHERE {USER_SCHEMAS}
"""


@dataclass(frozen=True)
class Index:
    schema: str
    table: str
    name: str
    unique: bool
    valid: bool
    scans: int
    bytes: int
    method: str
    partial_or_expression: bool
    columns: tuple[str, ...]
    backs_constraint: bool

    @property
    def ident(self) -> str:
        return sql.Identifier(self.schema, self.name).as_string(None)


def indexes(conn: psycopg.Connection) -> list[Index]:
    """Every index of the user's tables, with its scans since statistics count and its size."""
    with conn.cursor(row_factory=class_row(Index)) as cur:
        return [replace(i, columns=tuple(i.columns)) for i in cur.execute(INDEXES).fetchall()]


STATS_SINCE = """
    SELECT coalesce(d.stats_reset, pg_postmaster_start_time()) AS since,
           extract(epoch FROM now() - coalesce(d.stats_reset, pg_postmaster_start_time()))
               / 86400 AS days
      FROM pg_stat_database d
     WHERE d.datname = current_database()
"""


def stats_window(conn: psycopg.Connection) -> tuple[object, float]:
    """Since when this database's usage statistics count (their reset, else the server's start), in
    days."""
    since, days = conn.execute(STATS_SINCE).fetchone()
    return since, float(days)

"""What PostgreSQL itself decides about a schema change: a column's type, whether a cast needs no
function (binary-coercible), a function's volatility, a CHECK that proves NOT NULL, the table an
index belongs to, whether a table holds any row. The migration lint asks these of the live
target instead of guessing from the SQL text."""

from __future__ import annotations

import re
from dataclasses import dataclass

import psycopg
from psycopg import sql
from psycopg.rows import class_row

RELATION = """
SELECT c.oid::int AS oid,
       n.nspname AS schema,
       c.relname AS name,
       c.relkind AS kind,
       greatest(c.reltuples, 0)::bigint AS rows_estimate,
       pg_total_relation_size(c.oid) AS bytes
FROM pg_class AS c
JOIN pg_namespace AS n ON n.oid = c.relnamespace
WHERE c.oid = to_regclass(%s)
"""

COLUMN_TYPE = """
SELECT atttypid::int AS type_oid,
       atttypmod AS typmod,
       format_type(atttypid, NULL) AS type_name,
       attnotnull AS not_null
FROM pg_attribute
WHERE attrelid = %s
  AND attname = %s
  AND NOT attisdropped
"""

TYPE_OID = "SELECT to_regtype(%s)::oid::int"

BINARY_COERCIBLE = """
SELECT EXISTS (
    SELECT 1
    FROM pg_cast
    WHERE castsource = %s
      AND casttarget = %s
      AND castmethod = 'b'
)
"""

ANY_VOLATILE = """
SELECT coalesce(bool_or(provolatile = 'v'), false)
FROM pg_proc
WHERE proname = ANY(%s)
"""

VALIDATED_CHECKS = """
SELECT pg_get_constraintdef(oid)
FROM pg_constraint
WHERE conrelid = %s
  AND contype = 'c'
  AND convalidated
"""

INDEX_TABLE = """
SELECT indrelid::regclass::text
FROM pg_index
WHERE indexrelid = to_regclass(%s)
"""


@dataclass(frozen=True)
class Relation:
    oid: int
    schema: str
    name: str
    kind: str
    rows_estimate: int
    bytes: int

    @property
    def qualified(self) -> str:
        return f"{self.schema}.{self.name}"


@dataclass(frozen=True)
class ColumnType:
    type_oid: int
    typmod: int
    type_name: str
    not_null: bool = False


def quoted(name: str) -> str:
    """`schema.table` (or `table`) quoted part by part, as to_regclass reads it."""
    return ".".join('"' + p.replace('"', '""') + '"' for p in name.split(".", 1))


def relation(conn: psycopg.Connection, name: str) -> Relation | None:
    """What `name` resolves to through the session's search_path, or None."""
    with conn.cursor(row_factory=class_row(Relation)) as cur:
        return cur.execute(RELATION, (quoted(name),)).fetchone()


def has_rows(conn: psycopg.Connection, rel: Relation) -> bool:
    """Whether the table holds a row (one read, not a count)."""
    if rel.kind not in ("r", "p", "m"):
        return False
    query = sql.SQL("SELECT EXISTS (SELECT 1 FROM {})").format(sql.Identifier(rel.schema, rel.name))
    return bool(conn.execute(query).fetchone()[0])


def column_type(conn: psycopg.Connection, rel: Relation, column: str) -> ColumnType | None:
    with conn.cursor(row_factory=class_row(ColumnType)) as cur:
        return cur.execute(COLUMN_TYPE, (rel.oid, column)).fetchone()


def type_oid(conn: psycopg.Connection, name: str) -> int | None:
    return conn.execute(TYPE_OID, (name,)).fetchone()[0]


def binary_coercible(conn: psycopg.Connection, source: int, target: int) -> bool:
    """A cast PostgreSQL performs without a function (pg_cast.castmethod 'b'): no row changes."""
    return bool(conn.execute(BINARY_COERCIBLE, (source, target)).fetchone()[0])


def any_volatile(conn: psycopg.Connection, functions: set[str]) -> bool:
    if not functions:
        return False
    return bool(conn.execute(ANY_VOLATILE, (sorted(functions),)).fetchone()[0])


def proven_not_null(conn: psycopg.Connection, rel: Relation, column: str) -> bool:
    """A validated CHECK (col IS NOT NULL): SET NOT NULL then skips its scan (PostgreSQL 12+)."""
    pattern = re.compile(rf'^CHECK \(+"?{re.escape(column)}"? IS NOT NULL\)+$')
    return any(pattern.match(d) for (d,) in conn.execute(VALIDATED_CHECKS, (rel.oid,)).fetchall())


def index_table(conn: psycopg.Connection, index: str) -> str | None:
    row = conn.execute(INDEX_TABLE, (quoted(index),)).fetchone()
    return row[0] if row else None


# Whether a named object exists now, by kind (None: a kind not asked here)
EXISTS = {
    "function": "SELECT EXISTS (SELECT 1 FROM pg_proc WHERE proname = %(name)s"
    " AND (%(schema)s::text IS NULL OR pronamespace = to_regnamespace(%(schema)s)))",
    "procedure": "SELECT EXISTS (SELECT 1 FROM pg_proc WHERE proname = %(name)s"
    " AND (%(schema)s::text IS NULL OR pronamespace = to_regnamespace(%(schema)s)))",
    "aggregate": "SELECT EXISTS (SELECT 1 FROM pg_proc WHERE proname = %(name)s)",
    "trigger": "SELECT EXISTS (SELECT 1 FROM pg_trigger WHERE tgname = %(name)s"
    " AND tgrelid = to_regclass(%(table)s))",
    "schema": "SELECT to_regnamespace(%(name)s) IS NOT NULL",
    "extension": "SELECT EXISTS (SELECT 1 FROM pg_extension WHERE extname = %(name)s)",
    "type": "SELECT to_regtype(%(qualified)s) IS NOT NULL",
    "domain": "SELECT to_regtype(%(qualified)s) IS NOT NULL",
    "relation": "SELECT to_regclass(%(qualified)s) IS NOT NULL",
    "policy": "SELECT EXISTS (SELECT 1 FROM pg_policy WHERE polname = %(name)s"
    " AND polrelid = to_regclass(%(table)s))",
}


def object_exists(
    conn: psycopg.Connection, kind: str, name: str, schema: str | None = None, table: str = ""
) -> bool | None:
    """Whether the object `kind` `name` exists now (None: not a kind asked here)."""
    query = EXISTS.get(kind)
    if query is None:
        return None
    qualified = ".".join(quoted(p) for p in ([schema] if schema else []) + [name])
    return bool(
        conn.execute(
            query,
            {"name": name, "schema": schema, "table": table, "qualified": qualified},
        ).fetchone()[0]
    )

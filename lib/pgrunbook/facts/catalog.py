"""Facts read from a database's catalog: row counts, schema fingerprint, sequences, amcheck.

Backups record them, restores and verifications compare them. All of it is
generated from the catalog, for any schema, not only Fixia's.
"""

from __future__ import annotations

import fnmatch
import hashlib
from dataclasses import dataclass

import psycopg
from psycopg import sql

USER_SCHEMAS = (
    "n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname !~ '^pg_(toast|temp_)'"
)
NOT_EXTENSION = (
    "NOT EXISTS (SELECT 1 FROM pg_depend e WHERE e.objid = c.oid AND e.classid ="
    " 'pg_class'::regclass AND e.deptype = 'e')"
)


TEXT_TYPES = ("text", "varchar", "bpchar", "citext")


@dataclass(frozen=True)
class Rel:
    schema: str
    name: str

    @property
    def ident(self) -> sql.Identifier:
        return sql.Identifier(self.schema, self.name)

    def __str__(self) -> str:
        return f"{self.schema}.{self.name}"


def selected(rel: Rel, pattern: str) -> bool:
    """Whether `rel` matches one of the comma-separated globs of `pattern` (by name or
    schema.name)."""
    return any(
        fnmatch.fnmatch(s, p.strip()) for p in pattern.split(",") for s in (rel.name, str(rel))
    )


def primary_key(conn: psycopg.Connection, relation: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(column names, type names) of the primary key of `relation` (a quoted, qualified name); empty
    if none."""
    row = conn.execute(
        "SELECT array_agg(a.attname ORDER BY k.ord), array_agg(t.typname ORDER BY k.ord) FROM"
        " pg_constraint c, unnest(c.conkey) WITH ORDINALITY k(num, ord) JOIN pg_attribute a ON"
        " a.attnum = k.num JOIN pg_type t ON t.oid = a.atttypid WHERE c.conrelid = %s::regclass AND"
        " c.contype = 'p' AND a.attrelid = c.conrelid",
        [relation],
    ).fetchone()
    return (tuple(row[0]), tuple(row[1])) if row and row[0] else ((), ())


def tables(conn: psycopg.Connection, *, kinds: str = "rp") -> list[tuple[str, str]]:
    """(schema, table) of every table in user schemas (temporary ones aside): ordinary and
    partitioned ones by default; kinds="r" for those holding rows of their own (partitions, not
    their parents), "rm" for every heap (materialized views too)."""
    return conn.execute(
        "SELECT n.nspname, c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
        f" WHERE c.relkind = ANY(%s) AND c.relpersistence <> 't' AND {USER_SCHEMAS} AND"
        f" {NOT_EXTENSION} ORDER BY 1, 2",
        [list(kinds)],
    ).fetchall()


def row_counts(conn: psycopg.Connection) -> dict[str, int]:
    """Exact row count of every user table, keyed 'schema.table'."""
    counts = {}
    for schema, table in tables(conn):
        q = sql.SQL("SELECT count(*) FROM ONLY {}").format(sql.Identifier(schema, table))
        counts[f"{schema}.{table}"] = conn.execute(q).fetchone()[0]
    return counts


_SCHEMA_FACTS = (
    # tables, views and their kind
    (
        "SELECT CASE WHEN c.relkind IN ('r', 'p') THEN 'table' ELSE 'relation' END, n.nspname ||"
        " '.' || c.relname, c.relkind::text FROM pg_class c JOIN pg_namespace n ON n.oid ="
        f" c.relnamespace WHERE c.relkind IN ('r', 'p', 'v', 'm', 'f') AND {USER_SCHEMAS} AND"
        f" {NOT_EXTENSION}"
    ),
    # columns
    (
        "SELECT 'column', n.nspname || '.' || c.relname || '.' || a.attname,"
        " format_type(a.atttypid, a.atttypmod) || CASE WHEN a.attnotnull THEN ' not null' ELSE ''"
        " END || coalesce(' default ' || pg_get_expr(d.adbin, d.adrelid), '') || CASE WHEN"
        " a.attidentity <> '' THEN ' identity ' || a.attidentity::text ELSE '' END FROM"
        " pg_attribute a JOIN pg_class c ON c.oid = a.attrelid JOIN pg_namespace n ON n.oid ="
        " c.relnamespace LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum"
        " WHERE a.attnum > 0 AND NOT a.attisdropped AND c.relkind IN ('r', 'p', 'v', 'm') AND"
        f" {USER_SCHEMAS} AND {NOT_EXTENSION}"
    ),
    # constraints (NOT NULL constraints, catalogued from PostgreSQL 18, are covered by the columns)
    (
        "SELECT 'constraint', n.nspname || '.' || c.relname || '.' || k.conname,"
        " pg_get_constraintdef(k.oid) || CASE WHEN k.convalidated THEN '' ELSE ' (not valid)' END"
        " FROM pg_constraint k JOIN pg_class c ON c.oid = k.conrelid JOIN pg_namespace n ON n.oid"
        f" = c.relnamespace WHERE k.contype IN ('p', 'u', 'f', 'c', 'x') AND {USER_SCHEMAS} AND"
        f" {NOT_EXTENSION}"
    ),
    # indexes
    (
        "SELECT 'index', n.nspname || '.' || i.relname, pg_get_indexdef(i.oid) FROM pg_index x"
        " JOIN pg_class i ON i.oid = x.indexrelid JOIN pg_namespace n ON n.oid = i.relnamespace"
        " JOIN pg_class c ON c.oid = x.indrelid WHERE x.indisvalid AND x.indisready AND"
        f" {USER_SCHEMAS} AND {NOT_EXTENSION}"
    ),
    # sequences, views, functions
    (
        "SELECT 'sequence', n.nspname || '.' || c.relname, format_type(s.seqtypid, NULL) FROM"
        " pg_sequence s JOIN pg_class c ON c.oid = s.seqrelid JOIN pg_namespace n ON n.oid ="
        f" c.relnamespace WHERE {USER_SCHEMAS} AND {NOT_EXTENSION}"
    ),
    (
        "SELECT 'view', n.nspname || '.' || c.relname, pg_get_viewdef(c.oid)"
        " FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
        f" WHERE c.relkind IN ('v', 'm') AND {USER_SCHEMAS} AND {NOT_EXTENSION}"
    ),
    (
        "SELECT 'function', n.nspname || '.' || p.proname || '(' ||"
        " pg_get_function_identity_arguments(p.oid) || ')', md5(p.prosrc) FROM pg_proc p JOIN"
        " pg_namespace n ON n.oid = p.pronamespace LEFT JOIN pg_depend dep ON dep.objid = p.oid"
        f" AND dep.deptype = 'e' WHERE dep.objid IS NULL AND {USER_SCHEMAS}"
    ),
)


def schema_facts(conn: psycopg.Connection) -> list[tuple[str, str, str]]:
    """(kind, name, definition) of every user object, sorted."""
    rows: list[tuple[str, str, str]] = []
    for query in _SCHEMA_FACTS:
        rows.extend(conn.execute(query).fetchall())
    return sorted(rows)


def fingerprint(facts: list[tuple[str, str, str]]) -> str:
    """sha256 of the schema facts: equal iff the schemas are equal."""
    h = hashlib.sha256()
    for row in facts:
        h.update("\x1f".join(row).encode() + b"\x1e")
    return h.hexdigest()


def schema_difference(a: list, b: list) -> list[str]:
    """Objects that differ between two schema_facts lists, named one by one."""
    da, db_ = {(k, n): d for k, n, d in map(tuple, a)}, {(k, n): d for k, n, d in map(tuple, b)}
    out = [f"missing {k} {n}" for k, n in sorted(da.keys() - db_.keys())]
    out += [f"extra {k} {n}" for k, n in sorted(db_.keys() - da.keys())]
    out += [
        f"changed {k} {n}" for k, n in sorted(da.keys() & db_.keys()) if da[(k, n)] != db_[(k, n)]
    ]
    return out

"""Facts read from a database's catalog: row counts, schema fingerprint, sequences, amcheck.

Backups record them, restores and verifications compare them. All of it is
generated from the catalog, for any schema, not only Fixia's.
"""

from __future__ import annotations

import fnmatch
import hashlib
from collections.abc import Callable
from dataclasses import dataclass

import psycopg
from psycopg import sql
from psycopg.rows import class_row, namedtuple_row

USER_SCHEMAS = "n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname !~ '^pg_(toast|temp_)'"
NOT_EXTENSION = "NOT EXISTS (SELECT 1 FROM pg_depend e WHERE e.objid = c.oid AND e.classid = 'pg_class'::regclass AND e.deptype = 'e')"


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
    """Whether `rel` matches one of the comma-separated globs of `pattern` (by name or schema.name)."""
    return any(fnmatch.fnmatch(s, p.strip()) for p in pattern.split(",") for s in (rel.name, str(rel)))


def primary_key(conn: psycopg.Connection, relation: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(column names, type names) of the primary key of `relation` (a quoted, qualified name); empty if none."""
    row = conn.execute(
        "SELECT array_agg(a.attname ORDER BY k.ord), array_agg(t.typname ORDER BY k.ord) FROM pg_constraint c,"
        " unnest(c.conkey) WITH ORDINALITY k(num, ord) JOIN pg_attribute a ON a.attnum = k.num"
        " JOIN pg_type t ON t.oid = a.atttypid"
        " WHERE c.conrelid = %s::regclass AND c.contype = 'p' AND a.attrelid = c.conrelid",
        [relation]).fetchone()
    return (tuple(row[0]), tuple(row[1])) if row and row[0] else ((), ())


def tables(conn: psycopg.Connection, *, kinds: str = "rp") -> list[tuple[str, str]]:
    """(schema, table) of every table in user schemas (temporary ones aside): ordinary and partitioned
    ones by default; kinds="r" for those holding rows of their own (partitions, not their parents),
    "rm" for every heap (materialized views too)."""
    return conn.execute(
        "SELECT n.nspname, c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
        f" WHERE c.relkind = ANY(%s) AND c.relpersistence <> 't' AND {USER_SCHEMAS} AND {NOT_EXTENSION}"
        " ORDER BY 1, 2", [list(kinds)]
    ).fetchall()


FOREIGN_KEYS = """
    SELECT c.conname AS name, c.convalidated AS valid, c.confmatchtype AS match,
           c.conparentid <> 0 AS partition_copy,
           n.nspname AS schema, t.relname AS table, t.relkind = 'r' AS table_only,
           fn.nspname AS ref_schema, f.relname AS ref_table, f.relkind = 'r' AS ref_only,
           ARRAY(SELECT a.attname FROM unnest(c.conkey) WITH ORDINALITY k(num, ord)
                   JOIN pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = k.num ORDER BY k.ord) AS columns,
           ARRAY(SELECT a.attname FROM unnest(c.confkey) WITH ORDINALITY k(num, ord)
                   JOIN pg_attribute a ON a.attrelid = c.confrelid AND a.attnum = k.num ORDER BY k.ord)
               AS ref_columns
      FROM pg_constraint c
      JOIN pg_class t ON t.oid = c.conrelid
      JOIN pg_namespace n ON n.oid = t.relnamespace
      JOIN pg_class f ON f.oid = c.confrelid
      JOIN pg_namespace fn ON fn.oid = f.relnamespace
     WHERE c.contype = 'f'
     ORDER BY n.nspname, t.relname, c.conname
"""


def foreign_keys(conn: psycopg.Connection) -> list:
    """Every foreign key, with its columns on both sides. `partition_copy`: one of the copies a key to
    or from a partitioned table makes per partition (the key itself covers their rows);
    `table_only` / `ref_only`: the side is a plain table, read alone (ONLY) as PostgreSQL's own checks do."""
    with conn.cursor(row_factory=namedtuple_row) as cur:
        return cur.execute(FOREIGN_KEYS).fetchall()


def row_counts(conn: psycopg.Connection) -> dict[str, int]:
    """Exact row count of every user table, keyed 'schema.table'."""
    counts = {}
    for schema, table in tables(conn):
        q = sql.SQL("SELECT count(*) FROM ONLY {}").format(sql.Identifier(schema, table))
        counts[f"{schema}.{table}"] = conn.execute(q).fetchone()[0]
    return counts


_SCHEMA_FACTS = (
    # tables, views and their kind
    "SELECT CASE WHEN c.relkind IN ('r', 'p') THEN 'table' ELSE 'relation' END, n.nspname || '.' || c.relname,"
    " c.relkind::text FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
    f" WHERE c.relkind IN ('r', 'p', 'v', 'm', 'f') AND {USER_SCHEMAS} AND {NOT_EXTENSION}",
    # columns
    "SELECT 'column', n.nspname || '.' || c.relname || '.' || a.attname,"
    " format_type(a.atttypid, a.atttypmod) || CASE WHEN a.attnotnull THEN ' not null' ELSE '' END"
    " || coalesce(' default ' || pg_get_expr(d.adbin, d.adrelid), '')"
    " || CASE WHEN a.attidentity <> '' THEN ' identity ' || a.attidentity::text ELSE '' END"
    " FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid JOIN pg_namespace n ON n.oid = c.relnamespace"
    " LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum"
    f" WHERE a.attnum > 0 AND NOT a.attisdropped AND c.relkind IN ('r', 'p', 'v', 'm') AND {USER_SCHEMAS}"
    f" AND {NOT_EXTENSION}",
    # constraints (NOT NULL constraints, catalogued from PostgreSQL 18, are covered by the columns)
    "SELECT 'constraint', n.nspname || '.' || c.relname || '.' || k.conname,"
    " pg_get_constraintdef(k.oid) || CASE WHEN k.convalidated THEN '' ELSE ' (not valid)' END"
    " FROM pg_constraint k JOIN pg_class c ON c.oid = k.conrelid JOIN pg_namespace n ON n.oid = c.relnamespace"
    f" WHERE k.contype IN ('p', 'u', 'f', 'c', 'x') AND {USER_SCHEMAS} AND {NOT_EXTENSION}",
    # indexes
    "SELECT 'index', n.nspname || '.' || i.relname, pg_get_indexdef(i.oid)"
    " FROM pg_index x JOIN pg_class i ON i.oid = x.indexrelid JOIN pg_namespace n ON n.oid = i.relnamespace"
    " JOIN pg_class c ON c.oid = x.indrelid"
    f" WHERE x.indisvalid AND x.indisready AND {USER_SCHEMAS} AND {NOT_EXTENSION}",
    # sequences, views, functions
    "SELECT 'sequence', n.nspname || '.' || c.relname, format_type(s.seqtypid, NULL)"
    " FROM pg_sequence s JOIN pg_class c ON c.oid = s.seqrelid JOIN pg_namespace n ON n.oid = c.relnamespace"
    f" WHERE {USER_SCHEMAS} AND {NOT_EXTENSION}",
    "SELECT 'view', n.nspname || '.' || c.relname, pg_get_viewdef(c.oid)"
    " FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
    f" WHERE c.relkind IN ('v', 'm') AND {USER_SCHEMAS} AND {NOT_EXTENSION}",
    "SELECT 'function', n.nspname || '.' || p.proname || '(' || pg_get_function_identity_arguments(p.oid) || ')',"
    " md5(p.prosrc) FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace"
    f" LEFT JOIN pg_depend dep ON dep.objid = p.oid AND dep.deptype = 'e' WHERE dep.objid IS NULL AND {USER_SCHEMAS}",
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
    out += [f"changed {k} {n}" for k, n in sorted(da.keys() & db_.keys()) if da[(k, n)] != db_[(k, n)]]
    return out


@dataclass(frozen=True)
class SequenceState:
    sequence: str  # schema.name
    columns: tuple[str, ...]  # every schema.table.column drawing from it
    last_value: int | None  # the last value handed out (before the first call: the start less one step)
    column_max: int | None  # the largest value in any of those columns
    increment: int = 1

    @property
    def column(self) -> str:
        return ", ".join(self.columns)

    @property
    def behind(self) -> bool:
        """The next value would collide with (or fall under) one already in a column."""
        if self.column_max is None or self.increment < 0:
            return False
        return (self.last_value if self.last_value is not None else 0) < self.column_max


SEQUENCE_USES = """
    SELECT DISTINCT sn.nspname AS seq_schema, s.relname AS seq, tn.nspname AS schema, t.relname AS table,
           a.attname AS column, q.seqincrement AS increment
      FROM pg_depend d
      JOIN pg_class s ON s.oid = d.refobjid AND s.relkind = 'S'
      JOIN pg_sequence q ON q.seqrelid = s.oid
      JOIN pg_namespace sn ON sn.oid = s.relnamespace
      JOIN pg_attrdef ad ON ad.oid = d.objid
      JOIN pg_class t ON t.oid = ad.adrelid AND NOT t.relispartition
      JOIN pg_namespace tn ON tn.oid = t.relnamespace
      JOIN pg_attribute a ON a.attrelid = ad.adrelid AND a.attnum = ad.adnum
     WHERE d.classid = 'pg_attrdef'::regclass
       AND d.refclassid = 'pg_class'::regclass
    UNION
    SELECT sn.nspname, s.relname, tn.nspname, t.relname, a.attname, q.seqincrement
      FROM pg_depend d
      JOIN pg_class s ON s.oid = d.objid AND s.relkind = 'S'
      JOIN pg_sequence q ON q.seqrelid = s.oid
      JOIN pg_namespace sn ON sn.oid = s.relnamespace
      JOIN pg_class t ON t.oid = d.refobjid AND NOT t.relispartition
      JOIN pg_namespace tn ON tn.oid = t.relnamespace
      JOIN pg_attribute a ON a.attrelid = t.oid AND a.attnum = d.refobjsubid
     WHERE d.classid = 'pg_class'::regclass
       AND d.refclassid = 'pg_class'::regclass
       AND d.deptype IN ('a', 'i')
     ORDER BY 1, 2, 3, 4, 5
"""


def sequence_uses(conn: psycopg.Connection) -> dict[tuple[str, str], list[tuple[str, str, str]]]:
    """Every sequence a column draws from: owned (serial, identity, OWNED BY) or named by a
    `DEFAULT nextval(...)`, owned or not, shared or not; (schema, sequence) -> [(schema, table, column)]."""
    uses: dict[tuple[str, str], list[tuple[str, str, str]]] = {}
    with conn.cursor(row_factory=namedtuple_row) as cur:
        for r in cur.execute(SEQUENCE_USES):
            uses.setdefault((r.seq_schema, r.seq, r.increment), []).append((r.schema, r.table, r.column))
    return uses


def sequence_states(conn: psycopg.Connection) -> list[SequenceState]:
    """Each sequence in use against the largest value of every column that draws from it."""
    states = []
    for (seq_schema, seq, increment), columns in sequence_uses(conn).items():
        last = conn.execute(
            sql.SQL("SELECT CASE WHEN is_called THEN last_value ELSE last_value - %s END FROM {}").format(
                sql.Identifier(seq_schema, seq)), [increment]).fetchone()[0]
        tops = [conn.execute(sql.SQL("SELECT max({}) FROM {}").format(
            sql.Identifier(column), sql.Identifier(schema, table))).fetchone()[0]
            for schema, table, column in columns]
        tops = [t for t in tops if t is not None]
        states.append(SequenceState(f"{seq_schema}.{seq}", tuple(".".join(c) for c in columns), last,
                                    max(tops) if tops else None, increment))
    return states


def repair_sequence(conn: psycopg.Connection, state: SequenceState) -> None:
    """Move a sequence that is behind its columns to their max."""
    schema, name = state.sequence.split(".", 1)
    conn.execute("SELECT setval(%s::regclass, %s)",
                 [sql.Identifier(schema, name).as_string(conn), state.column_max])


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
            (self.valid, self.ready), "not ready")


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
    """Indexes not valid or not ready (a failed or running CREATE INDEX CONCURRENTLY): pg_dump leaves them out."""
    with conn.cursor(row_factory=class_row(InvalidIndex)) as cur:
        return cur.execute(INVALID_INDEXES).fetchall()


def amcheck_btree(conn: psycopg.Connection, *, heapallindexed: bool = False,
                  keep: Callable[[str, str], bool] | None = None) -> tuple[int, list[str]]:
    """bt_index_check on every valid btree index (of the tables `keep(schema, table)` accepts);
    (indexes checked, problems). amcheck must be installed."""
    indexes = [r[2] for r in conn.execute(
        "SELECT n.nspname, t.relname, i.oid::regclass::text FROM pg_index x JOIN pg_class i ON i.oid = x.indexrelid"
        " JOIN pg_class t ON t.oid = x.indrelid JOIN pg_namespace n ON n.oid = t.relnamespace"
        " JOIN pg_am am ON am.oid = i.relam"
        f" WHERE am.amname = 'btree' AND i.relkind = 'i' AND x.indisvalid AND x.indisready AND {USER_SCHEMAS}"
        " AND t.relpersistence <> 't' ORDER BY 1, 2, 3") if keep is None or keep(r[0], r[1])]
    problems = []
    for index in indexes:
        try:
            with conn.transaction():
                conn.execute("SELECT bt_index_check(%s::regclass, %s)", [index, heapallindexed])
        except psycopg.Error as e:
            problems.append(f"{index}: {str(e).strip().splitlines()[0]}")
    return len(indexes), problems

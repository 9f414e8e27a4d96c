"""Constraints: foreign keys with their columns on both sides, and the CHECKs not yet validated."""

from __future__ import annotations

import psycopg
from psycopg.rows import namedtuple_row

from .catalog import USER_SCHEMAS

FOREIGN_KEYS = """
    SELECT c.conname AS name, c.convalidated AS valid, c.confmatchtype AS match,
           c.conparentid <> 0 AS partition_copy,
           n.nspname AS schema, t.relname AS table, t.relkind = 'r' AS table_only,
           fn.nspname AS ref_schema, f.relname AS ref_table, f.relkind = 'r' AS ref_only,
           ARRAY(SELECT a.attname
                   FROM unnest(c.conkey) WITH ORDINALITY k(num, ord)
                   JOIN pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = k.num
                  ORDER BY k.ord) AS columns,
           ARRAY(SELECT a.attname
                   FROM unnest(c.confkey) WITH ORDINALITY k(num, ord)
                   JOIN pg_attribute a ON a.attrelid = c.confrelid AND a.attnum = k.num
                  ORDER BY k.ord) AS ref_columns
      FROM pg_constraint c
      JOIN pg_class t ON t.oid = c.conrelid
      JOIN pg_namespace n ON n.oid = t.relnamespace
      JOIN pg_class f ON f.oid = c.confrelid
      JOIN pg_namespace fn ON fn.oid = f.relnamespace
     WHERE c.contype = 'f'
     ORDER BY n.nspname, t.relname, c.conname
"""


def foreign_keys(conn: psycopg.Connection) -> list:
    """Every foreign key, with its columns on both sides. `partition_copy`: one of the copies a key
    to or from a partitioned table makes per partition (the key itself covers their rows);
    `table_only` / `ref_only`: the side is a plain table, read alone (ONLY) as PostgreSQL's own
    checks do."""
    with conn.cursor(row_factory=namedtuple_row) as cur:
        return cur.execute(FOREIGN_KEYS).fetchall()


NOT_VALID_TABLE_CHECKS = """
    SELECT c.conname AS name, c.contype AS kind, n.nspname AS schema, t.relname AS table,
           pg_get_expr(c.conbin, c.conrelid) AS expr,
           (SELECT a.attname FROM pg_attribute a
             WHERE a.attrelid = c.conrelid AND a.attnum = c.conkey[1]) AS column
      FROM pg_constraint c
      JOIN pg_class t ON t.oid = c.conrelid AND t.relkind = 'r'
      JOIN pg_namespace n ON n.oid = t.relnamespace
     WHERE c.contype IN ('c', 'n')
       AND NOT c.convalidated
     ORDER BY 3, 4, 1
"""


NOT_VALID_DOMAIN_CHECKS = f"""
    SELECT c.conname AS name, 'd' AS kind, n.nspname AS schema, t.relname AS table,
           pg_get_expr(c.conbin, 0) AS expr, a.attname AS column,
           format('%s.%s', quote_ident(dn.nspname), quote_ident(d.typname)) AS domain
      FROM pg_constraint c
      JOIN pg_type d ON d.oid = c.contypid
      JOIN pg_namespace dn ON dn.oid = d.typnamespace
      JOIN pg_attribute a ON a.atttypid = d.oid AND a.attnum > 0 AND NOT a.attisdropped
      JOIN pg_class t ON t.oid = a.attrelid AND t.relkind = 'r'
      JOIN pg_namespace n ON n.oid = t.relnamespace
     WHERE c.contype = 'c'
       AND NOT c.convalidated
       AND {USER_SCHEMAS}
     ORDER BY 3, 4, 1, 6
"""

"""Sequences: each with the columns that draw from it, by OWNED BY, identity or a nextval()
default."""

from __future__ import annotations

from dataclasses import dataclass

import psycopg
from psycopg import sql
from psycopg.rows import namedtuple_row


@dataclass(frozen=True)
class SequenceState:
    sequence: str  # schema.name
    columns: tuple[str, ...]  # every schema.table.column drawing from it
    last_value: (
        int | None
    )  # the last value handed out (before the first call: the start less one step)
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
    SELECT DISTINCT sn.nspname AS seq_schema, s.relname AS seq,
           tn.nspname AS schema, t.relname AS table, a.attname AS column,
           q.seqincrement AS increment
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
    `DEFAULT nextval(...)`, owned or not, shared or not; (schema, sequence) -> [(schema, table,
    column)].
    """
    uses: dict[tuple[str, str], list[tuple[str, str, str]]] = {}
    with conn.cursor(row_factory=namedtuple_row) as cur:
        for r in cur.execute(SEQUENCE_USES):
            uses.setdefault((r.seq_schema, r.seq, r.increment), []).append(
                (r.schema, r.table, r.column)
            )
    return uses


def sequence_states(conn: psycopg.Connection) -> list[SequenceState]:
    """Each sequence in use against the largest value of every column that draws from it."""
    states = []
    for (seq_schema, seq, increment), columns in sequence_uses(conn).items():
        last = conn.execute(
            sql.SQL(
                "SELECT CASE WHEN is_called THEN last_value ELSE last_value - %s END FROM {}"
            ).format(sql.Identifier(seq_schema, seq)),
            [increment],
        ).fetchone()[0]
        tops = [
            conn.execute(
                sql.SQL("SELECT max({}) FROM {}").format(
                    sql.Identifier(column), sql.Identifier(schema, table)
                )
            ).fetchone()[0]
            for schema, table, column in columns
        ]
        tops = [t for t in tops if t is not None]
        states.append(
            SequenceState(
                f"{seq_schema}.{seq}",
                tuple(".".join(c) for c in columns),
                last,
                max(tops) if tops else None,
                increment,
            )
        )
    return states


def repair_sequence(conn: psycopg.Connection, state: SequenceState) -> None:
    """Move a sequence that is behind its columns to their max."""
    schema, name = state.sequence.split(".", 1)
    conn.execute(
        "SELECT setval(%s::regclass, %s)",
        [sql.Identifier(schema, name).as_string(conn), state.column_max],
    )

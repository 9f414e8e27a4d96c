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
    first_taken: int | None = None  # the first value it would hand out that a column holds

    @property
    def column(self) -> str:
        return ", ".join(self.columns)

    @property
    def next_value(self) -> int | None:
        return None if self.last_value is None else self.last_value + self.increment

    @property
    def behind(self) -> bool:
        """Below the largest value of its columns: a collision lies ahead (see `inserts_left`)."""
        if self.column_max is None or self.increment < 0:
            return False
        return (self.last_value if self.last_value is not None else 0) < self.column_max

    @property
    def inserts_left(self) -> int | None:
        """Inserts before one collides (0: the next one does); None: none ever will."""
        if self.first_taken is None or self.next_value is None:
            return None
        return (self.first_taken - self.next_value) // self.increment


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
        top = max(tops) if tops else None
        taken = None
        if top is not None and increment > 0 and last is not None and last < top:
            found = [_first_taken(conn, c, last + increment, increment) for c in columns]
            taken = min((f for f in found if f is not None), default=None)
        states.append(
            SequenceState(
                f"{seq_schema}.{seq}",
                tuple(".".join(c) for c in columns),
                last,
                top,
                increment,
                taken,
            )
        )
    return states


def _first_taken(
    conn: psycopg.Connection, column: tuple[str, str, str], start: int, step: int
) -> int | None:
    """The smallest value of `column` the sequence would hand out from `start` on (by `step`):
    where its first collision is. An index range scan for a step of 1."""
    schema, table, name = column
    on_step = (
        sql.SQL("")
        if step == 1
        else sql.SQL(" AND ({} - %(start)s) %% %(step)s = 0").format(sql.Identifier(name))
    )
    query = sql.SQL("SELECT min({col}) FROM {table} WHERE {col} >= %(start)s{on_step}").format(
        col=sql.Identifier(name), table=sql.Identifier(schema, table), on_step=on_step
    )
    return conn.execute(query, {"start": start, "step": step}).fetchone()[0]


SEQUENCE_VALUES = """
    SELECT schemaname AS schema, sequencename AS name, last_value
      FROM pg_sequences
     ORDER BY 1, 2
"""


def values(conn: psycopg.Connection) -> dict[str, int | None]:
    """Every sequence's last value handed out (None: never called, or not readable by this
    role), whether a column draws from it or only the application's nextval() calls."""
    return {
        f"{schema}.{name}": last for schema, name, last in conn.execute(SEQUENCE_VALUES).fetchall()
    }


def fallen_back(recorded: dict[str, int | None], now: dict[str, int | None]) -> list[str]:
    """Sequences whose value `now` is below (or missing from) what was `recorded` earlier:
    sequences only grow, so a copy made after the recording must be at or past it."""
    out = []
    for name, was in recorded.items():
        if name not in now:
            out.append(f"{name}: missing")
        elif was is not None and (now[name] is None or now[name] < was):
            out.append(f"{name}: at {now[name]}, was {was}")
    return out


def repair_sequence(conn: psycopg.Connection, state: SequenceState) -> None:
    """Move a sequence that is behind its columns to their max."""
    schema, name = state.sequence.split(".", 1)
    conn.execute(
        "SELECT setval(%s::regclass, %s)",
        [sql.Identifier(schema, name).as_string(conn), state.column_max],
    )

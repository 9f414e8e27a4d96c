"""Integrity validation for any PostgreSQL database, generated from its catalog.

Every check returns findings with counts and up to `max_examples` offending
keys: foreign-key orphans (NOT VALID and composite ones too), duplicates
under unique indexes that are not valid, NOT VALID CHECK and NOT NULL
constraints re-evaluated, sequences behind their column, invalid indexes,
amcheck (btree and heap), transaction-ID and multixact wraparound age, and
the team's own SQL assertions.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import psycopg
from psycopg import sql
from psycopg.rows import namedtuple_row

from ..base import config, targets
from ..base.display import plural
from ..base.findings import Check, Finding, Status
from ..base.limits import DEFAULTS, Limits, level
from ..base.targets import Target
from ..facts import catalog, constraints
from ..facts.catalog import Rel, selected
from ..facts.constraints import NOT_VALID_DOMAIN_CHECKS, NOT_VALID_TABLE_CHECKS
from ..facts.indexes import CORRUPTION, amcheck_btree, invalid_indexes
from ..facts.sequences import sequence_states
from . import compare


def _cols(names: list[str], alias: str = "") -> list[sql.Composable]:
    return [sql.Identifier(alias, n) if alias else sql.Identifier(n) for n in names]


def _examples(rows, width: int) -> tuple[str, ...]:
    return tuple(", ".join(f"{v}" for v in r[:width]) for r in rows)


def _named(names: list[str], rows) -> tuple[str, ...]:
    """Rows as `id=12, client_id=99`: each value with its column's name."""
    return tuple(", ".join(f"{n}={v}" for n, v in zip(names, r, strict=False)) for r in rows)


def _sample(conn: psycopg.Connection, rel: Rel, rows: int) -> tuple[sql.Composable, str]:
    """A TABLESAMPLE clause reading about `rows` rows of `rel` (by pages), and the words for the
    report.

    0, a table no larger than that, or one whose size the planner does not
    know yet (never vacuumed or analyzed) is read whole.
    """
    if rows <= 0:
        return sql.SQL(""), ""
    estimate = conn.execute(
        "SELECT reltuples FROM pg_class WHERE oid = %s::regclass", [rel.ident.as_string(conn)]
    ).fetchone()[0]
    if estimate <= rows:
        return sql.SQL(""), ""
    percent = round(100.0 * rows / estimate, 4)
    return (
        sql.SQL(" TABLESAMPLE SYSTEM ({})").format(sql.Literal(percent)),
        f" in a sample of about {rows:,} of {int(estimate):,} rows",
    )


def _sampled(sample: int) -> str:
    return f" (tables over {sample:,} rows sampled)" if sample > 0 else ""


# -- 1. foreign keys ------------------------------------------------------------


def foreign_keys(
    conn: psycopg.Connection, *, tables: str = "*", max_examples: int = 20, sample: int = 0
) -> list[Finding]:
    """Orphans of every foreign key, by anti-join (MATCH SIMPLE: rows with a NULL key are exempt).

    With `sample`, about that many rows of each larger referencing table are read.
    """
    found, checked = [], 0
    for fk in constraints.foreign_keys(conn):
        name, valid, match, cols, fcols = fk.name, fk.valid, fk.match, fk.columns, fk.ref_columns
        child, parent = Rel(fk.schema, fk.table), Rel(fk.ref_schema, fk.ref_table)
        if fk.partition_copy or not selected(child, tables):
            continue
        checked += 1
        join = sql.SQL(" AND ").join(
            sql.SQL("{} = {}").format(p, c)
            for p, c in zip(_cols(fcols, "p"), _cols(cols, "t"), strict=True)
        )
        present = sql.SQL(" AND " if match != "f" else " OR ").join(
            sql.SQL("{} IS NOT NULL").format(c) for c in _cols(cols, "t")
        )
        tablesample, read = _sample(conn, child, sample)
        # as PostgreSQL's own checks read them: a plain table alone, a partitioned one with its
        # partitions
        only = {True: sql.SQL("ONLY "), False: sql.SQL("")}
        key, _ = _key_of(conn, child)
        shown = key + [c for c in cols if c not in key]  # each orphan by its key and its reference

        select = sql.SQL(
            "SELECT {cols}{extra} FROM {only}{child} t{sample} WHERE ({present}) AND NOT EXISTS "
            "(SELECT 1 FROM {ref_only}{parent} p WHERE {join}) ORDER BY {key}"
        )
        parts = {
            "cols": sql.SQL(", ").join(_cols(shown, "t")),
            "only": only[fk.table_only],
            "child": child.ident,
            "present": present,
            "ref_only": only[fk.ref_only],
            "parent": parent.ident,
            "join": join,
            "key": sql.SQL(", ").join(_cols(key, "t")),
        }
        q = select.format(
            extra=sql.SQL(", count(*) OVER ()"), sample=tablesample, **parts
        ) + sql.SQL(" LIMIT %s")
        rows = conn.execute(q, [max_examples]).fetchall()
        if rows:
            state = "" if valid else " (NOT VALID)"
            found.append(
                Finding(
                    f"foreign key {name}",
                    Status.CRIT,
                    f"{plural(rows[0][-1], 'orphan')} in {child}({', '.join(cols)}) ->"
                    f" {parent}{state}{read}",
                    value=rows[0][-1],
                    examples=_named(shown, rows),
                    query=select.format(extra=sql.SQL(""), sample=sql.SQL(""), **parts).as_string(
                        conn
                    ),
                )
            )
    if not found:
        found.append(
            Finding(
                "foreign keys", Status.OK, f"{checked} foreign keys, no orphans{_sampled(sample)}"
            )
        )
    return found


# -- 2. unique and primary keys ---------------------------------------------------


WITHOUT_PRIMARY_KEY = f"""
    SELECT n.nspname AS schema, c.relname AS table, c.relkind = 'p' AS partitioned,
           (SELECT count(*) FROM pg_partition_tree(c.oid) t
             WHERE t.isleaf AND t.relid <> c.oid) AS leaves,
           (SELECT count(*) FROM pg_partition_tree(c.oid) t
             WHERE t.isleaf AND t.relid <> c.oid
               AND EXISTS (SELECT 1 FROM pg_constraint k
                            WHERE k.conrelid = t.relid AND k.contype = 'p')) AS keyed
      FROM pg_class c
      JOIN pg_namespace n ON n.oid = c.relnamespace
     WHERE c.relkind IN ('r', 'p')
       AND {catalog.USER_SCHEMAS}
       AND {catalog.NOT_EXTENSION}
       AND NOT c.relispartition
       AND NOT EXISTS (SELECT 1 FROM pg_constraint k WHERE k.conrelid = c.oid AND k.contype = 'p')
     ORDER BY 1, 2
"""


def unique_keys(
    conn: psycopg.Connection, *, tables: str = "*", max_examples: int = 20
) -> list[Finding]:
    """Duplicates under unique indexes that are not valid; tables with no primary key."""
    found = []
    invalid = conn.execute(
        "SELECT n.nspname, t.relname, i.relname, x.indnkeyatts, (SELECT array_agg(a.attname ORDER"
        " BY k.ord) FROM unnest(x.indkey[0:x.indnkeyatts - 1]) WITH ORDINALITY  k(num, ord) JOIN"
        " pg_attribute a ON a.attrelid = x.indrelid AND a.attnum = k.num) FROM pg_index x JOIN"
        " pg_class i ON i.oid = x.indexrelid JOIN pg_class t ON t.oid = x.indrelid JOIN"
        " pg_namespace n ON n.oid = t.relnamespace WHERE x.indisunique AND NOT x.indisvalid AND"
        " x.indexprs IS NULL AND x.indpred IS NULL"
    ).fetchall()
    for schema, table, index, _, cols in invalid:
        rel = Rel(schema, table)
        if not selected(rel, tables) or not cols:
            continue
        c = _cols(cols)
        q = sql.SQL(
            "SELECT {}, count(*), count(*) OVER () FROM {} WHERE {} GROUP BY {} HAVING count(*) > 1"
            " LIMIT %s"
        ).format(
            sql.SQL(", ").join(c),
            rel.ident,
            sql.SQL(" AND ").join(sql.SQL("{} IS NOT NULL").format(x) for x in c),
            sql.SQL(", ").join(c),
        )
        rows = conn.execute(q, [max_examples]).fetchall()
        if rows:
            found.append(
                Finding(
                    f"unique {index}",
                    Status.CRIT,
                    f"{plural(rows[0][-1], 'duplicated key')} in {rel}"
                    f"({', '.join(cols)}) under invalid unique index {index}",
                    value=rows[0][-1],
                    examples=tuple(
                        f"{', '.join(map(str, r[: len(cols)]))} x{r[len(cols)]}" for r in rows
                    ),
                )
            )
    no_pk, by_partition = [], []
    for schema, table, partitioned, leaves, keyed in conn.execute(WITHOUT_PRIMARY_KEY):
        if not selected(Rel(schema, table), tables):
            continue
        if partitioned and leaves and leaves == keyed:
            by_partition.append(f"{Rel(schema, table)} ({leaves} partitions)")
        elif partitioned and leaves:
            no_pk.append(f"{Rel(schema, table)} ({leaves - keyed} of {leaves} partitions too)")
        else:
            no_pk.append(str(Rel(schema, table)))
    if no_pk:
        found.append(
            Finding(
                "primary keys",
                Status.WARN,
                f"{len(no_pk)} tables have no primary key",
                examples=tuple(no_pk[:max_examples]),
            )
        )
    if by_partition:
        found.append(
            Finding(
                "partition keys",
                Status.OK,
                f"{len(by_partition)} partitioned tables have no primary key of their own and every"
                " partition has one (a key on the parent must include the partition key): rows"
                " are unique within each partition, not across them",
                examples=tuple(by_partition[:max_examples]),
            )
        )
    if not [f for f in found if f.status is not Status.OK]:
        found.insert(
            0,
            Finding(
                "unique keys",
                Status.OK,
                f"{len(invalid)} invalid unique indexes, no duplicates;"
                " every table has a primary key"
                + (" (or each of its partitions has)" if by_partition else ""),
            ),
        )
    return found


# -- 3. CHECK and NOT NULL constraints that are NOT VALID, on tables and on domains --------


_QUOTED_OR_VALUE = re.compile(r"'(?:[^']|'')*'|\"(?:[^\"]|\"\")*\"|\bVALUE\b")


def _domain_expression(expr: str, column: str) -> sql.Composable:
    """A domain CHECK's expression with its VALUE standing for `column` (quoted text left alone)."""
    ident = sql.Identifier(column).as_string(None)
    return sql.SQL(_QUOTED_OR_VALUE.sub(lambda m: ident if m[0] == "VALUE" else m[0], expr))


def _key_of(conn: psycopg.Connection, rel: Rel) -> tuple[list[str], sql.Composable]:
    """The columns that name a row of `rel` in a report (its primary key, else ctid), and their
    SQL."""
    key, _ = catalog.primary_key(conn, rel.ident.as_string(conn))
    if not key:
        return ["ctid"], sql.SQL("ctid")
    return list(key), sql.SQL(", ").join(map(sql.Identifier, key))


def unvalidated(
    conn: psycopg.Connection, *, tables: str = "*", max_examples: int = 20, sample: int = 0
) -> list[Finding]:
    """Re-evaluate NOT VALID CHECK and NOT NULL constraints of tables, and NOT VALID CHECKs of
    domains on every column of that domain, on the data (or a sample of it); rows named by key.

    Each table is read alone (ONLY): a constraint of a partitioned table is
    checked on each partition, which carries it too.
    """
    found, checked = [], 0
    with conn.cursor(row_factory=namedtuple_row) as cur:
        rows = (
            cur.execute(NOT_VALID_TABLE_CHECKS).fetchall()
            + cur.execute(NOT_VALID_DOMAIN_CHECKS).fetchall()
        )
    for c in rows:
        rel = Rel(c.schema, c.table)
        if not selected(rel, tables):
            continue
        checked += 1
        column = sql.Identifier(c.column) if c.column else None
        if (
            c.kind == "c"
        ):  # the expression is the database's own constraint definition, read from its catalog
            where, what = sql.SQL("NOT ({})").format(sql.SQL(c.expr)), f"CHECK {c.expr}"
        elif c.kind == "d":
            where = sql.SQL("{} IS NOT NULL AND NOT ({})").format(
                column, _domain_expression(c.expr, c.column)
            )
            what = f"domain {c.domain} CHECK {c.expr} on column {c.column}"
        else:
            where, what = sql.SQL("{} IS NULL").format(column), f"NOT NULL {c.column}"
        key, key_sql = _key_of(conn, rel)
        tablesample, read = _sample(conn, rel, sample)
        listing = sql.SQL("SELECT {} FROM ONLY {} WHERE {} ORDER BY 1").format(
            key_sql, rel.ident, where
        )
        bad = conn.execute(
            sql.SQL(
                "SELECT {}, count(*) OVER () FROM ONLY {}{} WHERE {} ORDER BY 1 LIMIT %s"
            ).format(key_sql, rel.ident, tablesample, where),
            [max_examples],
        ).fetchall()
        if bad:
            found.append(
                Finding(
                    f"constraint {c.name}",
                    Status.CRIT,
                    f"{bad[0][-1]} rows of {rel} break "
                    f"{what} (NOT VALID){read}; rows by {', '.join(key)}",
                    value=bad[0][-1],
                    examples=_named(key, bad),
                    query=listing.as_string(conn),
                )
            )
    if not found:
        found.append(
            Finding(
                "not valid constraints",
                Status.OK,
                f"{checked} NOT VALID constraints (tables and domains), all hold{_sampled(sample)}",
            )
        )
    return found


# -- 4. sequences -------------------------------------------------------------------


def sequences(conn: psycopg.Connection, *, tables: str = "*") -> list[Finding]:
    """Every sequence a column draws from (owned, identity, or a nextval default; shared too)
    against
    the largest value in those columns."""
    states = [
        s
        for s in sequence_states(conn)
        if any(selected(Rel(*c.split(".")[:2]), tables) for c in s.columns)
    ]
    behind = [s for s in states if s.behind]
    found = [_sequence_finding(s) for s in behind]
    if found:
        return found
    return [
        Finding(
            "sequences",
            Status.OK,
            f"{len(states)} sequences in use (owned or named by a default), "
            "all ahead of their columns",
        )
    ]


def _sequence_finding(s) -> Finding:
    """A sequence below its columns' max: CRIT when its next value is taken already, else WARN
    with how many inserts are left before one collides (never a collision that is not there)."""
    fix = f"SELECT setval('{s.sequence}', {s.column_max})"
    left = s.inserts_left
    if left == 0:
        return Finding(
            f"sequence {s.sequence}",
            Status.CRIT,
            f"next value {s.next_value} is taken in {s.column}: the next insert collides"
            f" (column max {s.column_max}); {fix}",
            value=0,
        )
    if left is None:
        return Finding(
            f"sequence {s.sequence}",
            Status.OK,
            f"next value {s.next_value} is below {s.column}'s max {s.column_max}, but every"
            " value it will hand out is free",
        )
    return Finding(
        f"sequence {s.sequence}",
        Status.WARN,
        f"next value {s.next_value}, below {s.column}'s max {s.column_max}: the first value it"
        f" would hand out that is taken is {s.first_taken}, {left:,} inserts away; {fix}",
        value=left,
    )


# -- 5. indexes and amcheck ---------------------------------------------------------


def indexes(
    conn: psycopg.Connection, *, tables: str = "*", amcheck: str = "btree", max_examples: int = 20
) -> list[Finding]:
    """Invalid or not-ready indexes, then amcheck on btree indexes and heaps.

    An invalid index is WARN: the data is whole, but the index serves no
    query, costs every write, and is left out of every dump (a unique one's
    duplicates are the unique check's CRIT).
    """
    bad = [i for i in invalid_indexes(conn) if selected(Rel(i.schema, i.table), tables)]
    found = [
        Finding(
            f"index {i.index}",
            Status.WARN,
            f"{i.index} on {i.schema}.{i.table} is {i.state} (a failed CREATE INDEX CONCURRENTLY?):"
            " drop it and create it again; pg_dump leaves it out",
        )
        for i in bad
    ]
    if not found:
        found.append(Finding("indexes", Status.OK, "no invalid or unready index"))
    if amcheck != "off":
        found += amcheck_checks(
            conn,
            tables=tables,
            heapallindexed=amcheck == "heapallindexed",
            max_examples=max_examples,
        )
    return found


def amcheck_checks(
    conn: psycopg.Connection,
    *,
    tables: str = "*",
    heapallindexed: bool = False,
    max_examples: int = 20,
) -> list[Finding]:
    ext = conn.execute("SELECT extversion FROM pg_extension WHERE extname = 'amcheck'").fetchone()
    if ext is None:
        return [
            Finding(
                "amcheck",
                Status.WARN,
                "amcheck is not installed here, so indexes and heaps were not checked for"
                " corruption: CREATE EXTENSION amcheck (contrib); every other check holds",
            )
        ]
    try:
        checked, corrupt, unchecked = amcheck_btree(
            conn,
            heapallindexed=heapallindexed,
            keep=lambda schema, table: selected(Rel(schema, table), tables),
        )
    except psycopg.errors.InsufficientPrivilege:
        return [
            Finding(
                "amcheck",
                Status.UNKNOWN,
                f"role {conn.info.user!r} may not run amcheck, so indexes and heaps were not "
                f"checked for corruption: GRANT EXECUTE ON FUNCTION bt_index_check(regclass, "
                f"boolean), verify_heapam(regclass, boolean, boolean, text, bigint, bigint) TO "
                f"{conn.info.user}",
            )
        ]
    found = [
        Finding(
            "amcheck unchecked",
            Status.UNKNOWN,
            f"{len(unchecked)} btree indexes could not be checked: {unchecked[0]}",
            examples=tuple(unchecked[:max_examples]),
        )
        for _ in unchecked[:1]
    ] + [
        Finding(
            "amcheck btree",
            Status.CRIT if corrupt else Status.OK,
            (
                f"{len(corrupt)} of {checked} btree indexes corrupt: {corrupt[0]}"
                if corrupt
                else f"{checked} btree indexes pass bt_index_check"
                + (" with heapallindexed" if heapallindexed else "")
            ),
            examples=tuple(corrupt[:max_examples]),
        )
    ]
    has_heap = conn.execute("SELECT 1 FROM pg_proc WHERE proname = 'verify_heapam'").fetchone()
    if not has_heap:
        return found + [
            Finding(
                "amcheck heap",
                Status.WARN,
                f"amcheck {ext[0]} has no verify_heapam: heaps not "
                "checked (ALTER EXTENSION amcheck UPDATE)",
            )
        ]
    heap_bad, heap_unchecked = [], []
    rels = [Rel(s, t) for s, t in catalog.tables(conn, kinds="rm") if selected(Rel(s, t), tables)]
    for rel in rels:
        try:
            rows = conn.execute(
                "SELECT blkno, offnum, msg FROM verify_heapam(%s::regclass) LIMIT 3",
                [sql.Identifier(rel.schema, rel.name).as_string(conn)],
            ).fetchall()
        except psycopg.Error as e:
            if conn.info.transaction_status == psycopg.pq.TransactionStatus.INERROR:
                conn.rollback()
            if e.sqlstate not in CORRUPTION:  # not allowed, or a timeout: not corruption
                heap_unchecked.append(f"{rel}: {str(e).strip().splitlines()[0]}")
                continue
            rows = [(None, None, str(e).strip().splitlines()[0])]
        heap_bad += [f"{rel} block {b} item {o}: {m}" for b, o, m in rows]
    if heap_bad or not heap_unchecked:
        found.append(
            Finding(
                "amcheck heap",
                Status.CRIT if heap_bad else Status.OK,
                (
                    f"corruption in {len({h.split(' ')[0] for h in heap_bad})} tables: "
                    f"{heap_bad[0]}"
                    if heap_bad
                    else f"{len(rels)} tables pass verify_heapam"
                ),
                examples=tuple(heap_bad[:max_examples]),
            )
        )
    if heap_unchecked:
        found.append(
            Finding(
                "amcheck heap unchecked",
                Status.UNKNOWN,
                f"{len(heap_unchecked)} of {len(rels)} tables could not be checked: "
                f"{heap_unchecked[0]}",
                examples=tuple(heap_unchecked[:max_examples]),
            )
        )
    return found


# -- 6. wraparound --------------------------------------------------------------------


def wraparound(
    conn: psycopg.Connection,
    *,
    warn: int = DEFAULTS.wraparound_warn,
    crit: int = DEFAULTS.wraparound_crit,
) -> list[Finding]:
    """Transaction-ID and multixact age of every database, as check_postgres txn_wraparound does."""
    found = []
    for label, expr in (
        (Check.XID_AGE, "age(datfrozenxid)"),
        (Check.MULTIXACT_AGE, "mxid_age(datminmxid)"),
    ):
        name, age = conn.execute(
            sql.SQL("SELECT datname, {} FROM pg_database ORDER BY 2 DESC LIMIT 1").format(
                sql.SQL(expr)
            )
        ).fetchone()
        found.append(
            Finding(
                label,
                level(age, warn, crit),
                f"oldest is {name} at {age:,} ({100 * age / 2**31:.1f}% of the way to wraparound)",
                value=age,
                threshold=f"WARN >= {warn:,}, CRIT >= {crit:,}",
            )
        )
    return found


# -- 7. application assertions ----------------------------------------------------------


def assertion_folders(target: Target, checks_dir: str = "") -> list[Path]:
    """The folders of SQL assertions for `target`: `checks_dir` when given, else its app's
    `checks`."""
    names = [checks_dir] if checks_dir else list(target.app.checks)
    return [config.project_path(n) for n in names]


def assertions(
    conn: psycopg.Connection, folders: list[Path], *, max_examples: int = 20
) -> list[Finding]:
    """Each *.sql file in `folders` returns the rows that break one rule of the application.

    A target configured with no assertions has none to break: that is OK, said so.
    """
    files = sorted(f for folder in folders for f in Path(folder).glob("*.sql"))
    if not files:
        where = (
            ", ".join(str(f) for f in folders) or "no checks folder is configured for this target"
        )
        return [Finding("assertions", Status.OK, f"no assertions to run ({where})", value=0)]
    found = []
    for f in files:
        text = f.read_text().strip().rstrip(";")
        rule = next(
            (line[2:].strip() for line in text.splitlines() if line.startswith("--")), f.stem
        )
        try:
            # the query is the team's own file, shipped in the checks folder
            rows = conn.execute(
                sql.SQL("SELECT q.*, count(*) OVER () FROM ({}) q LIMIT %s").format(sql.SQL(text)),
                [max_examples],
            ).fetchall()
        except psycopg.Error as e:
            if conn.info.transaction_status == psycopg.pq.TransactionStatus.INERROR:
                conn.rollback()
            found.append(
                Finding(
                    f"assert {f.stem}",
                    Status.UNKNOWN,
                    f"{rule}: could not run: {str(e).strip().splitlines()[0]}",
                )
            )
            continue
        if rows:
            found.append(
                Finding(
                    f"assert {f.stem}",
                    Status.CRIT,
                    f"{plural(rows[0][-1], 'row')}"
                    f" {'breaks' if rows[0][-1] == 1 else 'break'}: {rule}",
                    value=rows[0][-1],
                    examples=tuple(", ".join(map(str, r[:-1])) for r in rows),
                    query=text,
                )
            )
        else:
            found.append(Finding(f"assert {f.stem}", Status.OK, f"holds: {rule}"))
    return found


# -- selection and the comparison step ---------------------------------------------------

CHECKS = (
    "fk", "unique", "notvalid", "sequences", "indexes", "wraparound", "assertions", "compare"
)  # fmt: skip


class Selection:
    """Which checks run (`checks`: all, or a comma-separated subset of CHECKS) and on which
    tables."""

    def __init__(
        self,
        checks: str = "all",
        *,
        tables: str = "*",
        max_examples: int = 20,
        sample: int = 0,
        limits: Limits = DEFAULTS,
    ):
        wanted = (
            set(CHECKS)
            if checks.strip() == "all"
            else {c.strip() for c in checks.split(",") if c.strip()}
        )
        unknown = wanted - set(CHECKS)
        if unknown:
            raise ValueError(
                f"unknown checks {', '.join(sorted(unknown))}: choose from all, {', '.join(CHECKS)}"
            )
        if sample < 0:
            raise ValueError(f"sample must be 0 (every row) or a number of rows, not {sample}")
        self.wanted, self.tables, self.max_examples, self.sample = (
            wanted,
            tables,
            max_examples,
            sample,
        )
        self.limits = limits

    def run(
        self,
        name: str,
        conn: psycopg.Connection,
        *,
        folders: list[Path] = (),
        amcheck: str = "btree",
    ) -> list[Finding]:
        """The findings of check `name` under this selection: none for a check not selected
        (it did not run, so it says nothing: `scope` names what ran)."""
        if name not in self.wanted:
            return []
        t, n, sample = self.tables, self.max_examples, self.sample
        return {
            "fk": lambda: foreign_keys(conn, tables=t, max_examples=n, sample=sample),
            "unique": lambda: unique_keys(conn, tables=t, max_examples=n),
            "notvalid": lambda: unvalidated(conn, tables=t, max_examples=n, sample=sample),
            "sequences": lambda: sequences(conn, tables=t),
            "indexes": lambda: indexes(conn, tables=t, amcheck=amcheck, max_examples=n),
            "wraparound": lambda: wraparound(
                conn, warn=self.limits.wraparound_warn, crit=self.limits.wraparound_crit
            ),
            "assertions": lambda: assertions(conn, list(folders), max_examples=n),
        }[name]()

    def comparing(self, compare_to: str) -> str:
        """The target to compare with, where the comparison is selected (else none)."""
        return compare_to if "compare" in self.wanted else ""

    def scope(self, conn: psycopg.Connection) -> Finding:
        """Which tables the `tables` filter selects: a filter that selects none is WARN, never a
        green run."""
        every = [Rel(s, t) for s, t in catalog.tables(conn)]
        chosen = [r for r in every if selected(r, self.tables)]
        if every and not chosen:
            return Finding(
                "tables",
                Status.WARN,
                f"tables={self.tables!r} matches none of the {len(every)} "
                "tables: nothing was checked",
                value=0,
            )
        skipped = sorted(set(CHECKS) - self.wanted)
        return Finding(
            "tables",
            Status.OK,
            f"{len(chosen)} of {len(every)} tables selected"
            + ("" if self.tables.strip() == "*" else f" by {self.tables!r}")
            + (f"; checks skipped (not selected): {', '.join(skipped)}" if skipped else ""),
            value=len(chosen),
        )


@dataclass
class CompareStep:
    found: list[Finding]
    comparison: object = None

    def table(self):
        return self.comparison.table() if self.comparison else None

    def show(self):
        """The differing rows side by side, cells that differ highlighted."""
        if not self.comparison or not self.comparison.side_by_side:
            return None
        from IPython.display import HTML  # here: spares IPython (~70 ms) at start-up

        parts = [
            f"<h4>{name}</h4>" + compare.highlight(frame).to_html()
            for name, frame in self.comparison.side_by_side.items()
        ]
        return HTML("".join(parts))


def compare_with(
    target: Target,
    compare_to: str,
    *,
    tables: str = "*",
    max_examples: int = 20,
    show_values: bool = False,
) -> CompareStep:
    """Every selected table of `target` compared row for row with the target named `compare_to`, if
    any."""
    if not compare_to:
        return CompareStep([Finding("compare", Status.OK, "no compare_to target: skipped")])
    result = compare.compare(
        target,
        targets.resolve(compare_to),
        tables_glob=tables,
        max_examples=max_examples,
        show_values=show_values,
    )
    return CompareStep(result.findings(target.name, compare_to, max_examples=max_examples), result)

"""The proof that no personal value remains in the copy.

The residual check compares hashes of the source's values with hashes of the
copy's, across the two servers, streaming the source's hashes (never its
values) into a temporary table on the copy's side.
"""

from __future__ import annotations

import queue
from concurrent.futures import ThreadPoolExecutor

import psycopg
from psycopg import sql

from ...base import db
from ...base.findings import Finding, Status
from ...base.targets import Target
from ...facts import catalog
from .rules import PLACEHOLDER, Rule, Rules, columns
from .text import contact_leaks, phrase_leaks, stream_hashes


def _changed_by_rule(rule: Rule) -> sql.Composable:
    """Source values the rule changes (salt-free, so it can run on the source)."""
    col = sql.Identifier(rule.column)
    if rule.kind == "city":
        return sql.SQL("{} ~ ','").format(col)
    if rule.kind == "text":
        return sql.SQL("{} <> {}").format(col, sql.Literal(rule.option("placeholder", PLACEHOLDER)))
    return sql.SQL("true")


def _residual_column(
    source: psycopg.Connection, copy: psycopg.Connection, rule: Rule, *, max_examples: int = 20
) -> Finding:
    """Rows of the copy whose `rule.column` still holds a value of the source (by hash); OK when
    none."""
    name = f"residual {rule.table}.{rule.column}"
    if rule.kind == "null":
        return Finding(name, Status.OK, "set to NULL")
    col, rel = sql.Identifier(rule.column), rule.rel
    key, _ = catalog.primary_key(copy, rel.ident.as_string(copy))
    keys = sql.SQL(", ").join(sql.Identifier("t", k) for k in key) if key else sql.SQL("t.ctid")
    if rule.kind == "shift_date":  # dates collide across rows: compare row by row, by key
        if not key:
            return Finding(
                name, Status.UNKNOWN, "no primary key to compare shifted dates row by row"
            )
        pair = sql.SQL("hashtextextended(row({})::text || '|' || {}::text, 0)")
        stream_hashes(
            source,
            sql.SQL("SELECT {} FROM {} t WHERE {} IS NOT NULL").format(
                pair.format(keys, sql.Identifier("t", rule.column)), rel.ident, col
            ),
            copy,
            "pgrb_source_hashes",
        )
        hit = pair.format(keys, sql.Identifier("t", rule.column))
    else:
        stream_hashes(
            source,
            sql.SQL(
                "SELECT DISTINCT hashtextextended({}::text, 0) FROM {} WHERE {} IS NOT NULL AND {}"
            ).format(col, rel.ident, col, _changed_by_rule(rule)),
            copy,
            "pgrb_source_hashes",
        )
        hit = sql.SQL("hashtextextended({}::text, 0)").format(sql.Identifier("t", rule.column))
    rows = copy.execute(
        sql.SQL(
            "SELECT row({})::text, count(*) OVER () FROM {} t JOIN pg_temp.pgrb_source_hashes s ON"
            " s.h = {} LIMIT %s"
        ).format(keys, rel.ident, hit),
        [max_examples],
    ).fetchall()
    if rows:
        return Finding(
            name,
            Status.CRIT,
            f"{rows[0][1]} rows still hold a value from the source (rule {rule.kind})",
            value=rows[0][1],
            examples=tuple(f"row {r[0]}" for r in rows),
        )
    return Finding(name, Status.OK, "no source value left")


def _summary(per_column: list[Finding]) -> list[Finding]:
    bad = [f for f in per_column if f.status is not Status.OK]
    clean = len(per_column) - len(bad)
    return bad + [
        Finding(
            "residual values",
            Status.CRIT if bad else Status.OK,
            f"{clean} masked columns hold no source value"
            + (
                f"; {len(bad)} do or cannot be checked"
                if bad
                else " (compared by hash across the two databases)"
            ),
            value=clean,
        )
    ]


def _checked(copy: psycopg.Connection, rules: Rules) -> list[Rule]:
    present = {(c.table, c.column) for c in columns(copy)}
    return [r for r in rules.masked() if (r.table, r.column) in present]


def residual(
    source: psycopg.Connection, copy: psycopg.Connection, rules: Rules, *, max_examples: int = 20
) -> list[Finding]:
    """For each masked column, copy rows still holding a source value (by hash); CRIT when any."""
    return _summary(
        [
            _residual_column(source, copy, r, max_examples=max_examples)
            for r in _checked(copy, rules)
        ]
    )


def prove(
    source: Target, copy: Target, rules: Rules, *, workers: int = 2, max_examples: int = 20
) -> list[Finding]:
    """`residual` and `contact_leaks` together, spread over `workers` pairs of sessions."""

    with db.connect(copy, statement_timeout="0", application="pgrunbook/refresh") as conn:
        jobs: queue.SimpleQueue = queue.SimpleQueue()
        for rule in _checked(conn, rules):
            jobs.put(rule)
    jobs.put(None)  # None: the contact-leak search
    jobs.put("phrases")  # names and streets inside free text

    def work() -> list[tuple[Rule | None, Finding]]:
        done = []
        with (
            db.connect(source, statement_timeout="0", application="pgrunbook/refresh") as src,
            db.connect(
                copy, readonly=False, statement_timeout="0", application="pgrunbook/refresh"
            ) as dst,
        ):
            while True:
                try:
                    rule = jobs.get_nowait()
                except queue.Empty:
                    return done
                done.append(
                    (
                        rule,
                        (
                            contact_leaks(src, dst, rules, max_examples=max_examples)
                            if rule is None
                            else (
                                phrase_leaks(src, dst, rules)
                                if rule == "phrases"
                                else _residual_column(src, dst, rule, max_examples=max_examples)
                            )
                        ),
                    )
                )

    with ThreadPoolExecutor(max_workers=workers) as pool:
        results = [x for f in [pool.submit(work) for _ in range(workers)] for x in f.result()]
    order = {r: i for i, r in enumerate(rules.masked())}
    per_column = sorted(
        (pair for pair in results if isinstance(pair[0], Rule)), key=lambda p: order[p[0]]
    )
    return (
        _summary([f for _, f in per_column])
        + [f for r, f in results if r is None]
        + [f for r, f in results if r == "phrases"]
    )

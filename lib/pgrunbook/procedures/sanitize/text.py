"""Personal data inside kept free text: contact details, and masked names and streets as phrases.

A masked name or street can still sit in a kept text column ("customer Leslie
Collier lives at 814 Cortez Loop"). The source's masked names (first and last
of one row together, and each name value) and the streets the city rule
removes are hashed as phrases of 2 to 4 words; every kept text column is cut
into its 2- to 4-word phrases and hashed alike; a phrase in both is a leak.
One word alone (a first name, a city) is too common to be evidence of
anything: it is not looked for. E-mail addresses and phone numbers are
matched as tokens and compared by hash the same way.
"""

from __future__ import annotations

import psycopg
from psycopg import sql

from ...base.findings import Finding, Status
from ...checks import security
from ...facts.catalog import Rel
from .rules import EMAIL_TOKEN, PHONE_TOKEN, TEXT_TYPES, Column, Rule, Rules, columns

SYNTHETIC = (
    "email",
    "name",
    "phone",
    "token",
    "null",
    "text",
)  # output made from a hash or a literal only


CONTACT = f"({EMAIL_TOKEN})|({PHONE_TOKEN})"


def _numbered_values(cols: list[Column]) -> list[tuple[sql.Composable, sql.Composable]]:
    """Per table of `cols`: the table, and a VALUES list of (the column's number in `cols`, its
    text),
    so that one scan of each table reads all its columns."""
    tables: dict[str, list[tuple[int, Column]]] = {}
    for n, c in enumerate(cols):
        tables.setdefault(c.table, []).append((n, c))
    return [
        (
            Rel(*table.split(".", 1)).ident,
            sql.SQL(", ").join(
                sql.SQL("({}, t.{}::text)").format(sql.Literal(n), sql.Identifier(c.column))
                for n, c in numbered
            ),
        )
        for table, numbered in tables.items()
    ]


def _tokens(cols: list[Column], *, by_column: bool) -> sql.Composable:
    """Hashes of the email- and phone-shaped substrings of `cols` (one scan per table), with the
    column's number."""
    parts = [
        sql.SQL(
            "SELECT v.n, hashtextextended(coalesce(m[1], m[2]), 0) AS h FROM {} t,"
            " LATERAL (VALUES {}) v(n, x), regexp_matches(v.x, {}, 'g') m"
        ).format(rel, values, sql.Literal(CONTACT))
        for rel, values in _numbered_values(cols)
    ]
    union = sql.SQL(" UNION ALL ").join(parts)
    if by_column:
        return sql.SQL("SELECT n, h, count(*) FROM ({}) s GROUP BY n, h").format(union)
    return sql.SQL("SELECT DISTINCT h FROM ({}) s").format(union)


PHRASE = r"^\S+( \S+){1,3}$"  # 2 to 4 words


def _normal(expr: sql.Composable) -> sql.Composable:
    """Lower case, every run of non-alphanumerics one space: 'Collier,  Leslie' -> 'collier
    leslie'."""
    return sql.SQL("btrim(regexp_replace(lower({}), '[^[:alnum:]]+', ' ', 'g'))").format(expr)


def _source_phrases(conn: psycopg.Connection, rules: Rules) -> sql.Composable | None:
    """A query of the hashes of the source's masked names and streets, as phrases; None if it has
    none."""
    present = {(c.table, c.column) for c in columns(conn)}
    by_table: dict[str, list[Rule]] = {}
    for r in rules.masked():
        if r.kind in ("name", "city") and (r.table, r.column) in present:
            by_table.setdefault(r.table, []).append(r)
    parts = []
    for rs in by_table.values():
        names = [
            sql.SQL("{}::text").format(sql.Identifier(r.column)) for r in rs if r.kind == "name"
        ]
        values = (
            [sql.SQL("concat_ws(' ', {})").format(sql.SQL(", ").join(names))]
            if len(names) > 1
            else []
        )
        values += names + [
            sql.SQL("CASE WHEN {0}::text ~ ',' THEN split_part({0}::text, ',', 1) END").format(
                sql.Identifier(r.column)
            )
            for r in rs
            if r.kind == "city"
        ]
        parts.append(
            sql.SQL("SELECT {} AS p FROM {} t, LATERAL (VALUES {}) v(x)").format(
                _normal(sql.SQL("v.x")),
                rs[0].rel.ident,
                sql.SQL(", ").join(sql.SQL("({})").format(v) for v in values),
            )
        )
    if not parts:
        return None
    return sql.SQL("SELECT DISTINCT hashtextextended(p, 0) AS h FROM ({}) s WHERE p ~ {}").format(
        sql.SQL(" UNION ALL ").join(parts), sql.Literal(PHRASE)
    )


def _text_phrases(cols: list[Column]) -> sql.Composable:
    """(n, h): the hash of every 2- to 4-word phrase of the text columns `cols` (n: the column's
    number)."""
    parts = [
        sql.SQL(
            "SELECT v.n, hashtextextended(array_to_string(w.a[i:i + k - 1], ' '), 0) AS h"
            " FROM {} t, LATERAL (VALUES {}) v(n, x),"
            " LATERAL (SELECT regexp_split_to_array({}, ' ') AS a) w,"
            " generate_series(2, 4) k, generate_series(1, cardinality(w.a) - k + 1) i"
            " WHERE v.x ~ '[[:alnum:]][^[:alnum:]]+[[:alnum:]]'"
        ).format(rel, values, _normal(sql.SQL("v.x")))
        for rel, values in _numbered_values(cols)
    ]
    return sql.SQL(" UNION ALL ").join(parts)


def _kept_text(conn: psycopg.Connection, rules: Rules) -> list[Column]:
    masked = {(r.table, r.column) for r in rules.masked()}
    return [c for c in columns(conn) if c.type in TEXT_TYPES and (c.table, c.column) not in masked]


def _phrase_finding(
    cols: list[Column], hits: list[tuple[int, int]], *, status: Status, where: str
) -> Finding:
    if not hits:
        return Finding(
            "names in text",
            Status.OK,
            f"no masked name or street of the source in {where}'s "
            f"{len(cols)} kept text columns (phrases of 2 to 4 words, compared by hash)",
        )
    named = [f"{cols[n].table}.{cols[n].column}: {count} phrases" for n, count in hits]
    return Finding(
        "names in text",
        status,
        f"{len(named)} kept text columns of {where} hold names or streets "
        f"of the source's masked columns: {named[0]}; give them a rule (text or null)",
        examples=tuple(named),
    )


def phrases_in_source(conn: psycopg.Connection, rules: Rules) -> Finding:
    """Plan mode: the source's kept text columns that hold its own masked names or streets
    (WARN)."""
    cols, names = _kept_text(conn, rules), _source_phrases(conn, rules)
    if not cols or names is None:
        return Finding(
            "names in text", Status.OK, "no masked name or street column, or no kept text to search"
        )
    hits = conn.execute(
        sql.SQL(
            "WITH src AS ({}) SELECT n, count(*) FROM ({}) p WHERE h IN (SELECT h FROM src)"
            " GROUP BY n ORDER BY n"
        ).format(names, _text_phrases(cols))
    ).fetchall()
    return _phrase_finding(cols, hits, status=Status.WARN, where="the source")


def phrase_leaks(source: psycopg.Connection, copy: psycopg.Connection, rules: Rules) -> Finding:
    """The proof: the copy's kept text columns holding the source's masked names or streets
    (CRIT)."""
    cols, names = _kept_text(copy, rules), _source_phrases(source, rules)
    if not cols or names is None:
        return Finding(
            "names in text", Status.OK, "no masked name or street column, or no kept text to search"
        )
    stream_hashes(source, names, copy, "pgrb_source_phrases")
    hits = copy.execute(
        sql.SQL(
            "SELECT n, count(*) FROM ({}) p WHERE h IN (SELECT h FROM pg_temp.pgrb_source_phrases)"
            " GROUP BY n ORDER BY n"
        ).format(_text_phrases(cols))
    ).fetchall()
    return _phrase_finding(cols, hits, status=Status.CRIT, where="the copy")


def personal_sources(source: psycopg.Connection, rules: Rules) -> set[tuple[str, str]]:
    """(table, column) of the source whose values are personal: those the rules mask, and those that
    look personal (by name or content) and no rule keeps on purpose."""
    kept = {(r.table, r.column) for r in rules.rules.values() if r.kind == "keep"}
    looks = {tuple(name.rsplit(".", 1)) for name, _ in security.personal_columns(source)}
    return ({(r.table, r.column) for r in rules.masked()} | looks) - kept


def contact_leaks(
    source: psycopg.Connection, copy: psycopg.Connection, rules: Rules, *, max_examples: int = 20
) -> Finding:
    """The source's personal emails and phones that appear in the copy's text columns.

    What is looked for are the email- and phone-shaped strings of the
    source's personal columns: those the rules mask, and those that look
    personal and no rule keeps (see `personal_sources`). Data kept on
    purpose is not a source of them (a title reading "1980-1990" is
    not a phone number of anyone). Columns whose rule makes their values from
    a hash or a literal alone are not searched (nothing of the source can be
    in them; the residual check covers them); every other text column of the
    copy is. The copy is searched first: when it holds no such string at
    all, the source is not read.
    """
    synthetic = {(r.table, r.column) for r in rules.masked() if r.kind in SYNTHETIC}
    cols = [
        c for c in columns(copy) if c.type in TEXT_TYPES and (c.table, c.column) not in synthetic
    ]
    if not cols:
        return Finding("contact leaks", Status.OK, "no text column of the copy to search")
    copy.execute("CREATE TEMP TABLE IF NOT EXISTS pgrb_copy_tokens (n int, h bigint, hits bigint)")
    copy.execute("TRUNCATE pgrb_copy_tokens")
    found = copy.execute(
        sql.SQL("INSERT INTO pgrb_copy_tokens {}").format(_tokens(cols, by_column=True))
    ).rowcount
    if found:
        personal = personal_sources(source, rules)
        src_cols = [
            c for c in columns(source) if c.type in TEXT_TYPES and (c.table, c.column) in personal
        ]
        if not src_cols:
            return Finding(
                "contact leaks",
                Status.OK,
                "no masked text column in the source to take contact "
                f"values from ({found} email- or phone-shaped strings in the copy's kept text)",
            )
        stream_hashes(source, _tokens(src_cols, by_column=False), copy, "pgrb_source_hashes")
        leaks = copy.execute(
            "SELECT n, sum(hits) FROM pgrb_copy_tokens WHERE h IN (SELECT h FROM"
            " pg_temp.pgrb_source_hashes) GROUP BY n ORDER BY n"
        ).fetchall()
        if leaks:
            named = [
                f"{cols[n].table}.{cols[n].column}: {hits} emails or phones of the source's masked"
                " columns"
                for n, hits in leaks
            ]
            return Finding(
                "contact leaks",
                Status.CRIT,
                f"{len(named)} columns hold the source's emails or phones: {named[0]}",
                examples=tuple(named[:max_examples]),
            )
    return Finding(
        "contact leaks",
        Status.OK,
        "no email or phone of the source's masked columns in the copy's "
        f"{len(cols)} text columns not made by a rule ({found} distinct email- or phone-shaped "
        "strings there, none of them personal values of the source)",
    )


def stream_hashes(
    source: psycopg.Connection, query: sql.Composable, copy: psycopg.Connection, table: str
) -> None:
    """Stream one bigint column from `query` on the source into temporary `table` on the copy."""
    copy.execute(
        sql.SQL("CREATE TEMP TABLE IF NOT EXISTS {} (h bigint)").format(sql.Identifier(table))
    )
    copy.execute(sql.SQL("TRUNCATE {}").format(sql.Identifier(table)))
    with source.cursor().copy(sql.SQL("COPY ({}) TO STDOUT (FORMAT binary)").format(query)) as out:
        with copy.cursor().copy(
            sql.SQL("COPY {} (h) FROM STDIN (FORMAT binary)").format(sql.Identifier(table))
        ) as into:
            for chunk in out:
                into.write(chunk)
    copy.execute(sql.SQL("ANALYZE {}").format(sql.Identifier(table)))

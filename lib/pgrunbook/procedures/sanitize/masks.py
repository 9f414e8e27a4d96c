"""Masking in the server as rows load: BEFORE INSERT triggers during a restore's data pass.

The salt reaches them as a session setting of that pass only: it is never in
SQL text, a catalog, a report or a log.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import psycopg
from psycopg import sql

from ...facts.catalog import Rel
from .rules import PLACEHOLDER, SALT_COLUMN, Rule, Rules, RulesError, Salt, columns

SALT_SETTING = "pgrunbook.salt"  # a session setting of the restore's data pass only


MASK_PREFIX = "pgrunbook_mask_"


def _hash(salt: sql.Composable, column: sql.Composable) -> sql.Composable:
    return sql.SQL("encode(sha256(convert_to({} || {}::text, 'UTF8')), 'hex')").format(salt, column)


def expression(
    rule: Rule,
    domain: str,
    *,
    column: sql.Composable | None = None,
    salt: sql.Composable = SALT_COLUMN,
) -> sql.Composable:
    """The SQL computing the masked value of `rule.column` (or of `column`), given the SQL naming
    the salt.

    The rule's options are SQL literals: they are not secret. The salt is
    never one: it is named by `salt` (the triggers' variable, or a bound parameter).
    """
    col = column if column is not None else sql.Identifier(rule.column)
    h = _hash(salt, col)
    lit = sql.Literal
    if rule.kind == "null":
        return sql.SQL("NULL")
    if rule.kind == "email":
        expr = sql.SQL("'user-' || left({}, 20) || '@' || {}::text").format(
            h, lit(rule.option("domain", domain))
        )
    elif rule.kind == "name":
        expr = sql.SQL("{}::text || ' ' || upper(left({}, 8))").format(
            lit(rule.option("prefix", "Person")), h
        )
    elif rule.kind == "phone":
        digits = sql.SQL("mod(('x' || left({}, 15))::bit(60)::bigint, 10000000000)").format(h)
        expr = sql.SQL("'+999 ' || lpad({}::text, 10, '0')").format(digits)
    elif rule.kind == "city":
        expr = sql.SQL(
            "CASE WHEN {c} ~ ',' THEN btrim(regexp_replace({c}, '^[^,]*,', '')) ELSE {c} END"
        ).format(c=col)
    elif rule.kind == "text":
        expr = sql.SQL("{}::text").format(lit(rule.option("placeholder", PLACEHOLDER)))
    elif rule.kind == "token":
        expr = sql.SQL("'redacted-' || left({}, 32)").format(h)
    elif (
        rule.kind == "shift_date"
    ):  # 1..days days, forward or back, never zero; reveals only the shift
        x = sql.SQL("(hashtextextended({} || {}::text, 0) & 2147483647)").format(salt, col)
        expr = sql.SQL(
            "{c} + (CASE WHEN mod({x}, 2) = 0 THEN 1 ELSE -1 END) * (mod({x} / 2, {d}) + 1)"
            " * interval '1 day'"
        ).format(c=col, x=x, d=lit(int(rule.option("days", 30))))
    else:
        raise RulesError(f"no masking for rule {rule.kind!r}")
    return sql.SQL("CASE WHEN {} IS NULL THEN NULL ELSE {} END").format(col, expr)


@dataclass(frozen=True)
class Masked:
    table: str
    columns: tuple[str, ...]


def _function(rel: Rel) -> sql.Identifier:
    return sql.Identifier(rel.schema, f"{MASK_PREFIX}{rel.name}"[:63])


def install_masks(conn: psycopg.Connection, rules: Rules) -> list[Masked]:
    """Before the data is loaded: a BEFORE INSERT trigger per table masks each row as COPY writes
    it.

    So the source's values are never stored in the copy, not even in dead
    rows or WAL. The salt is read from the session setting pgrunbook.salt,
    which only the data pass of the restore has; without it the load fails.
    """
    done = []
    present = {(c.table, c.column) for c in columns(conn)}
    for table, ruled in sorted(rules.tables().items()):
        ruled = [r for r in ruled if (r.table, r.column) in present]
        if not ruled:
            continue
        assigns = sql.SQL(" ").join(
            sql.SQL("NEW.{c} := {e};").format(
                c=sql.Identifier(r.column),
                e=expression(
                    r, rules.email_domain, column=sql.SQL("NEW.{}").format(sql.Identifier(r.column))
                ),
            )
            for r in ruled
        )
        body = (
            sql.SQL(
                "DECLARE pgrunbook_salt text := current_setting({}); BEGIN IF pgrunbook_salt = ''"
                " THEN RAISE EXCEPTION 'no salt for masking'; END IF; {} RETURN NEW; END"
            )
            .format(sql.Literal(SALT_SETTING), assigns)
            .as_string(conn)
        )
        fn, rel = _function(ruled[0].rel), ruled[0].rel
        conn.execute(
            sql.SQL("CREATE FUNCTION {}() RETURNS trigger LANGUAGE plpgsql AS {}").format(
                fn, sql.Literal(body)
            )
        )
        conn.execute(
            sql.SQL(
                "CREATE TRIGGER {} BEFORE INSERT ON {} FOR EACH ROW EXECUTE FUNCTION {}()"
            ).format(sql.Identifier(MASK_PREFIX.rstrip("_")), rel.ident, fn)
        )
        done.append(Masked(table, tuple(r.column for r in ruled)))
    return done


def remove_masks(conn: psycopg.Connection, masked: list[Masked]) -> None:
    """After the data is loaded: the triggers and their functions go; nothing of the rules stays in
    the copy."""
    for m in masked:
        rel = Rel(*m.table.split(".", 1))
        conn.execute(
            sql.SQL("DROP TRIGGER {} ON {}").format(
                sql.Identifier(MASK_PREFIX.rstrip("_")), rel.ident
            )
        )
        conn.execute(sql.SQL("DROP FUNCTION {}()").format(_function(rel)))


def data_env(s: Salt) -> dict[str, str]:
    """The environment of the restore's data pass: the salt as a session setting, never on a command
    line."""
    value = s.value.replace("\\", "\\\\").replace(" ", "\\ ")
    options = f"-c {SALT_SETTING}={value}"
    return {
        "PGOPTIONS": (
            f"{os.environ['PGOPTIONS']} {options}" if os.environ.get("PGOPTIONS") else options
        )
    }


def masked_frame(done: list[Masked], row_counts: dict[str, int] | None = None):
    import pandas as pd  # here: spares pandas (~270 ms) at start-up

    counts = row_counts or {}
    return pd.DataFrame(
        [
            {"table": m.table, "columns": ", ".join(m.columns), "rows": counts.get(m.table)}
            for m in done
        ],
        columns=["table", "columns", "rows"],
    )

"""The plan: which rule applies to which column, and whether that covers every personal column."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import psycopg

from ...base import db
from ...base.findings import Finding, Status
from ...base.targets import Target
from ...checks import security
from .rules import KINDS, UNIQUE_SAFE, Column, Rule, Rules, columns
from .text import phrases_in_source


@dataclass
class Plan:
    rows: list[dict[str, Any]]
    findings: list[Finding]
    proposal: Proposal | None = None  # rules for the unruled personal columns, to start from

    def frame(self):
        """Every column with its rule and verdict, as a DataFrame."""
        import pandas as pd  # here: spares pandas (~270 ms) at start-up

        return pd.DataFrame(
            self.rows, columns=["table", "column", "type", "rule", "status", "note"]
        )

    @property
    def blocked(self) -> bool:
        return any(f.status is Status.CRIT for f in self.findings)


def plan(conn: psycopg.Connection, rules: Rules, *, sample: int = 200) -> Plan:
    """Each column's rule; personal-looking columns without one, and rules that cannot apply, are
    CRIT."""
    cols = columns(conn)
    personal = dict(security.personal_columns(conn, sample=sample))
    rows, unruled, wrong = [], [], []
    for c in cols:
        rule = rules.rules.get((c.table, c.column))
        why = personal.get(f"{c.table}.{c.column}")
        if rule is None:
            status, note = (
                ("CRIT", f"looks personal ({why}): write a rule or keep") if why else ("OK", "kept")
            )
            if why:
                unruled.append(f"{c.table}.{c.column} ({why})")
        else:
            problem = _unfit(rule, c)
            status, note = (
                ("CRIT", problem)
                if problem
                else ("OK", "masked" if rule.kind != "keep" else "kept (rule)")
            )
            if problem:
                wrong.append(f"{c.table}.{c.column}: {problem}")
        rows.append(
            {
                "table": c.table,
                "column": c.column,
                "type": c.type,
                "rule": str(rule) if rule else "",
                "status": status,
                "note": note,
            }
        )
    known = {(c.table, c.column) for c in cols}
    wrong += [
        f"{t}.{col}: no such column in the source"
        for t, col in rules.rules
        if (t, col) not in known
    ]
    masked = len([r for r in rules.masked() if (r.table, r.column) in known])
    found = [
        Finding(
            "rules",
            Status.OK,
            f"{masked} columns masked, {len(cols) - masked} kept, from {rules.name}",
            value=masked,
        )
        if rules.written
        else Finding(
            "rules",
            Status.CRIT,
            f"no masking rules for {'app ' + repr(rules.app) if rules.app else 'this target'}:"
            f" write them first; a start built from the source's {len(unruled)} personal-looking"
            " columns is proposed below (check each one), to save as a file and name with"
            ' sanitize = "FILE" on the app or -p rules FILE',
        )
    ]
    found.append(
        Finding(
            "unruled personal columns",
            Status.CRIT if unruled else Status.OK,
            (
                f"{len(unruled)} columns look personal and have no rule: add a rule or 'keep' to "
                f"{rules.name}"
                if unruled
                else "every personal-looking column has a rule"
            ),
            examples=tuple(unruled),
        )
    )
    found.append(
        Finding(
            "rule errors",
            Status.CRIT if wrong else Status.OK,
            (
                f"{len(wrong)} rules cannot apply: {wrong[0]}"
                if wrong
                else "every rule fits its column"
            ),
            examples=tuple(wrong),
        )
    )
    found.append(phrases_in_source(conn, rules))
    return Plan(rows, found, proposal=Proposal(_propose(cols, personal)) if unruled else None)


class Proposal:
    """Rules proposed for the personal-looking columns that have none, as TOML (shown as a code
    block in a notebook): a start for the team to check, never applied as they stand."""

    def __init__(self, text: str):
        self.text = text

    def __str__(self) -> str:
        return self.text

    def _repr_markdown_(self) -> str:
        return f"Proposed masking rules (check each one before saving):\n\n```toml\n{self.text}```"


def _propose(cols: list[Column], personal: dict[str, str]) -> str:
    by_table: dict[str, list[str]] = {}
    for c in cols:
        if f"{c.table}.{c.column}" in personal:
            by_table.setdefault(c.table, []).append(f'{_toml_key(c.column)} = "{_guess(c)}"')
    return "".join(
        f"[columns.{_toml_key(t)}]\n" + "\n".join(lines) + "\n\n" for t, lines in by_table.items()
    )


def _guess(c: Column) -> str:
    """A first rule for a personal-looking column, from its name and type."""
    name = c.column.lower()
    if KINDS["shift_date"] and c.type in KINDS["shift_date"]:
        return "shift_date"
    if c.type not in KINDS["text"]:
        return "keep" if c.not_null else "null"
    for word, rule in (("mail", "email"), ("phone", "phone"), ("mobile", "phone"),
                       ("city", "city"), ("name", "name")):  # fmt: skip
        if word in name and (rule in UNIQUE_SAFE or not c.unique):
            return rule
    return "token" if c.unique else "text"


def _toml_key(name: str) -> str:
    """A TOML key for a table (`"schema.table"`, quoted: a bare dot would nest) or a column."""
    return json.dumps(name) if not name.replace("_", "").isalnum() else name


def plan_for(target: Target, rules: Rules) -> Plan:
    """`plan` on a read-only session of `target`."""
    with db.connect(target, application="pgrunbook/staging_refresh") as conn:
        return plan(conn, rules)


def verdict(p: Plan, mode: str) -> Finding:
    """Whether the plan lets the refresh go on: an incomplete plan stops apply and fails plan
    mode."""
    blocking = [f for f in p.findings if f.status is Status.CRIT]
    if blocking:
        return Finding(
            "plan",
            Status.CRIT,
            f"the rules are incomplete ({', '.join(f.check for f in blocking)}): "
            "nothing is copied until they are fixed",
        )
    return Finding(
        "plan",
        Status.OK,
        "complete: every personal-looking column has a fitting rule"
        + ("" if mode == "apply" else "; run with mode=apply to refresh"),
    )


def _unfit(rule: Rule, c: Column) -> str:
    if KINDS[rule.kind] and c.type not in KINDS[rule.kind]:
        return f"rule {rule.kind!r} does not apply to type {c.type}"
    if rule.kind == "null" and c.not_null:
        return "rule 'null' on a NOT NULL column"
    if c.unique and rule.kind not in UNIQUE_SAFE:
        return f"rule {rule.kind!r} would break the column's unique index: use email or token"
    return ""

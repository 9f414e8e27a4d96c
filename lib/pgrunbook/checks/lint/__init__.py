"""Migration lint on PostgreSQL's own parser: what each statement locks, whether it rewrites or
scans a table, whether it can run in a transaction, and whether it is safe on the live tables.

`base.sqlparse` reads a script with pglast (the parser of PostgreSQL 18 itself); `judging`
turns each statement into its actions, asking the live target where PostgreSQL decides; `rules`
holds the catalogue with a safe recipe for each unsafe action. Squawk (the `squawk-cli`
package) adds its rules, and those about locks, rewrites and what the app reads count like the
suite's own.

A statement is excused only by a comment before it that names the rule and gives a reason,
which the report keeps:

    -- pgrunbook:ignore index-without-concurrently the table stays empty until the release
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg

from ...base.findings import Finding, Status
from ...base.sqlparse import LintParseError, Statement, parse
from .judging import Action, Server, is_serial, judge, sql_of
from .rules import IGNORED_SQUAWK, RULES, SQUAWK_SAFETY, Rule

__all__ = [
    "Action",
    "LintParseError",
    "LintResult",
    "RULES",
    "Rule",
    "Server",
    "Statement",
    "is_serial",
    "judge",
    "lint_revision",
    "parse",
    "sql_of",
    "squawk",
    "squawk_path",
    "verdict",
]


@dataclass
class LintResult:
    revision: str
    statements: list[dict] = field(default_factory=list)
    squawk: list[dict] = field(default_factory=list)
    findings: list[Finding] = field(default_factory=list)


ALWAYS_FAILS = {"not-in-a-transaction"}  # unsafe whatever the objects are: it fails


def verdict(action: Action, server: Server) -> str:
    """unsafe, caution or safe: this action, on these tables as they are now. An action on
    objects the plan itself made (or that do not exist) is safe: nothing running uses them;
    only a statement that fails wherever it runs stays unsafe."""
    when = action.rule.when
    if action.new and action.rule.name not in ALWAYS_FAILS:
        return "safe"
    if when == "always":
        return "unsafe"
    if when in ("rows", "caution") and server.populated(action.tables):
        return "unsafe" if when == "rows" else "caution"
    return "safe"


def lint_revision(
    conn: psycopg.Connection,
    revision: str,
    script: str,
    *,
    allow_unsafe: bool = False,
    created: set[str] | None = None,
    in_transaction: bool = False,
    statements: list[Statement] | None = None,
) -> LintResult:
    """Lint one revision's SQL against the live tables (`created`: what earlier statements of the
    plan made, updated here; `in_transaction`: whether the script starts inside one;
    `statements`: the script parsed already, as it will run)."""
    server = Server(conn, created)
    result = LintResult(revision)
    pending: set[tuple[str, str]] = set()  # constraints added NOT VALID in this transaction
    if statements is None:
        statements = parse(script, in_transaction=in_transaction)
    statements = [s for s in statements if not s.bookkeeping]
    touched: dict[int, list[str]] = {}
    covered: set[int] = set()  # statements the suite found unsafe (or excused)
    judged: dict[int, set[str]] = {}  # the suite's rules each statement fell under
    for n, stmt in enumerate(statements):
        if not stmt.in_transaction:
            pending.clear()
        for a in judge(stmt, server, pending):
            touched.setdefault(n, []).extend(a.tables)
            judged.setdefault(n, set()).add(a.rule.name)
            said = verdict(a, server)
            row = _row(revision, stmt, a, server)
            reason = dict(stmt.ignores).get(a.rule.name) if said != "safe" else None
            row["verdict"] = f"excused: {reason}" if reason else said
            result.statements.append(row)
            if said == "safe":
                continue
            covered.add(n)
            if reason:
                continue
            result.findings.append(_finding(revision, stmt, a, row, said, allow_unsafe))
    result.squawk = squawk(script)
    for note in result.squawk:
        _judge_squawk(note, statements, touched, covered, judged, server, result, allow_unsafe)
    return result


def _row(revision: str, stmt: Statement, a: Action, server: Server) -> dict[str, Any]:
    rels = [server.relation(t) if t not in server.created else None for t in a.tables]
    return {
        "revision": revision,
        "line": stmt.line,
        "statement": stmt.text[:200],
        "rule": a.rule.name,
        "lock": a.rule.lock,
        "rewrites": a.rewrites,
        "scans": a.scans,
        "tables": ", ".join(r.qualified if r else t for r, t in zip(rels, a.tables, strict=True)),
        "rows_estimate": sum(r.rows_estimate for r in rels if r),
        "bytes": sum(r.bytes for r in rels if r),
    }


def _finding(revision, stmt, a: Action, row, said: str, allow_unsafe: bool) -> Finding:
    where = f" on {row['tables']}" if row["tables"] else ""
    rows = row["rows_estimate"]
    return Finding(
        f"lint {revision}",
        Status.WARN if allow_unsafe or said == "caution" else Status.CRIT,
        f"{a.rule.name}{where}"
        + (f" ({rows:,} rows est.)" if rows else "")
        + f", line {stmt.line}: takes {a.rule.lock}"
        + (f"; {a.note}" if a.note else "")
        + f". {a.rule.recipe}"
        + (" (allowed by allow_unsafe)" if allow_unsafe and said == "unsafe" else ""),
        examples=(stmt.text[:300],),
    )


def _judge_squawk(note, statements, touched, covered, judged, server, result, allow_unsafe) -> None:
    """Squawk's rule as a verdict of its own: counted where the suite said nothing of the
    statement, the statement touches a table with rows, and no ignore comment names the rule.
    Where the suite judged the statement on the live tables (a type change PostgreSQL makes in
    the catalog only, a SET NOT NULL on a column that is NOT NULL already), Squawk, which sees
    only the SQL, does not overrule it."""
    if not _squawk_counts(note):
        note["verdict"] = "note"
        return
    n = _at_line(statements, note.get("line"))
    stmt = statements[n] if n is not None else None
    reason = dict(stmt.ignores).get(note["rule"]) if stmt else None
    if n is not None and n in covered:
        note["verdict"] = "covered by the suite's own verdict on this statement"
    elif n is not None and judged.get(n, set()) & OVERRULES.get(note["rule"], set()):
        why = ", ".join(sorted(judged[n] & OVERRULES[note["rule"]]))
        note["verdict"] = f"safe: the live table says otherwise ({why})"
    elif reason:
        note["verdict"] = f"excused: {reason}"
    elif n is not None and not server.populated(touched.get(n, ())):
        note["verdict"] = "safe: no table it touches holds rows"
    else:
        note["verdict"] = "unsafe"
        result.findings.append(
            Finding(
                f"lint {result.revision}",
                Status.WARN if allow_unsafe else Status.CRIT,
                f"Squawk {note['rule']}, line {_line(note)}: {note.get('message')}"
                + (f" {note['help']}" if note.get("help") else ""),
                examples=(stmt.text[:300],) if stmt else (),
            )
        )


# Squawk's rules that the suite's judgement of the live table can overrule, with the suite's
# verdicts that do: PostgreSQL changes these types in the catalog only; a column that is NOT NULL
# already (or proven by a validated CHECK) is not scanned
OVERRULES = {
    "changing-column-type": {"type-change-without-rewrite"},
    "adding-not-nullable-field": {"set-not-null-already", "set-not-null-proven"},
}


def _squawk_counts(note: dict) -> bool:
    """Squawk's error-level findings count like the suite's own. Squawk 2 reports every rule at
    the warning level, so its rules about locks, rewrites and what the app reads are taken as its
    error level; its style advice (IF NOT EXISTS, bigint, text, timestamptz) stays a note."""
    return (note.get("level") or "").lower() == "error" or note.get("rule") in SQUAWK_SAFETY


def _line(note: dict):
    """Squawk counts lines from 0; the report, from 1."""
    line = note.get("line")
    return line + 1 if isinstance(line, int) else "?"


def _at_line(statements: list[Statement], line) -> int | None:
    """The statement Squawk's 0-based `line` falls in."""
    if not isinstance(line, int):
        return None
    before = [n for n, s in enumerate(statements) if s.line <= line + 1]
    return before[-1] if before else None


def squawk_path() -> str | None:
    local = Path(sys.executable).parent / "squawk"
    return str(local) if local.exists() else shutil.which("squawk")


def squawk(script: str) -> list[dict]:
    """Squawk's findings for `script` (empty when Squawk is not installed or has nothing to say)."""
    exe = squawk_path()
    if exe is None or not script.strip():
        return []
    with tempfile.NamedTemporaryFile("w", suffix=".sql") as f:
        f.write(script)
        f.flush()
        proc = subprocess.run(
            [exe, "--reporter", "json", f.name], capture_output=True, text=True, timeout=60
        )
    try:
        found = json.loads(proc.stdout or "[]")
    except json.JSONDecodeError:
        return []
    return [
        {
            "rule": d.get("rule_name"),
            "level": d.get("level"),
            "message": d.get("message"),
            "help": d.get("help"),
            "line": d.get("line"),
        }
        for d in found
        if d.get("rule_name") not in IGNORED_SQUAWK
    ]

"""Migration lint: what each statement locks, whether it rewrites, and whether it is safe.

The suite's own rules read the SQL a revision will run (alembic offline mode)
and the live sizes of the tables it touches; Squawk (the `squawk-cli`
package) adds its rules. An unsafe statement on a table that holds rows is
CRIT unless allowed, with the safe recipe in one line.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import psycopg
from psycopg import sql

from ..base.findings import Finding, Status
from ..facts import space

IGNORED_SQUAWK = {
    "require-lock-timeout",
    "require-statement-timeout",
    "require-timeout-settings",
    "prefer-robust-stmts",
    "transaction-nesting",
}  # the session sets timeouts itself

NAME = r'(?:"[^"]+"|[\w$]+)(?:\.(?:"[^"]+"|[\w$]+))?'
VOLATILE = re.compile(
    r"\b(random|clock_timestamp|gen_random_uuid|uuid_generate_v\d|nextval|timeofday)\s*\(", re.I
)


def split(script: str) -> list[str]:
    """SQL statements of a script, honouring quotes, dollar quotes and comments."""
    out, buf, i, n = [], [], 0, len(script)
    while i < n:
        c = script[i]
        if script.startswith("--", i):
            j = script.find("\n", i)
            i = n if j < 0 else j + 1
            continue
        if c == "'":
            j = i + 1
            while j < n and not (script[j] == "'" and not script.startswith("''", j)):
                j += 2 if script.startswith("''", j) else 1
            buf.append(script[i : j + 1])
            i = j + 1
            continue
        if c == "$" and (m := re.match(r"\$[A-Za-z_]*\$", script[i:])):
            end = script.find(m[0], i + len(m[0]))
            end = n if end < 0 else end + len(m[0])
            buf.append(script[i:end])
            i = end
            continue
        if c == ";":
            if stmt := "".join(buf).strip():
                out.append(stmt)
            buf, i = [], i + 1
            continue
        buf.append(c)
        i += 1
    if stmt := "".join(buf).strip():
        out.append(stmt)
    return out


def _unquote(name: str) -> str:
    return name.split(".")[-1].strip('"')


@dataclass(frozen=True)
class Rule:
    name: str
    lock: str
    rewrites: bool
    unsafe: bool
    recipe: str = ""


@dataclass(frozen=True)
class Classified:
    statement: str
    rule: Rule
    tables: tuple[str, ...]
    references: tuple[str, ...] = ()


def classify(stmt: str) -> Classified | None:
    """The rule a statement falls under and the tables it touches; None for bookkeeping."""
    s = " ".join(stmt.split())
    u = s.upper()
    if u in ("BEGIN", "COMMIT") or "ALEMBIC_VERSION" in u:
        return None
    if m := re.match(
        rf"CREATE (?:UNIQUE )?INDEX (CONCURRENTLY )?(?:IF NOT EXISTS )?(?:{NAME} )?ON (?:ONLY"
        rf" )?({NAME})",
        s,
        re.I,
    ):
        if m[1]:
            return Classified(
                s,
                Rule("index concurrently", "SHARE UPDATE EXCLUSIVE", False, False),
                (_unquote(m[2]),),
            )
        return Classified(
            s,
            Rule(
                "index without CONCURRENTLY",
                "SHARE",
                False,
                True,
                "CREATE INDEX CONCURRENTLY inside op.get_context().autocommit_block()",
            ),
            (_unquote(m[2]),),
        )
    if m := re.match(rf"CREATE TABLE (?:IF NOT EXISTS )?({NAME})", s, re.I):
        refs = tuple(_unquote(r) for r in re.findall(rf"REFERENCES ({NAME})", s, re.I))
        return Classified(
            s,
            Rule(
                "create table",
                "none on existing tables" + ("; SHARE ROW EXCLUSIVE on referenced" if refs else ""),
                False,
                False,
            ),
            (_unquote(m[1]),),
            refs,
        )
    if m := re.match(rf"DROP TABLE (?:IF EXISTS )?({NAME})", s, re.I):
        return Classified(
            s,
            Rule(
                "drop table",
                "ACCESS EXCLUSIVE",
                False,
                True,
                "deploy an app version that no longer uses the table first, then drop it",
            ),
            (_unquote(m[1]),),
        )
    if m := re.match(rf"ALTER TABLE (?:IF EXISTS )?(?:ONLY )?({NAME}) (.*)", s, re.I):
        return _alter(s, _unquote(m[1]), m[2])
    if m := re.match(rf"(?:UPDATE|DELETE FROM) (?:ONLY )?({NAME})", s, re.I):
        return Classified(
            s,
            Rule(
                "data change",
                "ROW EXCLUSIVE",
                False,
                False,
                "batch large updates by key range, each in its own transaction",
            ),
            (_unquote(m[1]),),
        )
    return Classified(s, Rule("other", "unknown", False, False), ())


def _alter(s: str, table: str, action: str) -> Classified:
    a = action.upper()
    t = (table,)
    if (
        a.startswith("ADD CONSTRAINT")
        or a.startswith("ADD FOREIGN KEY")
        or a.startswith("ADD CHECK")
        or a.startswith("ADD UNIQUE")
        or a.startswith("ADD PRIMARY KEY")
    ):
        refs = tuple(_unquote(r) for r in re.findall(rf"REFERENCES ({NAME})", action, re.I))
        not_valid = "NOT VALID" in a
        if "FOREIGN KEY" in a:
            return Classified(
                s,
                Rule(
                    "foreign key" + (" NOT VALID" if not_valid else ""),
                    "SHARE ROW EXCLUSIVE",
                    False,
                    not not_valid,
                    "ADD it NOT VALID, then VALIDATE CONSTRAINT in a later revision",
                ),
                t,
                refs,
            )
        if "CHECK" in a:
            return Classified(
                s,
                Rule(
                    "check" + (" NOT VALID" if not_valid else ""),
                    "ACCESS EXCLUSIVE",
                    False,
                    not not_valid,
                    "ADD it NOT VALID, then VALIDATE CONSTRAINT in a later revision",
                ),
                t,
            )
        if "USING INDEX" in a:
            return Classified(
                s, Rule("constraint using index", "ACCESS EXCLUSIVE", False, False), t
            )
        return Classified(
            s,
            Rule(
                "unique or primary key",
                "ACCESS EXCLUSIVE",
                False,
                True,
                "CREATE UNIQUE INDEX CONCURRENTLY, then ADD CONSTRAINT ... USING INDEX",
            ),
            t,
        )
    if a.startswith("VALIDATE CONSTRAINT"):
        return Classified(s, Rule("validate constraint", "SHARE UPDATE EXCLUSIVE", False, False), t)
    if a.startswith("ADD COLUMN") or a.startswith("ADD "):
        if "NOT NULL" in a and "DEFAULT" not in a:
            return Classified(
                s,
                Rule(
                    "NOT NULL column without default",
                    "ACCESS EXCLUSIVE",
                    False,
                    True,
                    "add it nullable (or with a constant DEFAULT), backfill in batches, "
                    "then SET NOT NULL after a validated CHECK (col IS NOT NULL)",
                ),
                t,
            )
        if "DEFAULT" in a and VOLATILE.search(action):
            return Classified(
                s,
                Rule(
                    "column with volatile default",
                    "ACCESS EXCLUSIVE",
                    True,
                    True,
                    "add it without a default, set the default, then backfill in batches",
                ),
                t,
            )
        return Classified(s, Rule("add column", "ACCESS EXCLUSIVE", False, False), t)
    if re.match(r"ALTER (?:COLUMN )?\S+ (?:SET DATA )?TYPE", a):
        return Classified(
            s,
            Rule(
                "column type change",
                "ACCESS EXCLUSIVE",
                True,
                True,
                "add a column of the new type, backfill, switch the app, then drop the old",
            ),
            t,
        )
    if re.match(r"ALTER (?:COLUMN )?\S+ SET NOT NULL", a):
        return Classified(
            s,
            Rule(
                "set not null",
                "ACCESS EXCLUSIVE",
                False,
                True,
                "add CHECK (col IS NOT NULL) NOT VALID, VALIDATE it, then SET NOT NULL",
            ),
            t,
        )
    if a.startswith("DROP COLUMN") or re.match(r"DROP \S+$", a):
        return Classified(
            s,
            Rule(
                "drop column",
                "ACCESS EXCLUSIVE",
                False,
                True,
                "deploy an app version that no longer reads the column first, then drop it",
            ),
            t,
        )
    if a.startswith("RENAME"):
        return Classified(
            s,
            Rule(
                "rename",
                "ACCESS EXCLUSIVE",
                False,
                True,
                "add the new name beside the old, write both, switch the app, drop the old",
            ),
            t,
        )
    return Classified(s, Rule("alter table", "ACCESS EXCLUSIVE", False, False), t)


@dataclass
class TableFacts:
    exists: bool
    rows_estimate: int = 0
    has_rows: bool = False
    bytes: int = 0


def table_facts(conn: psycopg.Connection, table: str) -> TableFacts:
    size = space.table_size(conn, table)
    if size is None:
        return TableFacts(False)
    has_rows = conn.execute(
        sql.SQL("SELECT EXISTS (SELECT 1 FROM {})").format(sql.Identifier(table))
    ).fetchone()[0]
    return TableFacts(True, size.rows_estimate, has_rows, size.total_bytes)


@dataclass
class LintResult:
    revision: str
    statements: list[dict] = field(default_factory=list)
    squawk: list[dict] = field(default_factory=list)
    findings: list[Finding] = field(default_factory=list)


def lint_revision(
    conn: psycopg.Connection,
    revision: str,
    script: str,
    *,
    allow_unsafe: bool = False,
    created: set[str] | None = None,
) -> LintResult:
    """Lint one revision's SQL against the live tables (`created`: tables made earlier in the
    plan)."""
    created = created if created is not None else set()
    result = LintResult(revision)
    for stmt in split(script):
        c = classify(stmt)
        if c is None:
            continue
        facts = {t: TableFacts(False) if t in created else table_facts(conn, t) for t in c.tables}
        if c.rule.name == "create table":
            created.update(c.tables)
        populated = any(f.has_rows for f in facts.values())
        result.statements.append(
            {
                "revision": revision,
                "statement": c.statement[:200],
                "rule": c.rule.name,
                "lock": c.rule.lock,
                "rewrites": c.rule.rewrites,
                "tables": ", ".join(c.tables),
                "rows_estimate": sum(f.rows_estimate for f in facts.values()),
                "bytes": sum(f.bytes for f in facts.values()),
                "unsafe": c.rule.unsafe and populated,
            }
        )
        if c.rule.unsafe and populated:
            status = Status.WARN if allow_unsafe else Status.CRIT
            result.findings.append(
                Finding(
                    f"lint {revision}",
                    status,
                    f"{c.rule.name} on {', '.join(c.tables)}"
                    f" ({sum(f.rows_estimate for f in facts.values()):,} rows est.; takes"
                    f" {c.rule.lock}{', rewrites' if c.rule.rewrites else ''}): {c.rule.recipe}"
                    + (" (allowed by allow_unsafe)" if allow_unsafe else ""),
                    examples=(c.statement[:300],),
                )
            )
    result.squawk = squawk(script)
    return result


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

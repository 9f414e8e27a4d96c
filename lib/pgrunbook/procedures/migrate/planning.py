"""Where the target stands and what a migration would apply: status, the plan, its lint."""

from __future__ import annotations

import io
from dataclasses import dataclass, field, replace
from typing import Any

import psycopg
from alembic import command

from ...base import migrations
from ...base.findings import Finding, Status
from ...base.migrations import Revision
from ...checks import lint


@dataclass
class Plan:
    current: tuple[str, ...]
    to_revision: str | None
    pending: list[Revision] = field(default_factory=list)
    scripts: dict[str, str] = field(default_factory=dict)
    problem: Finding | None = None
    # SQL-file migrations pgrunbook runs in one transaction of its own (alembic's SQL has its own)
    in_transaction: dict[str, bool] = field(default_factory=dict)
    # a SQL-file history's files, each read and parsed once: what is linted is what is applied
    files: dict[str, Any] = field(default_factory=dict)
    history: Any = None

    def parsed(self, revision: str) -> list[lint.Statement] | None:
        """A SQL-file revision's statements as they will run (None: alembic's, read from its
        offline SQL by the lint)."""
        m = self.files.get(revision)
        if m is None:
            return None
        whole = self.in_transaction.get(revision, False)
        return [replace(s, in_transaction=s.in_transaction or whole) for s in m.statements]

    def statements(self, revision: str) -> list[lint.Statement]:
        """The revision's statements as the parser reads them (LintParseError naming it)."""
        try:
            return lint.parse(
                self.scripts[revision], in_transaction=self.in_transaction.get(revision, False)
            )
        except lint.LintParseError as e:
            raise lint.LintParseError(f"{revision}: {e}") from None

    def table(self):
        import pandas as pd  # here: spares pandas (~270 ms) at start-up

        return pd.DataFrame(
            [
                (
                    r.revision,
                    r.message.splitlines()[0] if r.message else "",
                    self.scripts.get(r.revision, ""),
                )
                for r in self.pending
            ],
            columns=["revision", "message", "sql"],
        )


def status_findings(st: migrations.MigrationStatus) -> list[Finding]:
    found = []
    if st.failed:
        found.append(
            Finding(
                "failed",
                Status.CRIT,
                f"{', '.join(st.failed)} started and never finished: it may be half applied;"
                " fix the database by hand, then resolve it (mode resolve, resolve_as"
                " applied or rolled-back)",
                examples=st.failed,
            )
        )
    if st.modified:
        found.append(
            Finding(
                "modified",
                Status.WARN,
                f"{', '.join(st.modified)} changed after it was applied: the file no longer"
                " matches its recorded checksum",
                examples=st.modified,
            )
        )
    if st.history is not None:
        folder = st.history.folder
        found.append(
            Finding(
                "heads",
                Status.OK if st.heads else Status.CRIT,
                f"{st.kind} history in {folder}: last migration {st.heads[0]}"
                if st.heads
                else f"no migration in {folder}",
            )
        )
    elif len(st.heads) > 1:
        found.append(
            Finding(
                "heads",
                Status.CRIT,
                f"{len(st.heads)} heads ({', '.join(st.heads)}): merge them "
                "with `alembic merge heads` before applying",
            )
        )
    else:
        found.append(Finding("heads", Status.OK, f"one head: {st.heads[0]}"))
    current = ", ".join(st.current) or "none (not migrated)"
    named = [
        f"{r.revision} ({r.message.splitlines()[0]})" if r.message else r.revision
        for r in st.pending
    ]
    pending = "; ".join(named if len(named) <= 6 else [*named[:3], "...", *named[-2:]])
    if st.unknown:
        where = st.history.folder if st.history else "migrations/"
        found.append(
            Finding(
                "revision",
                Status.CRIT,
                f"at {current}; {', '.join(st.unknown)} recorded but unknown to {where}",
            )
        )
    else:
        found.append(
            Finding(
                "revision",
                Status.OK,
                f"at {current}; {len(st.pending)} pending" + (f": {pending}" if pending else ""),
                value=current,
                examples=tuple(r.revision for r in st.pending),
            )
        )
    return found


def plan(st: migrations.MigrationStatus, to_revision: str = "head") -> Plan:
    """Pending revisions up to `to_revision`, with the SQL each will run."""
    if st.history is not None:
        return _plan_files(st, to_revision)
    script = migrations.script_directory()
    try:
        target_rev = script.get_revision(to_revision).revision
    except Exception as e:  # alembic raises several kinds for bad or ambiguous names
        return Plan(
            st.current, None, problem=Finding("plan", Status.CRIT, f"revision {to_revision!r}: {e}")
        )
    lower = st.current or "base"
    revs = list(reversed(list(script.iterate_revisions(target_rev, lower))))
    if st.current and target_rev not in st.current and not revs:
        return Plan(
            st.current,
            target_rev,
            problem=Finding(
                "plan",
                Status.CRIT,
                f"{target_rev} is behind the current {', '.join(st.current)}: this runbook "
                "does not downgrade (rehearse mode tests downgrades on a copy)",
            ),
        )
    pending = [Revision(r.revision, (r.doc or "").strip()) for r in revs]
    scripts, previous = {}, (st.current[0] if st.current else "base")
    for r in pending:
        scripts[r.revision] = offline_sql(previous, r.revision)
        previous = r.revision
    return Plan(st.current, target_rev, pending, scripts)


def _plan_files(st: migrations.MigrationStatus, to_revision: str) -> Plan:
    """A plan over a folder of SQL files: the pending files up to `to_revision`, each as it will
    run (in its transaction, or statement by statement)."""
    h = st.history
    names = [m.name for m in h.migrations()]
    to = names[-1] if to_revision in ("head", "heads") and names else to_revision
    if to not in names:
        return Plan(
            st.current, None, problem=Finding("plan", Status.CRIT, f"no migration named {to!r}")
        )
    if st.failed:
        return Plan(
            st.current,
            to,
            problem=Finding(
                "plan",
                Status.CRIT,
                f"{', '.join(st.failed)} failed and may be half applied: resolve it first",
            ),
        )
    waiting = [r.revision for r in st.pending]
    if to not in waiting:
        return Plan(st.current, to, [])
    pending = st.pending[: waiting.index(to) + 1]
    files = [h.get(r.revision) for r in pending]
    try:
        whole = {m.name: m.transactional for m in files}
    except lint.LintParseError as e:  # names the file and the line
        return Plan(st.current, to, pending, problem=Finding("plan", Status.CRIT, str(e)))
    return Plan(st.current, to, pending, {m.name: h.script(m) for m in files}, in_transaction=whole,
                files={m.name: m for m in files}, history=h)  # fmt: skip


def offline_sql(start: str, end: str) -> str:
    """The SQL alembic would run from `start` to `end`."""
    cfg = migrations.alembic_config()
    cfg.output_buffer = io.StringIO()
    command.upgrade(cfg, f"{start}:{end}" if start != "base" else end, sql=True)
    return cfg.output_buffer.getvalue()


def plan_finding(p: Plan) -> Finding:
    if p.problem:
        return p.problem
    return Finding(
        "plan",
        Status.OK,
        (
            f"{len(p.pending)} revisions to {p.to_revision}"
            if p.pending
            else f"nothing to apply: at {p.to_revision}"
        ),
        value=p.to_revision,
    )


@dataclass
class Lint:
    findings: list[Finding]
    statements: list[dict]
    squawk: list[dict]

    def statements_table(self):
        import pandas as pd  # here: spares pandas (~270 ms) at start-up

        return pd.DataFrame(self.statements)

    def squawk_table(self):
        import pandas as pd  # here: spares pandas (~270 ms) at start-up

        return pd.DataFrame(
            self.squawk,
            columns=["revision", "rule", "level", "verdict", "message", "help", "line"],
        )


def lint_plan(conn: psycopg.Connection, p: Plan, *, allow_unsafe: bool = False) -> Lint:
    found, statements, squawked, created = [], [], [], set()
    found += extensions(conn, p)
    for rev, script in p.scripts.items():
        r = lint.lint_revision(
            conn, rev, script, allow_unsafe=allow_unsafe, created=created,
            in_transaction=p.in_transaction.get(rev, False), statements=p.parsed(rev),
        )  # fmt: skip
        found += r.findings
        statements += r.statements
        squawked += [{"revision": rev, **d} for d in r.squawk]
    if not found:
        found.append(
            Finding(
                "lint",
                Status.OK,
                f"{len(statements)} statements in {len(p.scripts)} revisions: "
                f"no unsafe operation on a table with rows ({len(squawked)} Squawk notes)",
            )
        )
    if lint.squawk_path() is None:
        found.append(
            Finding("squawk", Status.UNKNOWN, "squawk is not installed (pip install squawk-cli)")
        )
    return Lint(found, statements, squawked)


EXTENSION_HERE = """
    SELECT a.name IS NOT NULL AS available,
           e.extname IS NOT NULL AS installed,
           coalesce(v.trusted, false) AS trusted,
           (SELECT rolsuper FROM pg_roles WHERE rolname = current_user) AS superuser
      FROM (SELECT %(name)s::name AS name) wanted
      LEFT JOIN pg_available_extensions a ON a.name = wanted.name
      LEFT JOIN pg_extension e ON e.extname = wanted.name
      LEFT JOIN pg_available_extension_versions v
             ON v.name = wanted.name AND v.version = a.default_version
"""


def extensions(conn: psycopg.Connection, p: Plan) -> list[Finding]:
    """CRIT, before anything is applied, for each extension a pending revision creates that this
    server does not have, or that this role may not create (not trusted, not a superuser)."""
    found = []
    for rev in p.scripts:
        for stmt in p.statements(rev):
            if stmt.kind != "CreateExtensionStmt":
                continue
            name = stmt.node.extname
            available, installed, trusted, superuser = conn.execute(
                EXTENSION_HERE, {"name": name}
            ).fetchone()
            if installed or (available and (trusted or superuser)):
                continue
            why = (
                "which this server does not have (pg_available_extensions): install its package"
                " on the server, or ask the provider to allow it"
                if not available
                else f"which only a superuser may create and {conn.info.user!r} is not one: have"
                " one run CREATE EXTENSION first"
            )
            found.append(
                Finding(
                    f"extension {name}",
                    Status.CRIT,
                    f"{rev} (line {stmt.line}) creates extension {name!r}, {why}; nothing is"
                    " applied until it can be",
                    value=name,
                )
            )
    return found


def root_cause(error: BaseException) -> BaseException:
    return getattr(error, "orig", None) or error

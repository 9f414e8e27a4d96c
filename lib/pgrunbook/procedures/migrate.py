"""The migration runbook's steps: status and drift, plan, lint, pre-flight, staging
first, backup, apply under lock_timeout with retries, verify, rehearse.

Each revision is applied in its own transaction, so a revision that fails
(a lock timeout, a killed connection, bad data) leaves the database exactly
at the revision before it.
"""

from __future__ import annotations

import io
import re
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
from alembic import command
from psycopg import sql

from ..base import db, limits, migrations, pgtools
from ..base.errors import ConfirmationRequired
from ..base.findings import Check, Finding, Status
from ..base.limits import DEFAULTS, Limits
from ..base.migrations import Revision
from ..base.targets import Target
from ..checks import health, lint
from ..facts import activity, backups, catalog, history, indexes, sequences
from . import admin, debris, dumps, sandbox, seed


@dataclass
class Plan:
    current: tuple[str, ...]
    to_revision: str | None
    pending: list[Revision] = field(default_factory=list)
    scripts: dict[str, str] = field(default_factory=dict)
    problem: Finding | None = None

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


# -- 1. status and drift ------------------------------------------------------


def status_findings(st: migrations.MigrationStatus) -> list[Finding]:
    found = []
    if len(st.heads) > 1:
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
    pending = "; ".join(
        f"{r.revision} {r.message.splitlines()[0] if r.message else ''}" for r in st.pending
    )
    if st.unknown:
        found.append(Finding("revision", Status.CRIT, f"at {current}, unknown to migrations/"))
    else:
        found.append(
            Finding(
                "revision",
                Status.OK,
                f"at {current}; {len(st.pending)} pending" + (f": {pending}" if pending else ""),
                value=current,
            )
        )
    return found


@dataclass
class Drift:
    finding: Finding
    differences: list[str]

    def table(self):
        import pandas as pd  # here: spares pandas (~270 ms) at start-up

        return pd.DataFrame({"difference": self.differences})


def scratch_target(target: Target, purpose: str) -> Target:
    name = f"pgrb_{purpose}_{uuid.uuid4().hex[:8]}"
    return Target(
        f"{target.name}-{purpose}",
        db.with_database(target.url, name),
        sandbox=target.sandbox,
        source=f"scratch on {target.name}",
    )


def drift(target: Target, current: tuple[str, ...]) -> Drift:
    """The live schema against a scratch database built by the migrations up to `current`."""
    scratch = scratch_target(target, "drift")
    with debris.working_on(target, scratch.database, "migrate drift"):
        return _drift(target, scratch, current)


def _drift(target: Target, scratch: Target, current: tuple[str, ...]) -> Drift:
    with admin.connect(target, application="pgrunbook/migrate") as conn:
        admin.create(conn, scratch.database)
    try:
        if current:
            migrations.upgrade(scratch, current[0])
        with db.connect(scratch) as c:
            expected = catalog.schema_facts(c)
        with db.connect(target) as c:
            live = catalog.schema_facts(c)
    finally:
        admin.drop_database(target, scratch.database)
    diff = catalog.schema_difference(expected, live)
    if diff:
        return Drift(
            Finding(
                "drift",
                Status.WARN,
                f"{len(diff)} objects differ from what the migrations build: "
                + ", ".join(diff[:3]),
                examples=tuple(diff[:20]),
            ),
            diff,
        )
    return Drift(
        Finding("drift", Status.OK, "the live schema is exactly what the migrations build"), diff
    )


# -- 2. plan ------------------------------------------------------------------


def plan(st: migrations.MigrationStatus, to_revision: str = "head") -> Plan:
    """Pending revisions up to `to_revision`, with the SQL each will run."""
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


# -- 3. lint ------------------------------------------------------------------


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
            self.squawk, columns=["revision", "rule", "level", "message", "help", "line"]
        )


def lint_plan(conn: psycopg.Connection, p: Plan, *, allow_unsafe: bool = False) -> Lint:
    found, statements, squawked, created = [], [], [], set()
    for rev, script in p.scripts.items():
        r = lint.lint_revision(conn, rev, script, allow_unsafe=allow_unsafe, created=created)
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


# -- 4. pre-flight ------------------------------------------------------------


def _touched(p: Plan) -> set[str]:
    tables = set()
    for script in p.scripts.values():
        for stmt in lint.split(script):
            if c := lint.classify(stmt):
                tables.update(c.tables + c.references)
    return tables


def preflight(
    conn: psycopg.Connection,
    p: Plan,
    *,
    target: Target | None = None,
    long_after_s: float = DEFAULTS.preflight_transaction_s,
    limits: Limits | None = None,
) -> list[Finding]:
    """Sessions in the way, data a new constraint would reject, and the disk (health's own
    reading)."""
    found = []
    touched = sorted(t for t in _touched(p) if lint.table_facts(conn, t).exists)
    blockers = activity.lock_holders(conn, touched)
    longtx = [x for x in activity.sessions(conn) if x.here and (x.xact_s or 0) > long_after_s]
    ex = tuple(
        f"pid {b.pid} ({b.role}, {b.application or '-'}, {b.state}) holds {b.mode} on {b.table} for"
        f" {b.held_for}"
        for b in blockers
    )
    ex += tuple(
        f"pid {x.pid} ({x.role}, {x.application}, {x.state}) in a transaction for {x.xact_s:.0f} s"
        for x in longtx
    )
    found.append(
        Finding(
            "sessions",
            Status.WARN if ex else Status.OK,
            (
                f"{len(ex)} sessions hold locks on the tables touched or run long transactions"
                if ex
                else f"nothing holds locks on {', '.join(touched) or 'the tables touched'}"
            ),
            examples=ex,
        )
    )
    found += constraint_checks(conn, p)
    if target is not None:
        lim = limits or Limits()
        found.append(
            health.storage(
                conn, target, warn_pct=lim.storage_warn_pct, crit_pct=lim.storage_crit_pct
            )
        )
    return found


_FK = re.compile(
    r"ALTER TABLE (?:ONLY )?(\S+) ADD CONSTRAINT (\S+) FOREIGN KEY\s*\(([^)]+)\) REFERENCES (\S+)"
    r" \(([^)]+)\)",
    re.I,
)
_CHECK = re.compile(
    r"ALTER TABLE (?:ONLY )?(\S+) ADD CONSTRAINT (\S+) CHECK \((.*)\)(?: NOT VALID)?$", re.I | re.S
)
_NOTNULL = re.compile(r"ALTER TABLE (?:ONLY )?(\S+) ALTER COLUMN (\S+) SET NOT NULL", re.I)
_ADDREQ = re.compile(r"ALTER TABLE (?:ONLY )?(\S+) ADD (?:COLUMN )?(\S+) .*NOT NULL", re.I)


def _ident(name: str) -> sql.Identifier:
    return sql.Identifier(*[p.strip('"') for p in name.split(".")])


def _cols(text: str) -> list[sql.Identifier]:
    return [sql.Identifier(c.strip().strip('"')) for c in text.split(",")]


def constraint_checks(conn: psycopg.Connection, p: Plan, *, sample: int = 5) -> list[Finding]:
    """Rows that the plan's new constraints would reject, counted and sampled, before applying."""
    found = []
    for rev, script in p.scripts.items():
        for stmt in (" ".join(s.split()) for s in lint.split(script)):
            query, what = _violations_query(conn, stmt)
            if query is None:
                continue
            rows = conn.execute(query).fetchall()
            if rows:
                found.append(
                    Finding(
                        f"data {rev}",
                        Status.CRIT,
                        f"{what}: {len(rows)}{'+' if len(rows) > sample * 20 else ''}"
                        " rows would be rejected",
                        value=len(rows),
                        examples=tuple(str(r) for r in rows[:sample]),
                    )
                )
    if not found:
        found.append(
            Finding("data", Status.OK, "no existing row violates a constraint the plan adds")
        )
    return found


def _violations_query(conn: psycopg.Connection, stmt: str):
    if m := _FK.match(stmt):
        t, name, cols, ref, rcols = m.groups()
        if not lint.table_facts(conn, t.strip('"')).exists:
            return None, ""
        c, r = _cols(cols), _cols(rcols)
        join = sql.SQL(" AND ").join(
            sql.SQL("r.{} = t.{}").format(rc, tc) for rc, tc in zip(r, c, strict=True)
        )
        notnull = sql.SQL(" AND ").join(sql.SQL("t.{} IS NOT NULL").format(tc) for tc in c)
        q = sql.SQL(
            "SELECT {} FROM {} t WHERE {} AND NOT EXISTS (SELECT 1 FROM {} r WHERE {}) LIMIT 101"
        ).format(
            sql.SQL(", ").join(sql.SQL("t.{}").format(tc) for tc in c),
            _ident(t),
            notnull,
            _ident(ref),
            join,
        )
        return q, f"foreign key {name}: orphans in {t}({cols})"
    if m := _CHECK.match(stmt):
        t, name, expr = m.groups()
        if not lint.table_facts(conn, t.strip('"')).exists:
            return None, ""
        # the expression comes from the project's own migration files, not from user input
        return (
            sql.SQL("SELECT ctid FROM {} WHERE NOT ({}) LIMIT 101").format(
                _ident(t), sql.SQL(expr)
            ),
            f"check {name} on {t}",
        )
    if m := _NOTNULL.match(stmt):
        t, col = m.groups()
        return (
            sql.SQL("SELECT ctid FROM {} WHERE {} IS NULL LIMIT 101").format(
                _ident(t), _ident(col)
            ),
            f"NOT NULL on {t}.{col}: NULLs",
        )
    if (m := _ADDREQ.match(stmt)) and "DEFAULT" not in stmt.upper():
        t, col = m.groups()
        if not lint.table_facts(conn, t.strip('"')).exists:
            return None, ""
        return (
            sql.SQL("SELECT ctid FROM {} LIMIT 101").format(_ident(t)),
            f"new NOT NULL column {t}.{col} without default: existing rows",
        )
    return None, ""


# -- 5. staging first ---------------------------------------------------------


def _verified(run: dict) -> str | None:
    """The revision an archived migrate run verified, or None."""
    done = [
        f for f in run.get("findings", []) if f["check"] == Check.VERIFY and f["status"] == "OK"
    ]
    return done[0].get("value") if done else None


def staging_first(target: Target, p: Plan, *, mode: str, override: str = "") -> Finding:
    """A protected target needs a successful staging apply of the same revision within the target's
    staging_window_days (14)."""
    if mode != "apply" or not target.protected:
        return Finding(
            "staging first",
            Status.OK,
            (
                "not required" + ("" if target.protected else " (target not protected)")
                if mode == "apply"
                else f"not required in {mode} mode"
            ),
        )
    window = limits.for_target(target).staging_window_days
    since = (datetime.now(UTC) - timedelta(days=window)).date()
    run = history.previous(
        "migrate",
        "staging",
        since=since,
        where=lambda r: (
            r["outcome"] in ("OK", "WARN")
            and r.get("parameters", {}).get("mode") == "apply"
            and _verified(r) == p.to_revision
        ),
    )
    if run is not None:
        return Finding(
            "staging first", Status.OK, f"staging applied {p.to_revision} in run {run['id']}"
        )
    if override:
        return Finding(
            "staging first",
            Status.WARN,
            f"no staging apply of {p.to_revision} within {window:g} days; "
            f"overridden by the operator: {override}",
        )
    return Finding(
        "staging first",
        Status.CRIT,
        f"no successful staging apply of {p.to_revision} in the last "
        f"{window:g} days: run `pgrunbook run migrate --target staging -p mode apply` first",
    )


# -- 6. backup ----------------------------------------------------------------


def backup_first(
    target: Target, p: Plan, *, mode: str, enabled: bool, blockers: list[Finding] = ()
) -> Finding:
    if any(f.status is Status.CRIT for f in blockers) and mode == "apply":
        return Finding(
            "backup", Status.OK, "skipped: CRIT findings above mean nothing will be applied"
        )
    if mode != "apply" or not p.pending or not enabled:
        why = (
            "nothing pending"
            if not p.pending
            else f"{mode} mode"
            if mode != "apply"
            else "backup_first=False"
        )
        return Finding(
            "backup",
            Status.OK if mode != "apply" or not p.pending else Status.WARN,
            f"skipped ({why})",
        )
    b = dumps.create(target, label=f"pre-migration-{p.to_revision}")
    manifest_sha = (b.path / f"{backups.MANIFEST}.sha256").read_text().strip()
    return Finding(
        "backup",
        Status.OK,
        f"{b.id}: {b.size / 2**20:.1f} MiB, manifest sha256 {manifest_sha[:16]}...",
        value=str(b.path),
    )


# -- 7. apply -----------------------------------------------------------------


@dataclass
class Applied:
    findings: list[Finding]
    times: list[tuple[str, float, int]] = field(default_factory=list)  # revision, seconds, attempts

    def table(self):
        import pandas as pd  # here: spares pandas (~270 ms) at start-up

        return pd.DataFrame(self.times, columns=["revision", "seconds", "attempts"])


# Transient: the revision rolled back whole, and the same statement may pass a moment later.
RETRYABLE = (psycopg.errors.LockNotAvailable, psycopg.errors.DeadlockDetected)


def _kind(error: BaseException) -> str:
    return "deadlock" if isinstance(error, psycopg.errors.DeadlockDetected) else "lock timeout"


def _root(error: BaseException) -> BaseException:
    return getattr(error, "orig", None) or error


def apply(
    target: Target,
    p: Plan,
    *,
    mode: str,
    blockers: list[Finding],
    confirm: str = "",
    lock_timeout: str = "3s",
    statement_timeout: str = "30min",
    max_retries: int = 5,
    backoff_s: float = 0.5,
) -> Applied:
    """Apply the pending revisions one by one, retrying lock timeouts and deadlocks with backoff."""
    if mode != "apply":
        return Applied([Finding(Check.APPLY, Status.OK, f"{mode} mode: nothing applied")])
    crit = [f for f in blockers if f.status is Status.CRIT]
    if target.protected and confirm != target.name:
        return Applied(
            [
                Finding(
                    Check.APPLY,
                    Status.CRIT,
                    f"not applied: {target.name!r} is protected, "
                    f"pass confirm={target.name!r} to apply",
                )
            ]
        )
    if crit:
        return Applied(
            [Finding(Check.APPLY, Status.CRIT, "not applied: " + "; ".join(f.check for f in crit))]
        )
    out = Applied([])
    for rev in p.pending:
        t0, attempt = time.perf_counter(), 0
        while True:
            attempt += 1
            try:
                migrations.upgrade(
                    target,
                    rev.revision,
                    lock_timeout=lock_timeout,
                    statement_timeout=statement_timeout,
                )
                break
            except Exception as e:  # alembic wraps the driver's error; judged by its root
                root = _root(e)
                if isinstance(root, RETRYABLE) and attempt <= max_retries:
                    time.sleep(min(backoff_s * 2 ** (attempt - 1), 10))
                    continue
                at = current_revision(target)
                why = (
                    f"{_kind(root)} after {attempt} attempts"
                    if isinstance(root, RETRYABLE)
                    else str(root).strip().splitlines()[0]
                )
                left = invalid_indexes(target)  # what a failed CONCURRENTLY build leaves behind
                note = (
                    f"; invalid indexes left behind: {', '.join(left)} (drop them)" if left else ""
                )
                out.findings.append(
                    Finding(
                        Check.APPLY,
                        Status.CRIT,
                        f"stopped at {rev.revision}: {why}; the database stays at {at}{note}",
                        value=at,
                        examples=tuple(left),
                    )
                )
                return out
        out.times.append((rev.revision, round(time.perf_counter() - t0, 3), attempt))
        if invalid := invalid_indexes(target):
            out.findings.append(
                Finding(
                    Check.APPLY,
                    Status.CRIT,
                    f"{rev.revision} left invalid indexes: "
                    + ", ".join(invalid)
                    + " (drop and create them again)",
                    examples=tuple(invalid),
                )
            )
            return out
    done = ", ".join(
        f"{r} in {s:.2f} s" + (f" ({a} attempts)" if a > 1 else "") for r, s, a in out.times
    )
    out.findings.append(
        Finding(
            Check.APPLY,
            Status.OK,
            f"applied {len(out.times)} revisions" + (f": {done}" if done else ""),
        )
    )
    return out


def current_revision(target: Target) -> str:
    with db.connect(target) as conn:
        return ",".join(migrations.current(conn) or ()) or "base"


def invalid_indexes(target: Target) -> list[str]:
    with db.connect(target) as conn:
        return [i.index for i in indexes.invalid_indexes(conn)]


def plot_times(applied: Applied):
    from matplotlib.figure import Figure  # here: spares matplotlib (~450 ms) at start-up

    fig = Figure(figsize=(7, 0.6 + 0.4 * max(len(applied.times), 1)))
    ax = fig.subplots()
    ax.barh([r for r, _, _ in applied.times], [s for _, s, _ in applied.times], color="#4c72b0")
    ax.invert_yaxis()
    ax.set_xlabel("seconds")
    ax.set_title("Time per revision")
    fig.tight_layout()
    return fig


# -- 8. verify ----------------------------------------------------------------


def verify(target: Target, p: Plan, *, mode: str) -> list[Finding]:
    """After applying: at the target revision, no drift, no invalid index or unvalidated constraint,
    tables answer."""
    if mode != "apply":
        return [Finding(Check.VERIFY, Status.OK, f"skipped in {mode} mode")]
    at = current_revision(target)
    found = [
        Finding(
            Check.VERIFY,
            Status.OK if at == p.to_revision else Status.CRIT,
            f"at {at}" + ("" if at == p.to_revision else f", not {p.to_revision}"),
            value=at,
        )
    ]
    found.append(drift(target, tuple(at.split(","))).finding)
    with db.connect(target) as conn:
        invalid = [i.index for i in indexes.invalid_indexes(conn)]
        unvalidated = [
            r[0]
            for r in conn.execute(
                "SELECT conrelid::regclass || '.' || conname FROM pg_constraint WHERE NOT"
                " convalidated"
            )
        ]
        behind = [s.sequence for s in sequences.sequence_states(conn) if s.behind]
        for schema, table in catalog.tables(conn):
            conn.execute(sql.SQL("SELECT 1 FROM {} LIMIT 1").format(sql.Identifier(schema, table)))
    problems = [f"invalid index {i}" for i in invalid] + [
        f"sequence {s} behind its column" for s in behind
    ]
    found.append(
        Finding(
            "quick checks",
            Status.CRIT if problems else Status.WARN if unvalidated else Status.OK,
            "; ".join(problems)
            or (
                f"NOT VALID constraints left: {', '.join(unvalidated)}"
                if unvalidated
                else (
                    "no invalid index, unvalidated constraint or lagging sequence; "
                    "every table answers"
                )
            ),
        )
    )
    return found


# -- 9. rehearse --------------------------------------------------------------


def rehearse(target: Target, p: Plan, *, mode: str, jobs: int = 2) -> list[Finding]:
    """On a copy of the target: upgrade, downgrade, upgrade; each schema compared with the one
    before."""
    if mode != "rehearse":
        return [Finding("rehearse", Status.OK, f"skipped in {mode} mode")]
    if not p.pending:
        return [Finding("rehearse", Status.OK, "nothing pending to rehearse")]
    copy = scratch_target(target, "rehearse")
    with debris.working_on(target, copy.database, "migrate rehearse"):
        return _rehearse(target, p, copy, jobs=jobs)


def _rehearse(target: Target, p: Plan, copy: Target, *, jobs: int) -> list[Finding]:
    start = p.current[0] if p.current else "base"
    steps = [
        ("upgrade", lambda: migrations.upgrade(copy, p.to_revision)),
        ("downgrade", lambda: migrations.downgrade(copy, start)),
        ("upgrade again", lambda: migrations.upgrade(copy, p.to_revision)),
    ]
    found: list[Finding] = []
    try:
        copy_database(target, copy.database, jobs=jobs)
        facts = [_facts(copy)]
        for name, step in steps:
            try:
                step()
            except Exception as e:
                found.append(
                    Finding(
                        f"rehearse {name}",
                        Status.CRIT,
                        f"{name} fails on a copy of "
                        f"{target.name!r}: {str(_root(e)).strip().splitlines()[0]}",
                    )
                )
                break
            facts.append(_facts(copy))
            if name == "downgrade":
                back = catalog.schema_difference(facts[0], facts[2])
                found.append(
                    Finding(
                        "rehearse downgrade",
                        Status.CRIT if back else Status.OK,
                        (
                            f"downgrade to {start} does not restore the schema:"
                            f" {', '.join(back[:3])}"
                            if back
                            else f"downgrade to {start} restores the schema exactly"
                        ),
                        examples=tuple(back[:20]),
                    )
                )
            if name == "upgrade again":
                again = catalog.schema_difference(facts[1], facts[3])
                found.append(
                    Finding(
                        "rehearse upgrade",
                        Status.CRIT if again else Status.OK,
                        (
                            f"upgrading again differs: {', '.join(again[:3])}"
                            if again
                            else (
                                f"upgrade, downgrade, upgrade to {p.to_revision}: same schema"
                                " each way"
                            )
                        ),
                    )
                )
    finally:
        admin.drop_database(target, copy.database)
    return found


def _facts(target: Target):
    with db.connect(target) as conn:
        return catalog.schema_facts(conn)


def copy_database(target: Target, name: str, *, jobs: int = 2) -> None:
    """Copy the target's database into a new one beside it (dump and restore, no lock on the
    target)."""

    with admin.connect(target, application="pgrunbook/migrate") as conn:
        major = conn.info.server_version // 10000
        admin.create(conn, name, template="template0")
    with tempfile.TemporaryDirectory(prefix="pgrb-copy-") as tmp:
        dump = Path(tmp) / "dump"
        pgtools.run(
            pgtools.choose("pg_dump", major), ["-Fd", "-j", str(jobs), "-f", str(dump)], target.url
        )
        pgtools.run(
            pgtools.choose("pg_restore", major),
            ["--exit-on-error", "-j", str(jobs), str(dump)],
            db.with_database(target.url, name),
        )


# -- resolve ------------------------------------------------------------------


def resolve(target: Target, *, mode: str, stamp: str, confirm: str = "") -> Finding:
    """Record `stamp` as the current revision without running anything (alembic stamp)."""
    if mode != "resolve":
        return Finding(Check.RESOLVE, Status.OK, f"skipped in {mode} mode")
    if target.protected and confirm != target.name:
        return Finding(
            Check.RESOLVE,
            Status.CRIT,
            f"not recorded: pass confirm={target.name!r} on a protected target",
        )
    if stamp != "base":
        try:
            migrations.script_directory().get_revision(stamp)
        except Exception as e:
            return Finding(Check.RESOLVE, Status.CRIT, f"not recorded: revision {stamp!r}: {e}")
    before = current_revision(target)
    migrations.stamp(target, stamp)
    return Finding(
        Check.RESOLVE,
        Status.OK,
        f"recorded {stamp} as the current revision (was {before}); no migration was run",
        value=stamp,
    )


def down_revision(revision: str) -> str:
    """The revision before `revision` ('base' for the first)."""
    down = migrations.script_directory().get_revision(revision).down_revision
    return down if isinstance(down, str) else "base" if not down else ",".join(down)


def reset(target: Target) -> list[Finding]:
    """Sandbox and development targets only: drop and recreate the database, migrate to head,
    seed the essential data. Like `prisma migrate reset`, it does not trust the recorded revision.
    """

    if target.protected:
        raise ConfirmationRequired(
            f"reset drops the database: refused on protected target {target.name!r}"
        )
    with admin.connect(target, application="pgrunbook/migrate") as conn:
        owner = admin.owner(conn, target.database) or conn.info.user
        admin.drop(conn, target.database)
        admin.create(conn, target.database, owner=owner)
    if target.sandbox:
        with db.connect(target, readonly=False, application="pgrunbook/reset") as conn:
            for ext in sandbox.EXTENSIONS:
                conn.execute(
                    sql.SQL("CREATE EXTENSION IF NOT EXISTS {}").format(sql.Identifier(ext))
                )
    migrations.upgrade(target, "heads")
    with db.connect(target, readonly=False, application="pgrunbook/reset") as conn:
        result = seed.seed(conn, target, mode="production")
    return [
        Finding(
            "reset",
            Status.OK,
            f"{target.name!r} dropped, recreated and migrated to "
            f"{current_revision(target)}; {result.total} essential rows seeded",
        )
    ]


def new_revision(target: Target, message: str, *, autogenerate: bool = True) -> str:
    """Write a new revision file, autogenerated against `target`'s schema; its path."""
    cfg = migrations.alembic_config()
    eng = migrations.engine(target, readonly=True)
    try:
        with eng.connect() as connection:
            cfg.attributes["connection"] = connection
            script = command.revision(cfg, message, autogenerate=autogenerate)
    finally:
        eng.dispose()
    return str(script.path)

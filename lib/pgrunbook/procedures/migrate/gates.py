"""The gates before a migration applies: sessions in the way, data a new constraint rejects,
staging first, a backup first."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import psycopg
from pglast import ast, enums
from psycopg import sql

from ...base import config, limits, targets
from ...base.errors import PgRunbookError
from ...base.findings import Check, Finding, Status
from ...base.limits import DEFAULTS, Limits
from ...base.targets import Target
from ...checks import health, lint
from ...facts import activity, backups, history
from .. import dumps
from .planning import Plan


def statements(p: Plan) -> dict[str, list[lint.Statement]]:
    """Each revision's statements as the parser reads them: the lint and these gates read the
    same ones."""
    return {rev: [s for s in p.statements(rev) if not s.bookkeeping] for rev in p.scripts}


def _touched(conn: psycopg.Connection, p: Plan) -> list[str]:
    """The existing tables the plan touches or references, by name."""
    server, names = lint.Server(conn), set()
    for stmts in statements(p).values():
        for stmt in stmts:
            for a in lint.judge(stmt, server, set()):
                names.update(a.tables + a.references)
    found = (server.relation(n) for n in names if n not in server.created)
    return sorted({r.name for r in found if r is not None})


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
    touched = _touched(conn, p)
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


def constraint_checks(conn: psycopg.Connection, p: Plan, *, sample: int = 5) -> list[Finding]:
    """Rows that the plan's new constraints would reject, counted and sampled, before applying."""
    found = []
    server = lint.Server(conn)
    for rev, stmts in statements(p).items():
        for stmt in stmts:
            for query, what in _violations(stmt, server):
                rows = conn.execute(query).fetchall()
                if rows:
                    found.append(
                        Finding(
                            f"data {rev}",
                            Status.CRIT,
                            f"{what}: {len(rows)}{'+' if len(rows) > 100 else ''}"
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


def _table(rv) -> sql.Identifier:
    return (
        sql.Identifier(rv.schemaname, rv.relname) if rv.schemaname else sql.Identifier(rv.relname)
    )


def _violations(stmt: lint.Statement, server: lint.Server):
    """For each constraint `stmt` adds to an existing table: a query for the rows it rejects (at
    most 101), and what it is."""
    n = stmt.node
    if not isinstance(n, ast.AlterTableStmt) or n.relation is None:
        return
    name = (
        n.relation.relname
        if not n.relation.schemaname
        else f"{n.relation.schemaname}.{n.relation.relname}"
    )
    if name in server.created or server.relation(name) is None:
        return
    t = _table(n.relation)
    for cmd in n.cmds:
        c = cmd.def_
        if cmd.subtype == enums.AlterTableType.AT_AddConstraint and isinstance(c, ast.Constraint):
            if c.contype == enums.ConstrType.CONSTR_FOREIGN:
                cols = [sql.Identifier(a.sval) for a in c.fk_attrs]
                refs = [sql.Identifier(a.sval) for a in c.pk_attrs or ()] or None
                if refs is None:  # REFERENCES t without columns: its primary key; not sampled
                    continue
                yield (
                    sql.SQL(
                        "SELECT {cols} FROM {t} AS t WHERE {notnull} AND NOT EXISTS"
                        " (SELECT 1 FROM {r} AS r WHERE {join}) LIMIT 101"
                    ).format(
                        cols=sql.SQL(", ").join(sql.SQL("t.{}").format(x) for x in cols),
                        t=t,
                        notnull=sql.SQL(" AND ").join(
                            sql.SQL("t.{} IS NOT NULL").format(x) for x in cols
                        ),
                        r=_table(c.pktable),
                        join=sql.SQL(" AND ").join(
                            sql.SQL("r.{} = t.{}").format(rc, tc)
                            for rc, tc in zip(refs, cols, strict=True)
                        ),
                    ),
                    f"foreign key {c.conname or ''} on {name}: orphans",
                )
            elif c.contype == enums.ConstrType.CONSTR_CHECK:
                # the expression is the migration's own, deparsed from PostgreSQL's parse tree
                yield (
                    sql.SQL("SELECT ctid FROM {} WHERE NOT ({}) LIMIT 101").format(
                        t, sql.SQL(lint.sql_of(c.raw_expr))
                    ),
                    f"check {c.conname or ''} on {name}",
                )
        elif cmd.subtype == enums.AlterTableType.AT_SetNotNull:
            yield (
                sql.SQL("SELECT ctid FROM {} WHERE {} IS NULL LIMIT 101").format(
                    t, sql.Identifier(cmd.name)
                ),
                f"NOT NULL on {name}.{cmd.name}: NULLs",
            )
        elif cmd.subtype == enums.AlterTableType.AT_AddColumn:
            kinds = {k.contype for k in c.constraints or ()}
            required = (
                enums.ConstrType.CONSTR_NOTNULL in kinds or enums.ConstrType.CONSTR_PRIMARY in kinds
            )
            if (
                required
                and not kinds
                & {
                    enums.ConstrType.CONSTR_DEFAULT,
                    enums.ConstrType.CONSTR_IDENTITY,
                    enums.ConstrType.CONSTR_GENERATED,
                }
                and not lint.is_serial(c)
            ):
                yield (
                    sql.SQL("SELECT ctid FROM {} LIMIT 101").format(t),
                    f"new NOT NULL column {name}.{c.colname} without default: existing rows",
                )


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
    staging = staging_of(target)
    if staging is None and not override:
        return Finding(
            "staging first",
            Status.CRIT,
            f"{target.name!r} is protected and this configuration names no staging target for it:"
            f' set staging = "NAME" in [targets.{target.name}] (the target that gets each'
            " migration first), or skip_staging_check with a reason",
        )
    run = staging and history.previous(
        "migrate",
        staging,
        since=since,
        where=lambda r: (
            r["outcome"] in ("OK", "WARN")
            and r.get("parameters", {}).get("mode") == "apply"
            and _verified(r) == p.to_revision
        ),
    )
    if run is not None:
        return Finding(
            "staging first", Status.OK, f"{staging} applied {p.to_revision} in run {run['id']}"
        )
    if override:
        return Finding(
            "staging first",
            Status.WARN,
            f"no apply of {p.to_revision} on {staging or 'a staging target'} within {window:g}"
            f" days; overridden by the operator: {override}",
        )
    return Finding(
        "staging first",
        Status.CRIT,
        f"no successful apply of {p.to_revision} on {staging} in the last {window:g} days:"
        f" run `pgrunbook run migrate --target {staging} -p mode apply` first",
    )


def staging_of(target: Target) -> str | None:
    """The target that gets `target`'s migrations first: its `staging` setting, else the target
    called staging where the configuration has one."""
    spec = config.settings().targets.get(target.name, {})
    if spec.get("staging"):
        return str(spec["staging"])
    try:  # the default staging stands in only where it is as real as the target
        return "staging" if targets.resolve("staging").sandbox == target.sandbox else None
    except PgRunbookError:
        return None


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

"""The gates before a migration applies: sessions in the way, data a new constraint rejects,
staging first, a backup first."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

import psycopg
from psycopg import sql

from ...base import limits
from ...base.findings import Check, Finding, Status
from ...base.limits import DEFAULTS, Limits
from ...base.targets import Target
from ...checks import health, lint
from ...facts import activity, backups, history
from .. import dumps
from .planning import Plan


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

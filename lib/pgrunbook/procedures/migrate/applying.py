"""Applying a plan, each revision in its own transaction under lock_timeout with retries, and
verifying where it ended."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import psycopg
from psycopg import sql

from ...base import db, migrations
from ...base.findings import Check, Finding, Status
from ...base.sqlhistory import MigrationFailed, MigrationRefused
from ...base.targets import Target
from ...facts import catalog, indexes, sequences
from .. import pitr
from .planning import Plan, root_cause
from .scratch import drift


@dataclass
class Applied:
    findings: list[Finding]
    times: list[tuple[str, float, int]] = field(default_factory=list)  # revision, seconds, attempts
    restore_point: Finding | None = None  # named before the first revision, where WAL is archived

    @property
    def reported(self) -> list[Finding]:
        """What the runbook records: the restore point first, then the apply's findings."""
        return ([self.restore_point] if self.restore_point else []) + self.findings

    def table(self):
        import pandas as pd  # here: spares pandas (~270 ms) at start-up

        return pd.DataFrame(self.times, columns=["revision", "seconds", "attempts"])


# Transient: the revision rolled back whole, and the same statement may pass a moment later.
RETRYABLE = (psycopg.errors.LockNotAvailable, psycopg.errors.DeadlockDetected)


def _kind(error: BaseException) -> str:
    return "deadlock" if isinstance(error, psycopg.errors.DeadlockDetected) else "lock timeout"


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
        return Applied([Finding(Check.APPLY, Status.CRIT, "not applied: " + _counted(crit))])
    # where the server archives its WAL, a way back to just before the change
    mark = pitr.mark(target, f"pgrunbook-before-{p.pending[0].revision}") if p.pending else None
    out = _apply_each(
        target, p, lock_timeout=lock_timeout, statement_timeout=statement_timeout,
        max_retries=max_retries, backoff_s=backoff_s,
    )  # fmt: skip
    out.restore_point = mark
    return out


def _apply_each(
    target: Target, p: Plan, *, lock_timeout: str, statement_timeout: str, max_retries: int,
    backoff_s: float,
) -> Applied:  # fmt: skip
    if p.history is not None:
        return _apply_files(target, p, lock_timeout=lock_timeout,
                            statement_timeout=statement_timeout, max_retries=max_retries,
                            backoff_s=backoff_s)  # fmt: skip
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
                root = root_cause(e)
                if isinstance(root, RETRYABLE) and attempt <= max_retries:
                    time.sleep(min(backoff_s * 2 ** (attempt - 1), 10))
                    continue
                at = current_revision(target)
                why = (
                    f"{_kind(root)} after {attempt} attempts"
                    if isinstance(root, RETRYABLE)
                    else str(e if isinstance(e, MigrationFailed) else root).strip().splitlines()[0]
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
    out.findings.append(Finding(Check.APPLY, Status.OK, _applied_summary(out.times)))
    return out


def _apply_files(
    target: Target, p: Plan, *, lock_timeout: str, statement_timeout: str, max_retries: int,
    backoff_s: float,
) -> Applied:  # fmt: skip
    """A SQL-file history in one pass: the planned files (read, parsed and linted once) applied
    over one connection, each file in its transaction (or statement by statement where it must),
    retrying lock timeouts and deadlocks with backoff."""
    out, h = Applied([]), p.history
    try:
        with h.session(target, lock_timeout=lock_timeout,
                       statement_timeout=statement_timeout) as conn:  # fmt: skip
            for rev in p.pending:
                m, t0, attempt = p.files[rev.revision], time.perf_counter(), 0
                while True:
                    attempt += 1
                    try:
                        h.apply_on(conn, m)
                        break
                    except Exception as e:
                        root = root_cause(e)
                        if (
                            isinstance(root, RETRYABLE)
                            and m.transactional
                            and attempt <= max_retries
                        ):
                            time.sleep(min(backoff_s * 2 ** (attempt - 1), 10))
                            continue
                        out.findings.append(_stopped(target, rev.revision, e, attempt, conn))
                        return out
                out.times.append((rev.revision, round(time.perf_counter() - t0, 3), attempt))
                if not m.transactional and (left := _invalid(conn)):  # a failed CONCURRENTLY
                    out.findings.append(Finding(
                        Check.APPLY, Status.CRIT,
                        f"{rev.revision} left invalid indexes: {', '.join(left)} (drop and create"
                        " them again)", examples=tuple(left),
                    ))  # fmt: skip
                    return out
    except MigrationRefused as e:
        out.findings.append(Finding(Check.APPLY, Status.CRIT, f"not applied: {e}"))
        return out
    out.findings.append(Finding(Check.APPLY, Status.OK, _applied_summary(out.times)))
    return out


def _invalid(conn) -> list[str]:
    try:
        return [i.index for i in indexes.invalid_indexes(conn)]
    except psycopg.Error:  # the connection lost with the failure: nothing more to say
        return []


def _stopped(target: Target, revision: str, e: BaseException, attempt: int, conn) -> Finding:
    """Where a plan stopped, and why, in one line; what a failed CONCURRENTLY build left."""
    root = root_cause(e)
    why = (
        f"{_kind(root)} after {attempt} attempts"
        if isinstance(root, RETRYABLE)
        else str(e if isinstance(e, MigrationFailed) else root).strip().splitlines()[0]
    )
    at = current_revision(target)
    left = _invalid(conn)
    note = f"; invalid indexes left behind: {', '.join(left)} (drop them)" if left else ""
    return Finding(
        Check.APPLY, Status.CRIT, f"stopped at {revision}: {why}; the database stays at {at}{note}",
        value=at, examples=tuple(left),
    )  # fmt: skip


def _counted(found: list[Finding], shown: int = 5) -> str:
    """What stops a plan, each check once with its count, the first few of them."""
    from collections import Counter

    counts = Counter(f.check for f in found)
    said = [f"{check} ({n} CRIT)" if n > 1 else check for check, n in counts.most_common()]
    more = f" and {len(said) - shown} more" if len(said) > shown else ""
    return "; ".join(said[:shown]) + more


def _applied_summary(times: list[tuple[str, float, int]]) -> str:
    """Each revision with its time, or (past five) the total and the slowest three."""
    if not times:
        return "applied 0 revisions"

    def one(r: str, s: float, a: int) -> str:
        return f"{r} in {s:.2f} s" + (f" ({a} attempts)" if a > 1 else "")

    if len(times) <= 5:
        return f"applied {len(times)} revisions: " + ", ".join(one(*t) for t in times)
    slowest = sorted(times, key=lambda t: -t[1])[:3]
    total = sum(s for _, s, _ in times)
    return (
        f"applied {len(times)} revisions in {total:.1f} s, {times[0][0]} to {times[-1][0]};"
        f" slowest: " + ", ".join(one(*t) for t in slowest)
    )


def current_revision(target: Target) -> str:
    """Where the target stands, in its history's words: alembic's `base` before the first
    revision, `none applied` for a Prisma or SQL-file history."""
    with db.connect(target) as conn:
        found = ",".join(migrations.current(conn, target) or ())
    if found:
        return found
    return "none applied" if migrations.history(target) is not None else "base"


def invalid_indexes(target: Target) -> list[str]:
    with db.connect(target) as conn:
        return [i.index for i in indexes.invalid_indexes(conn)]


SLOWEST = 15  # revisions the time chart shows, the slowest first


def plot_times(applied: Applied):
    """The slowest revisions (all of them up to SLOWEST), each with its time; the title says how
    many were applied in all."""
    from matplotlib.figure import Figure  # here: spares matplotlib (~450 ms) at start-up

    shown = sorted(applied.times, key=lambda t: -t[1])[:SLOWEST]
    fig = Figure(figsize=(7, 0.8 + 0.4 * max(len(shown), 1)), layout="constrained")
    ax = fig.subplots()
    ax.barh([r for r, _, _ in shown], [s for _, s, _ in shown], color="#4c72b0")
    ax.invert_yaxis()
    ax.set_xlabel("seconds")
    total = len(applied.times)
    ax.set_title(
        "Time per revision" if total <= SLOWEST else f"The {SLOWEST} slowest of {total} revisions"
    )
    return fig


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
    raw = "base" if at == "none applied" else at  # drift's name for before the first
    found.append(drift(target, tuple(raw.split(","))).finding)
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

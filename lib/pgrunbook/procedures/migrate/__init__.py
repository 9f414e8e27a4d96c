"""The migration runbook's steps: status and drift, plan, lint, pre-flight, staging first, backup,
apply under lock_timeout with retries, verify, rehearse.

Each revision is applied in its own transaction, so a revision that fails
(a lock timeout, a killed connection, bad data) leaves the database exactly
at the revision before it. `planning` says where the target stands and what
would be applied; `gates` holds what must pass first; `applying` applies and
verifies; `scratch` tries migrations on databases beside the target (drift,
rehearsal); `recorded` changes the recorded history. The names below are the
package's face.
"""

from .applying import Applied, apply, current_revision, invalid_indexes, plot_times, verify
from .gates import backup_first, constraint_checks, preflight, staging_first
from .planning import Lint, Plan, lint_plan, offline_sql, plan, plan_finding, status_findings
from .recorded import down_revision, new_revision, reset, resolve
from .scratch import Drift, copy_database, drift, rehearse, scratch_target

__all__ = [
    "Applied",
    "Drift",
    "Lint",
    "Plan",
    "apply",
    "backup_first",
    "constraint_checks",
    "copy_database",
    "current_revision",
    "down_revision",
    "drift",
    "invalid_indexes",
    "lint_plan",
    "new_revision",
    "offline_sql",
    "plan",
    "plan_finding",
    "plot_times",
    "preflight",
    "rehearse",
    "reset",
    "resolve",
    "scratch_target",
    "staging_first",
    "status_findings",
    "verify",
]

"""Fleets on Apache Airflow (`pip install 'pgrunbook[airflow]'`): a DAG per fleet and runbook.

    from pgrunbook.airflow import fleet_dag
    dag = fleet_dag("health", "tenants", schedule="*/5 * * * *")

The DAG: `prepare` checks the fleet and the parameters once; `run_target` is mapped over the
fleet's targets (dynamic task mapping) in an Airflow pool that caps how many run at once; each
calls pgrunbook's own run-and-archive and returns a short summary (its XCom), never the
notebook; the fleet report is the last task. Airflow retries a target only when its run is
UNKNOWN because its server could not be reached: a CRIT run, or a run that finished or failed
after starting (it may have changed something), fails without retry; a task killed mid-run
(SIGKILL, the OOM killer) is failed by its next try without running again. A task cleared and
run again is a new run, not a retry. The report task fails when the fleet's worst outcome is
CRIT, FAILED or UNKNOWN (a target not checked), so the DAG run does too; and when it finds no
target's result, which happens when the workers do not share its PGRUNBOOK_STATE_DIR.
"""

from __future__ import annotations

from dataclasses import asdict
from datetime import UTC, datetime, timedelta
from typing import Any

from .archive import fleet as fleets_run

POOL = "pgrunbook"


def fleet_dag(
    runbook: str,
    fleet: str,
    *,
    params: dict[str, Any] | None = None,
    dag_id: str | None = None,
    schedule: Any = None,
    pool: str = POOL,
    retries: int = 2,
    retry_delay: timedelta = timedelta(seconds=30),
    start_date: datetime | None = None,
    tags: tuple[str, ...] = (),
    **dag_options: Any,
):
    """An Airflow DAG running `runbook` on every target of `fleet` (see the module's doc)."""
    from airflow.sdk import DAG, task
    from airflow.sdk.exceptions import AirflowException, AirflowFailException

    given = {k: str(v) for k, v in (params or {}).items()}

    with DAG(
        dag_id or f"pgrunbook_{runbook}_{fleet}",
        schedule=schedule,
        start_date=start_date or datetime(2026, 1, 1, tzinfo=UTC),
        catchup=False,
        max_active_runs=1,
        tags=["pgrunbook", runbook, *tags],
        doc_md=f"`{runbook}` on every target of fleet `{fleet}` (pgrunbook).",
        **dag_options,
    ) as dag:

        @task
        def prepare() -> dict[str, Any]:
            return asdict(fleets_run.prepare(runbook, fleet, given))

        @task
        def targets(plan: dict[str, Any]) -> list[str]:
            return plan["targets"]

        @task(pool=pool, retries=retries, retry_delay=retry_delay)
        def run_target(target: str, plan: dict[str, Any]) -> dict[str, Any]:
            r = fleets_run.run_target(_prepared(plan), target)
            summary = {
                "target": r.target,
                "outcome": r.outcome,
                "exit_code": r.exit_code,
                "attempts": r.attempts,
                "report": r.html,
                "error": r.error,
            }
            if r.outcome == "UNKNOWN" and r.error and "cannot" in r.error:
                raise AirflowException(f"{target}: {r.error}")  # unreachable: Airflow retries
            if r.outcome in ("CRIT", "FAILED", "UNKNOWN"):
                raise AirflowFailException(f"{target}: {r.outcome} {r.error or r.html}")
            return summary

        @task(trigger_rule="all_done")
        def report(plan: dict[str, Any] | None) -> dict[str, Any]:
            if not plan:
                raise AirflowFailException(
                    f"fleet {fleet}: prepare failed, so nothing ran: its log says why"
                )
            prepared = _prepared(plan)
            if prepared.targets and fleets_run.missing(prepared) == prepared.targets:
                raise AirflowFailException(
                    f"fleet {fleet}: no target's result in {fleets_run.state_folder(prepared)}:"
                    " the run_target tasks and this one must share PGRUNBOOK_STATE_DIR (a"
                    " shared volume), see docs/fleets.md"
                )
            result = fleets_run.finish(prepared)
            counts = {k: v for k, v in result.counts().items() if v}
            summary = {
                "fleet_run": result.fleet_run,
                "counts": counts,
                "report": str(result.report.html) if result.report else "",
            }
            outcome = result.report.outcome if result.report else "FAILED"
            if result.exit_code in (2, 3) or outcome in ("CRIT", "FAILED", "UNKNOWN"):
                raise AirflowFailException(f"fleet {fleet}: {counts}; report {summary['report']}")
            return summary

        plan = prepare()
        runs = run_target.partial(plan=plan).expand(target=targets(plan))
        runs >> report(plan)
    return dag


def _prepared(plan: dict[str, Any]) -> fleets_run.Prepared:
    """The fleet run as `prepare` handed it on (through XCom, as a dict)."""
    return fleets_run.Prepared(**plan)

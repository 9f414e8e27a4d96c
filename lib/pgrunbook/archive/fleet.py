"""One runbook across a fleet, on this machine: every target's run executed and archived exactly
as `pgrunbook run` does it (the runner's own `run`, each in a thread of this process with a kernel
of its own), N at a time, then a fleet report of its own in the archive, and the exit code of the
worst run.

Parameters are checked once, before any run starts. A target whose server cannot be reached is
retried (UNKNOWN only: never a run that finished, whatever it found); one that still cannot be
reached is UNKNOWN in the report, and the others go on. Each target's run is filed under the
fleet run's id (`fleet` in the index), which is how the report finds them.
"""

from __future__ import annotations

import html
import json
import os
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ..base import config, fleets
from ..base.errors import ArchiveFailed, PgRunbookError, UnknownParameter
from ..base.fileio import private_dir, write_atomic
from ..base.findings import Finding, Status
from ..base.secrets import redact
from ..facts import history
from . import runner

REPORT_RUNBOOK = "fleet_report"
UNREACHABLE = ("cannot reach the server of", "cannot connect to")
ORDER = {"CRIT": 0, "FAILED": 1, "UNKNOWN": 2, "WARN": 3, "OK": 4}


@dataclass
class TargetRun:
    target: str
    outcome: str  # OK, WARN, CRIT, UNKNOWN (nothing archived), FAILED (archived, failed)
    exit_code: int
    attempts: int
    duration_s: float
    html: str = ""  # relative to the archive
    error: str = ""


@dataclass
class FleetResult:
    fleet: str
    fleet_run: str
    runbook: str
    runs: list[TargetRun]
    report: runner.RunResult | None

    @property
    def exit_code(self) -> int:
        return max((r.exit_code for r in self.runs), key=_severity, default=0)

    def counts(self) -> dict[str, int]:
        return {o: sum(r.outcome == o for r in self.runs) for o in ORDER}


def _severity(code: int) -> int:
    """A fleet's order of exit codes: OK < WARN < UNKNOWN < CRIT. A target that could not be
    checked is not better than one that warns (as check_postgres and Nagios rank it)."""
    return {0: 0, 1: 1, 3: 2, 2: 3}.get(code, 2)


@dataclass(frozen=True)
class Prepared:
    """A fleet run about to start: its id, its targets, the parameters every run gets."""

    fleet: str
    fleet_run: str
    runbook: str
    targets: list[str]
    given: dict[str, str]
    incident: str | None = None


def prepare(
    runbook: str, fleet: str, given: dict[str, str] | None = None, incident: str | None = None
) -> Prepared:
    """Check everything once, before any run starts: the fleet selects targets, the runbook
    takes a target, the parameters are valid. Bad input raises here."""
    members = fleets.members(fleet)
    declared = runner.parameters(runbook)
    if "target" not in declared:
        raise UnknownParameter(f"runbook {runbook!r} takes no target: it cannot run on a fleet")
    runner.coerce(runbook, given or {}, declared)
    started = datetime.now(UTC)
    fleet_run = f"{started:%Y%m%dT%H%M%SZ}_{fleet}_{uuid.uuid4().hex[:6]}"
    given = {name: str(value) for name, value in (given or {}).items()}
    return Prepared(fleet, fleet_run, runbook, members, given, incident)


def run(
    runbook: str,
    fleet: str,
    given: dict[str, str] | None = None,
    *,
    parallel: int | None = None,
    retries: int = 2,
    retry_delay_s: float = 2.0,
    incident: str | None = None,
) -> FleetResult:
    """Run `runbook` on every target of `fleet` on this machine, `parallel` at a time."""
    if parallel is not None and parallel < 1:
        raise UnknownParameter(f"--parallel takes 1 or more, not {parallel}")
    plan = prepare(runbook, fleet, given, incident)

    def one(target: str) -> TargetRun:
        return run_target(plan, target, retries=retries, retry_delay_s=retry_delay_s)

    pool = ThreadPoolExecutor(max_workers=parallel or os.cpu_count() or 1)
    try:
        list(pool.map(one, plan.targets))
    finally:  # interrupted: the runs under way finish and are archived, no other starts
        pool.shutdown(wait=True, cancel_futures=True)
    return finish(plan, incident=incident)


def run_target(
    plan: Prepared, target: str, *, retries: int = 0, retry_delay_s: float = 2.0
) -> TargetRun:
    """One target's run, made and archived by the runner exactly as `pgrunbook run` makes it,
    filed under the fleet run; retried while its server cannot be reached (nothing was archived
    then). What happened is kept for the fleet report. Never raises for the target's sake: the
    others go on.

    Called again for the same fleet run (an Airflow task's next try, or a task cleared and run
    again): after an unreachable server it is a retry, its attempts and time added; after an
    attempt that was killed mid-run (its state still says it was running) it is FAILED without
    running again, since that run may have changed something; after a run that finished it is a
    new run, which replaces the earlier one."""
    earlier = _load_target(plan.fleet_run, target)
    if earlier is not None and earlier.outcome == RUNNING:
        result = _killed(earlier)
        _save_target(plan.fleet_run, result)
        return result
    if earlier is not None and not (earlier.outcome == "UNKNOWN" and unreachable(earlier.error)):
        earlier = None  # a re-run, not a retry
    t0, attempt = time.perf_counter(), earlier.attempts if earlier else 0
    root = config.settings().reports_dir
    while True:
        _save_target(plan.fleet_run, TargetRun(target, RUNNING, 3, attempt + 1, 0.0))
        attempt += 1
        done, code, error = None, 3, ""
        try:
            done = runner.run(
                plan.runbook,
                target,
                dict(plan.given),
                incident=plan.incident,
                progress=False,
                fleet=plan.fleet_run,
            )
        except ArchiveFailed as e:  # it ran, but its report could not be kept: said, not retried
            code, error = 2, str(e).splitlines()[0]
        except PgRunbookError as e:  # refused before it started, or its server out of reach
            error = str(e)
        except Exception as e:  # the runner itself failed: this target only
            error = f"{type(e).__name__}: {e}".splitlines()[0]
        if done is not None or not unreachable(error) or retries <= 0:
            break
        retries -= 1
        time.sleep(retry_delay_s * attempt)
    took = round(time.perf_counter() - t0 + (earlier.duration_s if earlier else 0), 3)
    if done is not None:
        html_path = str(done.html.relative_to(root)) if done.html.is_relative_to(root) else ""
        result = TargetRun(target, done.outcome, done.exit_code, attempt, took, html_path)
    else:
        result = TargetRun(target, "UNKNOWN", code, attempt, took, error=redact(error))
    _save_target(plan.fleet_run, result)
    return result


RUNNING = "RUNNING"  # a target's state while its run goes: found so later, the run was killed


def _killed(run: TargetRun) -> TargetRun:
    return TargetRun(
        run.target, "FAILED", 3, run.attempts, run.duration_s,
        error=f"attempt {run.attempts} was killed mid-run (its process ended without a word, as"
        " the OOM killer ends one): not run again, since it may have changed something; see"
        f" `pgrunbook cleanup --target {run.target}`",
    )  # fmt: skip


def missing(plan: Prepared) -> list[str]:
    """The targets of `plan` with no state at all: never started, or started where this
    process's PGRUNBOOK_STATE_DIR is not."""
    return [t for t in plan.targets if _load_target(plan.fleet_run, t) is None]


def unreachable(error: str) -> bool:
    """The run was refused because its server could not be reached: the one case worth a
    retry (nothing ran, nothing was archived)."""
    return any(u in error for u in UNREACHABLE)


def finish(plan: Prepared, *, incident: str | None = None) -> FleetResult:
    """Gather every target's run, write the fleet report into the archive."""
    runs = [
        _load_target(plan.fleet_run, t)
        or TargetRun(t, "UNKNOWN", 3, 0, 0.0, error="never ran: the fleet run stopped first")
        for t in plan.targets
    ]
    runs = [_killed(r) if r.outcome == RUNNING else r for r in runs]
    runs.sort(key=lambda r: (ORDER.get(r.outcome, 2), r.target))
    result = FleetResult(plan.fleet, plan.fleet_run, plan.runbook, runs, None)
    _save(result)
    result.report = runner.run(
        REPORT_RUNBOOK,
        f"fleet-{plan.fleet}",
        {"fleet_run": plan.fleet_run},
        incident=incident,
        progress=False,
    )
    return result


def state_folder(plan: Prepared) -> Path:
    """Where each target's run of `plan` is kept until its report (PGRUNBOOK_STATE_DIR)."""
    return config.settings().state_dir / "fleets" / plan.fleet_run


def _target_path(fleet_run: str, target: str) -> Path:
    return config.settings().state_dir / "fleets" / fleet_run / f"{target}.json"


def _save_target(fleet_run: str, run: TargetRun) -> None:
    path = _target_path(fleet_run, run.target)
    private_dir(path.parent)
    write_atomic(path, json.dumps(asdict(run)))


def _load_target(fleet_run: str, target: str) -> TargetRun | None:
    try:
        return TargetRun(**json.loads(_target_path(fleet_run, target).read_text()))
    except FileNotFoundError:
        return None


def _save(result: FleetResult) -> None:
    path = history.fleet_run_path(result.fleet_run)
    private_dir(path.parent)
    data = {
        "fleet": result.fleet,
        "fleet_run": result.fleet_run,
        "runbook": result.runbook,
        "runs": [asdict(r) for r in result.runs],
    }
    write_atomic(path, json.dumps(data, indent=1))


load = history.fleet_run  # what a fleet run did, for its report (read where earlier runs are)


def findings(data: dict[str, Any]) -> list[Finding]:
    """One finding per target (its run's outcome), worst first, then the counts."""
    status = {"OK": Status.OK, "WARN": Status.WARN, "CRIT": Status.CRIT}
    out = []
    for r in data["runs"]:
        said = r["error"] or f"{data['runbook']} ended {r['outcome']}"
        if r["outcome"] not in status:  # not checked: ranked with the CRITs, said as such
            said = f"not checked ({r['outcome']}): {said}"
        tries = f" after {r['attempts']} attempts" if r["attempts"] > 1 else ""
        out.append(
            Finding(
                r["target"],
                status.get(r["outcome"], Status.CRIT),
                f"{said}{tries}",
                value=r["exit_code"],
            )
        )
    counts = {o: sum(r["outcome"] == o for r in data["runs"]) for o in ORDER}
    out.append(
        Finding(
            "fleet",
            Status.OK,
            f"{data['runbook']} on {len(data['runs'])} targets of {data['fleet']}: "
            + ", ".join(f"{n} {o}" for o, n in counts.items() if n),
            value=len(data["runs"]),
        )
    )
    return out


def table_html(data: dict[str, Any]) -> str:
    """Targets worst first, each linked to its run's report (paths relative to the report's own
    folder in the archive)."""
    colours = {"OK": "#1a7f37", "WARN": "#9a6700", "CRIT": "#cf222e"}
    rows = []
    for r in data["runs"]:
        link = (
            f"<a href='../{html.escape(r['html'])}'>{html.escape(Path(r['html']).stem)}</a>"
            if r["html"]
            else html.escape(r["error"])
        )
        rows.append(
            f"<tr><td>{html.escape(r['target'])}</td>"
            f"<td style='color:{colours.get(r['outcome'], '#57606a')};font-weight:bold'>"
            f"{html.escape(r['outcome'])}</td><td>{r['attempts']}</td>"
            f"<td>{r['duration_s']:.1f} s</td><td>{link}</td></tr>"
        )
    head = "<tr><th>target</th><th>outcome</th><th>attempts</th><th>took</th><th>report</th></tr>"
    return f"<table class='pgrb-table'><thead>{head}</thead><tbody>{''.join(rows)}</tbody></table>"


def describe(fleet: str) -> str:
    """`pgrunbook fleet list NAME`: what the fleet resolves to."""
    rows = fleets.describe(fleet)
    width = max(len(r["target"]) for r in rows)
    lines = [
        f"{r['target']:<{width}}  {r['from']}{'  protected' if r['protected'] else ''}"
        + (f"  [{r['tags']}]" if r["tags"] else "")
        for r in rows
    ]
    return "\n".join([*lines, f"{len(rows)} targets in fleet {fleet!r}"])

"""Earlier runs, read from the archive's index: the facts trend, drift and the gates use.

The archive (`archive.reports`) writes the index and verifies it; this module
only reads it, so that checks and procedures can ask what an earlier run of a
runbook on a target found without depending on the archive's writer.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from datetime import date, datetime
from pathlib import Path
from typing import Any

from ..base import config
from ..base.errors import ReportNotFound, UnknownParameter


def index_path() -> Path:
    return config.settings().reports_dir / "index.jsonl"


def entries() -> list[dict[str, Any]]:
    """Every readable indexed run, oldest first (`verify` names the unreadable lines)."""
    path = index_path()
    if not path.exists():
        return []
    found = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            found.append(json.loads(line))
        except ValueError:
            continue
    return found


def _day(value: str | date | None) -> date | None:
    if value is None or isinstance(value, date):
        return value
    return date.fromisoformat(value)


def select(
    *,
    runbook: str | None = None,
    target: str | None = None,
    outcome: str | None = None,
    incident: str | None = None,
    since: str | date | None = None,
    until: str | date | None = None,
) -> list[dict[str, Any]]:
    """Indexed runs matching every filter given (dates inclusive, UTC)."""
    since, until = _day(since), _day(until)

    def keep(e: dict[str, Any]) -> bool:
        day = datetime.fromisoformat(e["start"]).date()
        return all(
            (
                runbook is None or e["runbook"] == runbook,
                target is None or e["target"] == target,
                outcome is None or e["outcome"] == outcome.upper(),
                incident is None or e.get("incident") == incident,
                since is None or day >= since,
                until is None or day <= until,
            )
        )

    return [e for e in entries() if keep(e)]


def find(ref: str) -> dict[str, Any]:
    """One run by id (`status/20261123T101500Z_sandbox`), report path, or unique id prefix."""
    root = config.settings().reports_dir
    ref_id = ref
    if ref.endswith((".ipynb", ".html")):
        p = Path(ref).resolve()
        ref_id = str(p.relative_to(root).with_suffix("")) if p.is_relative_to(root) else ref
    matches = [e for e in entries() if e["id"] == ref_id] or [
        e for e in entries() if e["id"].startswith(ref_id)
    ]
    if len(matches) != 1:
        what = "no run" if not matches else f"{len(matches)} runs"
        raise ReportNotFound(f"{what} matches {ref!r}: `pgrunbook reports list` shows the ids")
    return matches[0]


def details(ref: str) -> dict[str, Any]:
    """The archived metadata of one run (parameters, findings, outcome, ...)."""
    import nbformat  # here: spares nbformat (~100 ms) at start-up

    entry = find(ref)
    path = config.settings().reports_dir / entry["files"]["ipynb"]["path"]
    if not path.exists():
        raise ReportNotFound(f"report {entry['id']} is indexed but its file is gone: {path}")
    return {**entry, **nbformat.read(path, as_version=4).metadata.get("pgrunbook", {})}


def runs(
    runbook: str, target: str, *, since: str | date | None = None, look_back: int | None = None
) -> Iterator[dict[str, Any]]:
    """The archived runs of `runbook` on `target`, newest first, each with its metadata
    (parameters, findings, outcome); runs whose report is gone are passed over."""
    indexed = select(runbook=runbook, target=target, since=since)
    for entry in reversed(indexed[-look_back:] if look_back else indexed):
        try:
            yield details(entry["id"])
        except ReportNotFound:
            continue


def same_database(recorded: dict[str, Any] | None, current: dict[str, Any] | None) -> bool:
    """Whether a run's recorded database is the one `current` identifies: the same cluster (system
    identifier where both know it, else address) and the same database oid. A database dropped
    and re-created under its name, or restored in its place, has another oid. A run that
    recorded none (older versions) is taken as the same."""
    if not recorded or not current:
        return True
    both = recorded.get("system_identifier") and current.get("system_identifier")
    cluster = (
        recorded["system_identifier"] == current["system_identifier"]
        if both
        else recorded.get("address") == current.get("address")
    )
    return cluster and recorded.get("database_oid") == current.get("database_oid")


def previous(
    runbook: str,
    target: str,
    *,
    where: Callable[[dict[str, Any]], bool] = lambda run: True,
    since: str | date | None = None,
    look_back: int | None = None,
    database: dict[str, Any] | None = None,
) -> dict[str, Any] | None:
    """The newest archived run of `runbook` on `target` for which `where(run)` holds, or None:
    the one reading of "the previous run" that trend, drift, staging-first and health use.
    With `database` (its identity, `backups.identity`), only runs of that very database."""
    return next(
        (
            run
            for run in runs(runbook, target, since=since, look_back=look_back)
            if where(run) and same_database(run.get("database"), database)
        ),
        None,
    )


def starts_again(runbook: str, target: str, database: dict[str, Any] | None) -> str | None:
    """Where the newest run of `runbook` on `target` looked at another database than `database`
    (dropped and re-created, restored in its place, another server): why the history starts
    again with this run; None when it does not."""
    newest = previous(runbook, target)
    if newest is None or same_database(newest.get("database"), database):
        return None
    was, now = newest["database"], database
    if (was.get("system_identifier"), was.get("address")) != (
        now.get("system_identifier"), now.get("address")
    ):  # fmt: skip
        why = "another server"
    else:
        why = f"database oid {now.get('database_oid')}, was {was.get('database_oid')}"
    return (
        f"{target!r} is not the database {newest['id']} looked at ({why}: dropped and re-created,"
        " or restored in its place): its history starts again with this run"
    )


def value(run: dict[str, Any], check: str) -> Any:
    """The value an archived run recorded for its finding `check`, or None."""
    return next((f.get("value") for f in run.get("findings", []) if f.get("check") == check), None)


def fleet_run_path(fleet_run: str) -> Path:
    """Where a fleet run's record is kept (written by `archive.fleet`)."""
    return config.settings().state_dir / "fleets" / f"{fleet_run}.json"


def fleet_run(fleet_run: str = "") -> dict[str, Any]:
    """What a fleet run did, for its report (none given: an empty report, as the runbook's
    defaults make when it is opened by itself)."""
    if not fleet_run:
        return {"fleet": "none", "fleet_run": "", "runbook": "no runbook", "runs": []}
    try:
        return json.loads(fleet_run_path(fleet_run).read_text())
    except FileNotFoundError:
        raise UnknownParameter(f"no fleet run {fleet_run!r} is recorded") from None

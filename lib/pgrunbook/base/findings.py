"""Findings: what each check concluded, with the Nagios / check_postgres statuses.

A runbook collects findings as it goes and ends with `findings.record()`,
which shows them and publishes them under a mimetype the runner reads back
from the executed notebook. Under plain papermill (no runner), `record()`
raises on CRIT so that the run exits non-zero.
"""

from __future__ import annotations

import html
import json
import os
from collections import Counter
from dataclasses import asdict, dataclass, field
from enum import IntEnum, StrEnum
from typing import Any

from .errors import RunbookCritical, RunbookStopped

MIMETYPE = "application/vnd.pgrunbook.findings+json"
RUNNER_ENV = "PGRUNBOOK_RUNNER"


class Status(IntEnum):
    """The value is the exit code (0 OK, 1 WARN, 2 CRIT, 3 UNKNOWN)."""

    OK = 0
    WARN = 1
    CRIT = 2
    UNKNOWN = 3

    @property
    def severity(self) -> int:
        """Order for 'the worst': OK < UNKNOWN < WARN < CRIT."""
        return {0: 0, 3: 1, 1: 2, 2: 3}[self.value]


class Check(StrEnum):
    """The check names other code relies on: the health runbook's (Prometheus labels, so a
    dashboard's series never change name) and those an archived run is looked up by (trend, drift,
    staging first)."""

    SNAPSHOT = "snapshot"
    VERIFY = "verify"
    APPLY = "apply"
    RESOLVE = "resolve"
    UNFINISHED_SWAP = "unfinished swap"
    DEBRIS = "debris"
    STORAGE = "storage"
    CONNECTIONS = "connections"
    LONG_TRANSACTIONS = "long transactions"
    IDLE_IN_TRANSACTION = "idle in transaction"
    SLOW_QUERIES = "slow queries"
    XID_AGE = "xid age"
    MULTIXACT_AGE = "multixact age"
    REPLICATION = "replication"
    MIGRATIONS = "migrations"
    BACKUP = "backup"
    WAL_ARCHIVING = "wal archiving"
    HOST_CPU = "host cpu"
    HOST_MEMORY = "host memory"
    EXPORT = "export"


# The one thing to do first when a check is WARN or CRIT ({target}: the target's name), for the
# messages that reach people and the reports that open with them.
FIRST_STEPS: dict[str, str] = {
    Check.BACKUP: "take and verify one now: pgrunbook run backup --target {target}",
    Check.STORAGE: "free or add disk before it fills: pgrunbook run performance --target {target}"
    " names the largest tables and indexes",
    Check.CONNECTIONS: "find who holds them: pgrunbook run performance --target {target}; then"
    " fix the leak or raise the pool",
    Check.LONG_TRANSACTIONS: "end the oldest (its pid is in the finding): SELECT"
    " pg_terminate_backend(pid), after asking its owner",
    Check.IDLE_IN_TRANSACTION: "end the session (its pid is in the finding), and set"
    " idle_in_transaction_session_timeout",
    Check.SLOW_QUERIES: "read the plans: pgrunbook run performance --target {target}",
    Check.XID_AGE: "VACUUM (FREEZE) the oldest tables now, before the server stops writes",
    Check.MULTIXACT_AGE: "VACUUM (FREEZE) the oldest tables now, before the server stops writes",
    Check.REPLICATION: "look at the replica's apply and network: pg_stat_replication on the"
    " primary",
    Check.MIGRATIONS: "see what is pending or unknown: pgrunbook migrations status --target"
    " {target}",
    Check.WAL_ARCHIVING: "read the archiver's last failure in the server log; WAL piles up in"
    " pg_wal until it archives",
    Check.HOST_CPU: "see whose processes are busy (the finding says PostgreSQL's or others'):"
    " for PostgreSQL's, the busiest statements: pgrunbook run performance --target {target}",
    Check.HOST_MEMORY: "find what holds memory on the host; check work_mem and connections",
    "the run": "read the run's report, then: pgrunbook cleanup --target {target} lists what it"
    " left",
    "verify": "do not rely on this backup: take another, then restore-test it",
    "foreign keys": "list the orphans with the query in the report, then fix or delete them",
}
# checks named after what they found (`foreign key orders_customer`), by the start of the name
FIRST_STEPS_BY_KIND: dict[str, str] = {
    "foreign key ": "list the orphans with the query under the finding; fix or delete them, then"
    " VALIDATE the constraint",
    "constraint ": "list the rows with the query under the finding; fix them, then VALIDATE the"
    " constraint",
    "assert ": "list the rows with the query under the finding, and fix the data (or the rule)",
    "sequence ": "move the sequence past its column's highest value (setval) before the next"
    " insert fails",
}


def first_step(check: str, target: str) -> str:
    """The one thing to do first about `check` (empty where none is known)."""
    found = FIRST_STEPS.get(check) or next(
        (do for kind, do in FIRST_STEPS_BY_KIND.items() if check.startswith(kind)), ""
    )
    return found.format(target=target) if found else ""


def worst(statuses) -> Status:
    return max(statuses, key=lambda s: s.severity, default=Status.OK)


@dataclass(frozen=True)
class Finding:
    check: str
    status: Status
    summary: str
    value: Any = None
    threshold: str | None = None
    examples: tuple[str, ...] = ()
    query: str | None = None  # the SQL that lists every offending row (examples: the first)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["status"] = self.status.name
        d["examples"] = list(self.examples)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Finding:
        return cls(
            d["check"],
            Status[d["status"]],
            d["summary"],
            d.get("value"),
            d.get("threshold"),
            tuple(d.get("examples", ())),
            d.get("query"),
        )

    def _repr_html_(self) -> str:
        return _html_table([self])

    def __str__(self) -> str:
        return f"{self.status.name:<7} {self.check}: {self.summary}"


STATUS_COLOURS = {"OK": "#1a7f37", "WARN": "#9a6700", "CRIT": "#cf222e", "UNKNOWN": "#57606a"}


def _html_table(items: list[Finding], first: int | None = None) -> str:
    """The findings as an HTML table; numbered from `first`, each row is the anchor the report's
    summary links to (`pgrb-finding-N`, N its place in the run's findings). The figure a check
    measured is in its summary, in words and units; the raw value stays in the run's data."""

    def anchor(i: int) -> str:
        return "" if first is None else f" id='pgrb-finding-{first + i}'"

    rows = "".join(
        f"<tr{anchor(i)}><td"
        f" style='color:{STATUS_COLOURS[f.status.name]};font-weight:bold'>{f.status.name}</td>"
        f"<td>{html.escape(f.check)}</td><td style='text-align:left'>{html.escape(f.summary)}</td>"
        f"<td style='text-align:left'>{html.escape(f.threshold or '')}</td></tr>" + _evidence(f)
        for i, f in enumerate(items)
    )
    head = "<tr><th>status</th><th>check</th><th>finding</th><th>threshold</th></tr>"
    return f"<table class='pgrb-table'>{head}{rows}</table>"


EVIDENCE_SHOWN = 10  # offending rows a step shows under its finding; the rest: the query


def _evidence(f: Finding) -> str:
    """Under a finding that is not OK: its first examples (the offending rows' keys, statements,
    roles) and, where there is one, the query that lists them all."""
    if f.status is Status.OK or not (f.examples or f.query):
        return ""
    shown = f.examples[:EVIDENCE_SHOWN]
    count = f.value if isinstance(f.value, int) and not isinstance(f.value, bool) else 0
    total = max(count, len(f.examples))
    parts = []
    if shown:
        what = f"the first {len(shown)} of {total:,}" if total > len(shown) else f"all {total:,}"
        items = "".join(f"<li><code>{html.escape(e)}</code></li>" for e in shown)
        parts.append(f"<p>{what}:</p><ul>{items}</ul>")
    if f.query:
        parts.append(f"<p>every one, by this query:</p><pre>{html.escape(f.query)}</pre>")
    return (
        "<tr class='pgrb-evidence'><td></td><td colspan='3' style='text-align:left'>"
        + "".join(parts)
        + "</td></tr>"
    )


def _outcome_line(items: list[Finding]) -> str:
    """The run's outcome in one line: how many findings of each status (each finding itself is
    shown once, in the step that made it, and listed in the report's header)."""
    counts = Counter(f.status.name for f in items)
    parts = [f"{counts[s]} {s}" for s in ("CRIT", "WARN", "UNKNOWN", "OK") if counts[s]]
    worst_name = worst(f.status for f in items).name
    return (
        f"<p><strong style='color:{STATUS_COLOURS.get(worst_name, '#57606a')}'>outcome"
        f" {worst_name}</strong>: {', '.join(parts) or 'no findings'}</p>"
    )


@dataclass
class Findings:
    """The findings of one run, in the order the steps made them."""

    runbook: str
    target: str
    items: list[Finding] = field(default_factory=list)
    written: dict[str, str] = field(default_factory=dict)

    def wrote(self, what: str, path) -> None:
        """Note a file or folder the run wrote besides its report (a backup, an export), which the
        console prints at the end of the run and the report's header names."""
        if path:
            self.written[what] = str(path)

    def add(self, *found: Finding) -> None:
        """Record findings and show them in the step that made them (in a notebook; nothing is
        shown elsewhere), so every step shows all of its findings, not only its last line's."""
        first = len(self.items)
        self.items.extend(found)
        _show(list(found), first)

    def gate(self, finding: Finding, *, unknown_stops: bool = False) -> None:
        """Record `finding`; when it is CRIT (or UNKNOWN, with `unknown_stops`: what follows
        cannot be done here), record the run and stop it here. Returns nothing: a cell that ends
        with a gate shows the finding once, in the step's table."""
        self.add(finding)
        if finding.status is Status.CRIT or unknown_stops and finding.status is Status.UNKNOWN:
            self.record()
            raise RunbookStopped(
                f"stopped before changing anything: {finding.check}: {finding.summary}"
            )

    @property
    def worst(self) -> Status:
        return worst(f.status for f in self.items)

    def table(self):
        """The findings as a DataFrame."""
        import pandas as pd  # here: spares pandas (~270 ms) at start-up

        return pd.DataFrame(
            [f.to_dict() for f in self.items],
            columns=["check", "status", "summary", "value", "threshold", "examples"],
        )

    def payload(self) -> dict[str, Any]:
        return {
            "runbook": self.runbook,
            "target": self.target,
            "outcome": self.worst.name,
            "findings": [f.to_dict() for f in self.items],
            "written": dict(self.written),
        }

    def record(self) -> None:
        """Show the findings and publish them for the runner; CRIT fails plain papermill."""
        from IPython.display import display  # here: spares IPython (~70 ms) at start-up

        text = "\n".join(str(f) for f in self.items) or "no findings"
        display(
            {
                MIMETYPE: self.payload(),
                "text/html": _outcome_line(self.items),
                "text/plain": f"outcome {self.worst.name}\n{text}",
            },
            raw=True,
        )
        if self.worst is Status.CRIT and not os.environ.get(RUNNER_ENV):
            crit = [f.check for f in self.items if f.status is Status.CRIT]
            raise RunbookCritical(f"CRIT findings: {', '.join(crit)}")


STEP_MIMETYPE = "application/vnd.pgrunbook.step-findings+json"


def _show(items: list[Finding], first: int) -> None:
    """Display findings as a table where a notebook kernel runs this code, marked with their
    place in the run's findings so that the report links each one to the step that made it."""
    try:
        from IPython import get_ipython  # here: spares IPython (~70 ms) at start-up
    except ImportError:
        return
    if not items or get_ipython() is None:
        return
    from IPython.display import display  # here: spares IPython (~70 ms) at start-up

    text = "\n".join(str(f) for f in items)
    display(
        {
            STEP_MIMETYPE: {"first": first, "count": len(items)},
            "text/html": _html_table(items, first),
            "text/plain": text,
        },
        raw=True,
    )


def steps(nb) -> dict[int, tuple[str, str]]:
    """Which step made each finding of an executed notebook: its place in the run's findings ->
    (the heading of the step, the anchor of its row)."""
    found: dict[int, tuple[str, str]] = {}
    heading = ""
    for cell in nb.cells:
        if cell.cell_type == "markdown":
            for line in cell.source.splitlines():
                if line.startswith("#"):
                    heading = line.lstrip("#").strip()
                    break
            continue
        for output in cell.get("outputs", []):
            mark = output.get("data", {}).get(STEP_MIMETYPE)
            if isinstance(mark, str):
                mark = json.loads(mark)
            if mark:
                for n in range(mark["first"], mark["first"] + mark["count"]):
                    found[n] = (heading, f"pgrb-finding-{n}")
    return found


def read_recorded(nb) -> dict[str, Any] | None:
    """The findings payload a runbook recorded in an executed notebook, if any."""
    for cell in reversed(nb.cells):
        for output in cell.get("outputs", []):
            data = output.get("data", {})
            if MIMETYPE in data:
                payload = data[MIMETYPE]
                return json.loads(payload) if isinstance(payload, str) else dict(payload)
    return None

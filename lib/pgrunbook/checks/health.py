"""Health checks for cron and alerting: each OK/WARN/CRIT/UNKNOWN with its figure and threshold.

Read-only. Defaults are the guide's numbers. What cannot be seen from here
(the disk or the host of a remote server, replicas that do not exist) is
UNKNOWN or said to be absent, never made up. The figures can be written for
node_exporter's textfile collector (Prometheus text format) and as JSON.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import psutil
import psycopg
from psycopg.conninfo import conninfo_to_dict

from ..base import config
from ..base.errors import UnknownParameter
from ..base.fileio import FILE_MODE, write_atomic
from ..base.findings import STATUS_COLOURS, Check, Finding, Status, worst
from ..base.limits import DEFAULTS, level
from ..base.targets import Target
from ..facts import activity, history, statements, wal
from ..facts import replication as replication_facts
from . import perf, recovery, status


def is_local(target: Target) -> bool:
    """Whether the server runs on this host (the sandbox, a Unix socket, or localhost)."""
    if target.sandbox:
        return True
    host = str(conninfo_to_dict(target.url).get("host") or "")
    return host in ("", "localhost", "127.0.0.1", "::1") or host.startswith("/")


def storage(
    conn: psycopg.Connection,
    target: Target,
    *,
    warn_pct: float = DEFAULTS.storage_warn_pct,
    crit_pct: float = DEFAULTS.storage_crit_pct,
) -> Finding:
    """Use of the filesystem holding the data directory, where this host can see it."""
    threshold = f"WARN >= {warn_pct:g}%, CRIT >= {crit_pct:g}%"
    try:
        data_dir = conn.execute("SELECT current_setting('data_directory')").fetchone()[0]
    except psycopg.Error:
        return Finding(
            Check.STORAGE,
            Status.UNKNOWN,
            "data_directory is not readable by this role (grant pg_read_all_settings)",
            threshold=threshold,
        )
    if not is_local(target) or not os.path.isdir(data_dir):
        return Finding(
            Check.STORAGE,
            Status.UNKNOWN,
            f"the server's disk is not visible from this host ({data_dir}): "
            "watch it where the server runs",
            threshold=threshold,
        )
    usage = shutil.disk_usage(data_dir)
    pct = 100 * usage.used / (usage.used + usage.free)  # as df counts: root's reserve is not free
    return Finding(
        Check.STORAGE,
        level(pct, warn_pct, crit_pct),
        f"{pct:.1f}% used of {usage.total / 2**30:.1f} GiB ({usage.free / 2**30:.1f} GiB free) "
        f"under {data_dir}",
        value=round(pct, 2),
        threshold=threshold,
    )


def slow_queries(conn: psycopg.Connection, *, slow_ms: float = DEFAULTS.slow_ms) -> Finding:
    """The application's queries averaging over `slow_ms`: the performance review's reading
    (statements.statements, perf.slow), so both runbooks count the same statements."""
    threshold = f"WARN when any averages > {slow_ms:g} ms"
    if not statements.has_statements(conn):
        return Finding(
            Check.SLOW_QUERIES,
            Status.WARN,
            "pg_stat_statements is not installed in this database: "
            "slow queries cannot be seen (see the performance runbook for how to enable it)",
            threshold=threshold,
        )
    slow = perf.slow(statements.statements(conn), slow_ms)
    n = len(slow)
    return Finding(
        Check.SLOW_QUERIES,
        Status.WARN if n else Status.OK,
        f"{n} queries average over {slow_ms:g} ms"
        + (f", the slowest {slow['mean_ms'].iloc[0]:.0f} ms" if n else ""),
        value=n,
        threshold=threshold,
    )


def long_transactions(
    conn: psycopg.Connection,
    *,
    warn_s: float = DEFAULTS.long_transaction_warn_s,
    crit_s: float = DEFAULTS.long_transaction_crit_s,
) -> Finding:
    """The oldest open transaction of any client session (this one excluded)."""
    open_ = [s for s in activity.sessions(conn) if s.xact_s is not None]
    oldest = max(open_, key=lambda s: s.xact_s, default=None)
    age = oldest.xact_s if oldest else 0.0
    return Finding(
        Check.LONG_TRANSACTIONS,
        level(age, warn_s, crit_s),
        f"the oldest open transaction is {age:.0f} s old"
        + (f" (pid {oldest.pid} on {oldest.database})" if oldest else ""),
        value=round(age, 1),
        threshold=f"WARN >= {warn_s:g} s, CRIT >= {crit_s:g} s",
    )


def idle_in_transaction(
    conn: psycopg.Connection,
    *,
    warn_s: float = DEFAULTS.idle_in_transaction_warn_s,
    crit_s: float = DEFAULTS.idle_in_transaction_crit_s,
) -> Finding:
    """Sessions idle inside an open transaction: they hold locks and stop vacuum."""
    idle = [s for s in activity.sessions(conn) if s.idle_in_transaction]
    age = max((s.state_s or 0.0 for s in idle), default=0.0)
    return Finding(
        Check.IDLE_IN_TRANSACTION,
        level(age, warn_s, crit_s) if idle else Status.OK,
        f"{len(idle)} sessions idle in transaction"
        + (f", the longest for {age:.0f} s" if idle else ""),
        value=round(age, 1),
        threshold=f"WARN >= {warn_s:g} s, CRIT >= {crit_s:g} s",
    )


def replication(
    conn: psycopg.Connection,
    *,
    warn_s: float = DEFAULTS.replication_lag_warn_s,
    crit_s: float = DEFAULTS.replication_lag_crit_s,
) -> Finding:
    """Replay lag of each replica (on a primary) or of this server (on a standby)."""
    threshold = f"WARN >= {warn_s:g} s, CRIT >= {crit_s:g} s"
    me = replication_facts.standby(conn)
    if me.standby:
        if me.replay_lag_s is None:
            return Finding(
                Check.REPLICATION,
                Status.UNKNOWN,
                "standby has replayed nothing yet",
                threshold=threshold,
            )
        return Finding(
            Check.REPLICATION,
            level(me.replay_lag_s, warn_s, crit_s),
            f"this standby is {me.replay_lag_s:.1f} s behind",
            value=round(me.replay_lag_s, 2),
            threshold=threshold,
        )
    replicas = replication_facts.replicas(conn)
    if not replicas:
        return Finding(
            Check.REPLICATION, Status.OK, "no replicas attached", value=0, threshold=threshold
        )
    far = replicas[0]
    return Finding(
        Check.REPLICATION,
        level(far.replay_lag_s, warn_s, crit_s),
        f"{len(replicas)} replicas; the furthest behind, {far.name}, {far.replay_lag_s:.1f} s",
        value=round(far.replay_lag_s, 2),
        threshold=threshold,
    )


def _applied(details: dict) -> bool:
    """Whether an archived migrate run got as far as applying (or recording) a revision."""
    return any(
        f["check"] in (Check.APPLY, Check.RESOLVE)
        and not f["summary"].startswith(("not applied", "not recorded", "skipped"))
        for f in details.get("findings", [])
    )


def migrations(conn: psycopg.Connection, target: Target, *, look_back: int = 20) -> Finding:
    """A failed migration as the latest change of this target (CRIT, from the archive), else pending
    revisions.

    Only a run that applied something counts: one refused before it started,
    or stopped at a gate before applying, changed nothing and failed nothing.
    """
    run = history.previous(
        "migrate",
        target.name,
        look_back=look_back,
        where=lambda r: (
            r.get("parameters", {}).get("mode") in ("apply", "resolve")
            and (_applied(r) or r["outcome"] == "FAILED")
        ),
    )
    if run and run["parameters"]["mode"] == "apply" and run["outcome"] in ("FAILED", "CRIT"):
        return Finding(
            Check.MIGRATIONS,
            Status.CRIT,
            f"the latest migration of {target.name!r} failed: report "
            f"{run['id']} ({run['outcome']})",
            value=run["id"],
        )
    return status.migration_state(conn, target)


def host(
    target: Target,
    *,
    cpu_warn_pct: float = DEFAULTS.cpu_warn_pct,
    mem_warn_pct: float = DEFAULTS.memory_warn_pct,
    mem_crit_pct: float = DEFAULTS.memory_crit_pct,
    sample_s: float = 1.0,
) -> list[Finding]:
    """CPU use and memory of the host, when the server runs on this host.

    A busy CPU is a WARN (slowness), never a CRIT, and only when it is sustained, as an alert
    rule holds its condition for minutes: busy at or over `cpu_warn_pct` over `sample_s` now and
    over the last 5 minutes (the 5-minute load average per core). Whose CPU it is is said:
    PostgreSQL's processes or the host's other programs. Memory near exhaustion is a CRIT.
    """
    if not is_local(target):
        why = "the server is not on this host: watch its CPU and memory where it runs"
        return [
            Finding(Check.HOST_CPU, Status.UNKNOWN, why, threshold=f"WARN >= {cpu_warn_pct:g}%"),
            Finding(
                Check.HOST_MEMORY,
                Status.UNKNOWN,
                why,
                threshold=f"WARN >= {mem_warn_pct:g}%, CRIT >= {mem_crit_pct:g}%",
            ),
        ]

    mem = psutil.virtual_memory()
    return [
        cpu_finding(
            cpu_use(sample_s), os.getloadavg()[1], os.cpu_count() or 1, cpu_warn_pct, sample_s
        ),
        Finding(
            Check.HOST_MEMORY,
            level(mem.percent, mem_warn_pct, mem_crit_pct),
            f"{mem.percent:.0f}% of {mem.total / 2**30:.1f} GiB in use",
            value=mem.percent,
            threshold=f"WARN >= {mem_warn_pct:g}%, CRIT >= {mem_crit_pct:g}%",
        ),
    ]


def cpu_finding(use: CpuUse, load5: float, cores: int, warn_pct: float, window_s: float):
    """WARN when the CPU is busy at or over `warn_pct` now (`use`) and over the last 5 minutes
    (the 5-minute load average per core); a burst alone is OK, said so. Whose CPU it is, said."""
    sustained = use.busy_pct >= warn_pct and 100 * load5 / cores >= warn_pct
    whose = (
        f"PostgreSQL's processes {use.postgres_pct:.0f}%, other programs {use.others_pct:.0f}%"
        + (": the load is not the database's" if use.others_pct > use.postgres_pct else "")
    )
    burst = "" if sustained or use.busy_pct < warn_pct else " (a burst, not sustained)"
    return Finding(
        Check.HOST_CPU,
        Status.WARN if sustained else Status.OK,
        f"{use.busy_pct:.0f}% busy over {window_s:g} s ({whose}){burst}; 5-minute load"
        f" {load5:.2f} on {cores} cores",
        value=round(use.busy_pct, 1),
        threshold=f"WARN >= {warn_pct:g}% now and over 5 minutes",
    )


@dataclass(frozen=True)
class CpuUse:
    """The host's CPU over a window, in % of all its cores, and whose it was."""

    busy_pct: float
    postgres_pct: float
    others_pct: float


def cpu_use(window_s: float) -> CpuUse:
    """Measured over `window_s`: the host's busy share (the kernel's counters) and the share of
    it spent by processes named postgres (the server and its backends) against the rest."""

    def per_process() -> dict[int, tuple[str, float]]:
        found = {}
        for p in psutil.process_iter(["name", "cpu_times"]):
            times = p.info["cpu_times"]
            if times is not None:
                found[p.pid] = (p.info["name"] or "", times.user + times.system)
        return found

    before, total0 = per_process(), psutil.cpu_times()
    time.sleep(window_s)
    after, total1 = per_process(), psutil.cpu_times()
    spent = sum(total1) - sum(total0) or 1e-9  # every core's time that passed

    def idle(t) -> float:
        return t.idle + getattr(t, "iowait", 0.0)

    busy = min(100.0, max(0.0, 100 * (1 - (idle(total1) - idle(total0)) / spent)))
    postgres = sum(
        t - before[pid][1]
        for pid, (name, t) in after.items()
        if pid in before and name in ("postgres", "postmaster")
    )
    postgres_pct = min(busy, 100 * postgres / spent)
    return CpuUse(busy, postgres_pct, max(0.0, busy - postgres_pct))


def plot(findings: list[Finding]):
    """Every check as one coloured row (its status), with the figure it measured and its
    threshold."""
    from matplotlib.figure import Figure  # here: spares matplotlib (~450 ms) at start-up

    fig = Figure(figsize=(9, 0.45 + 0.32 * len(findings)), layout="constrained")
    ax = fig.subplots()
    for i, f in enumerate(findings):
        ax.barh(i, 1, color=STATUS_COLOURS[f.status.name])
        figure = (
            f"{f.value:g}"
            if isinstance(f.value, (int, float)) and not isinstance(f.value, bool)
            else ""
        )
        ax.text(
            0.02, i, f"{f.check}: {f.status.name} {figure}", va="center", color="white", fontsize=9
        )
        ax.text(1.02, i, f.threshold or "", va="center", fontsize=8, color="#57606a")
    ax.set_ylim(len(findings) - 0.5, -0.5)
    ax.set_xlim(0, 1.9)
    ax.axis("off")
    ax.set_title("Health checks: status, figure and threshold", loc="left")
    return fig


# -- output for other tools ------------------------------------------------------------------------


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", " ")


def _run_lines(name: str, *, up: bool, status: Status, at: float) -> list[str]:
    """What every file says of the run itself: whether it reached the server and finished, when
    it was written (an old file is a stale one: alert on its age), and its worst status."""
    label = f'{{target="{_label(name)}"}}'
    return [
        "# HELP pgrunbook_up 1: the run reached the server and finished its checks; 0: it did not.",
        "# TYPE pgrunbook_up gauge",
        f"pgrunbook_up{label} {int(up)}",
        "# HELP pgrunbook_last_run_timestamp_seconds When the run wrote this file (Unix time).",
        "# TYPE pgrunbook_last_run_timestamp_seconds gauge",
        f"pgrunbook_last_run_timestamp_seconds{label} {at:.3f}",
        "# HELP pgrunbook_run_status The run's worst status: 0 OK, 1 WARN, 2 CRIT, 3 UNKNOWN.",
        "# TYPE pgrunbook_run_status gauge",
        f"pgrunbook_run_status{label} {int(status)}",
    ]


def prometheus_text(findings: list[Finding], target: Target) -> str:
    """The findings in Prometheus text format: the run (up, when, its status), a status gauge
    per check, and its figure where numeric."""
    import time

    lines = _run_lines(
        target.name, up=True, status=worst(f.status for f in findings), at=time.time()
    )
    lines += [
        "# HELP pgrunbook_health_status Check status: 0 OK, 1 WARN, 2 CRIT, 3 UNKNOWN.",
        "# TYPE pgrunbook_health_status gauge",
    ]
    for f in findings:
        lines.append(
            f'pgrunbook_health_status{{target="{_label(target.name)}",check="{_label(f.check)}"}} '
            f"{int(f.status)}"
        )
    lines += [
        "# HELP pgrunbook_health_value The figure each check measured (see its threshold).",
        "# TYPE pgrunbook_health_value gauge",
    ]
    for f in findings:
        if isinstance(f.value, (int, float)) and not isinstance(f.value, bool):
            lines.append(
                f'pgrunbook_health_value{{target="{_label(target.name)}",check="{_label(f.check)}"}}'
                f" {f.value}"
            )
    return "\n".join(lines) + "\n"


def summary(findings: list[Finding], target: Target) -> dict:
    from datetime import UTC, datetime

    return {
        "target": target.name,
        "up": True,
        "at": datetime.now(UTC).isoformat(timespec="seconds"),
        "status": worst(f.status for f in findings).name,
        "checks": [f.to_dict() for f in findings],
    }


def write_down(target: str, values: dict, reason: str, *, since: float) -> list[str]:
    """The monitoring files of a run that did not write them (the server down, the run failed):
    `pgrunbook_up 0`, now, status UNKNOWN, and why, so that the last good run's files are never
    read as today's. A file this run wrote already (after `since`) is left; a path that is not
    acceptable (see `output_path`) is skipped: the run refuses it anyway. What was written."""
    import time
    from datetime import UTC, datetime

    from ..base.secrets import redact

    now, written = time.time(), []
    for parameter, make, mode in (
        ("prometheus_file", lambda: "\n".join(
            _run_lines(target, up=False, status=Status.UNKNOWN, at=now)) + "\n", 0o644),
        ("json_file", lambda: json.dumps({
            "target": target, "up": False,
            "at": datetime.fromtimestamp(now, UTC).isoformat(timespec="seconds"),
            "status": Status.UNKNOWN.name, "reason": redact(reason), "checks": [],
        }, indent=1) + "\n", FILE_MODE),
    ):  # fmt: skip
        try:
            path = output_path(parameter, str(values.get(parameter) or ""))
        except UnknownParameter:
            continue
        if path is None or (path.exists() and path.stat().st_mtime >= since):
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(path, make(), mode=mode)
        written.append(str(path))
    return written


def output_path(parameter: str, name: str) -> Path | None:
    """Where an output file may go: an absolute path outside pgrunbook's own folders (the archive,
    the backups, the state and the project), so that a mistyped path never overwrites a record.
    None for an empty name; UnknownParameter (bad input) otherwise."""
    if not name:
        return None
    path = Path(name)
    if not path.is_absolute():
        raise UnknownParameter(
            f"{parameter} {name!r} is relative: give an absolute path (the runbook runs in "
            "its own folder, so a relative one would land somewhere unexpected)"
        )
    path = Path(os.path.realpath(path))
    s = config.settings()
    for place, what in (
        (s.reports_dir, "the archive"),
        (s.backups_dir, "the backups"),
        (s.state_dir, "pgrunbook's state"),
        (s.home, "the project"),
    ):
        if path == Path(os.path.realpath(place)) or Path(os.path.realpath(place)) in path.parents:
            raise UnknownParameter(
                f"{parameter} {name!r} is inside {what} ({place}): write it elsewhere, "
                "for example node_exporter's textfile folder"
            )
    if path.is_dir():
        raise UnknownParameter(f"{parameter} {name!r} is a folder: give a file name")
    return path


def export(
    findings: list[Finding], target: Target, *, prometheus_file: str = "", json_file: str = ""
) -> Finding:
    """Write the figures where asked (see `output_path`); say where."""
    output_path("prometheus_file", prometheus_file)
    output_path("json_file", json_file)
    written = []
    # node_exporter runs as its own user and reads figures only: that file is 0644; the JSON
    # carries findings' examples (query text) and stays private
    for name, text, mode in (
        (prometheus_file, lambda: prometheus_text(findings, target), 0o644),
        (
            json_file,
            lambda: json.dumps(summary(findings, target), indent=1, default=str) + "\n",
            FILE_MODE,
        ),
    ):
        if name:  # written beside, then renamed: a collector never reads half a file
            Path(name).parent.mkdir(parents=True, exist_ok=True)
            write_atomic(Path(name), text(), mode=mode)
            written.append(name)
    return Finding(
        Check.EXPORT,
        Status.OK,
        (
            f"written to {', '.join(written)}"
            if written
            else "nothing written (no prometheus_file or json_file)"
        ),
    )


def archiving(
    conn: psycopg.Connection,
    *,
    warn_s: float = DEFAULTS.archive_wait_warn_s,
    crit_s: float = DEFAULTS.archive_wait_crit_s,
) -> Finding:
    """Continuous WAL archiving, as part of the RPO (see `recovery.archiving`)."""
    return recovery.archiving(wal.archiving(conn), warn_s=warn_s, crit_s=crit_s)

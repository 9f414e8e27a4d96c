"""The runner: execute a runbook through papermill and archive the result.

`run()` checks everything it can before starting (runbook, parameters,
target, connection), so that bad input changes nothing. Once started, a run
is always archived, failed or not: the executed notebook with its metadata,
an HTML copy, and a line in the index with both files' sha256.
"""

from __future__ import annotations

import ast
import contextlib
import difflib
import getpass
import math
import os
import re
import shutil
import socket
import sys
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from .. import __version__
from ..base import config, db, targets
from ..base import progress as progress_readings
from ..base.errors import ArchiveFailed, ConnectionFailed, UnknownParameter, UnknownRunbook
from ..base.fileio import (
    claim_of,
    create_private,
    private_dir,
    sha256_file,
    socket_dir,
    write_atomic,
)
from ..base.findings import RUNNER_ENV, Finding, Status, first_step, read_recorded, steps
from ..base.secrets import redact, redact_document
from ..facts import backups
from ..procedures import swaps
from . import alerts, console, guards, shared, site

RESERVED = {"target"}
FLEET_ENV = "PGRUNBOOK_FLEET"  # set by a fleet run: each target's run is filed under it
_TRUE = {"true", "yes", "on", "1"}
_FALSE = {"false", "no", "off", "0"}


_SPEC = re.compile(r"^\s*(\[[^\]]*\]|\{[^}]*\})\s*")


@dataclass(frozen=True)
class Parameter:
    """A runbook parameter as its `parameters` cell declares it.

    The help comment may open with what the value may be: `[a|b|c]` one of
    those words, `{a,b,c}` a comma-separated set of them, `[lo..hi]` a number
    in that range (either end may be left open).
    """

    name: str
    type: str
    default: str
    help: str

    @property
    def spec(self) -> str:
        m = _SPEC.match(self.help or "")
        return m[1] if m else ""

    @property
    def choices(self) -> tuple[str, ...]:
        s = self.spec
        if s.startswith("[") and ".." not in s:
            return tuple(c.strip() for c in s[1:-1].split("|") if c.strip())
        return ()

    @property
    def members(self) -> tuple[str, ...]:
        s = self.spec
        return (
            tuple(c.strip() for c in s[1:-1].split(",") if c.strip()) if s.startswith("{") else ()
        )

    @property
    def bounds(self) -> tuple[float | None, float | None]:
        s = self.spec
        if not (s.startswith("[") and ".." in s):
            return None, None
        low, high = (x.strip() for x in s[1:-1].split("..", 1))
        return (float(low) if low else None), (float(high) if high else None)

    def check(self, runbook: str, value: Any) -> None:
        """Refuse a value outside what the parameter declares (one line saying what it may be)."""

        def refuse(what: str) -> None:
            raise UnknownParameter(f"parameter {self.name!r} of {runbook!r} {what}, not {value!r}")

        if isinstance(value, float) and not math.isfinite(value):
            refuse("takes a finite number")
        if self.choices and value not in self.choices:
            close = difflib.get_close_matches(str(value), self.choices, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            refuse(f"takes one of {', '.join(self.choices)}{hint}")
        if self.members:
            given = [v.strip() for v in str(value).split(",") if v.strip()]
            wrong = [v for v in given if v not in self.members]
            if wrong or not given:
                close = difflib.get_close_matches(wrong[0], self.members, n=1) if wrong else []
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                refuse(f"takes a comma-separated set of {', '.join(self.members)}{hint}")
        low, high = self.bounds
        if (low is not None and value < low) or (high is not None and value > high):
            span = f"from {low:g}" if low is not None else ""
            span += (" " if span else "") + (f"to {high:g}" if high is not None else "or more")
            refuse(f"takes a number {span}")


@dataclass(frozen=True)
class RunResult:
    runbook: str
    target: str
    notebook: Path
    html: Path
    outcome: str
    exit_code: int
    findings: list[Finding] = field(default_factory=list)
    error: str | None = None
    duration_s: float = 0.0
    written: dict[str, str] = field(default_factory=dict)
    alerts: list[str] = field(default_factory=list)  # what was not delivered (a channel down)
    stopped: str = ""  # why a runbook stopped at a gate, as planned (before changing anything)


def available() -> list[str]:
    """Names of the runbooks in runbooks/."""
    return sorted(p.stem for p in config.settings().runbooks_dir.glob("*.ipynb"))


def notebook_path(runbook: str) -> Path:
    path = config.settings().runbooks_dir / f"{runbook}.ipynb"
    if not path.is_file():
        close = difflib.get_close_matches(runbook, available(), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise UnknownRunbook(
            f"unknown runbook {runbook!r}{hint}: `pgrunbook list` shows the {len(available())}"
            " there are"
        )
    return path


def parameters(runbook: str) -> dict[str, Parameter]:
    """The runbook's parameters as its `parameters` cell declares them."""
    from papermill.inspection import (
        inspect_notebook,
    )  # here: spares papermill (~320 ms) at start-up

    found = inspect_notebook(str(notebook_path(runbook)))
    return {
        n: Parameter(n, p["inferred_type_name"], p["default"], p["help"]) for n, p in found.items()
    }


def purpose(runbook: str) -> str:
    """First line of the runbook's description (its first markdown cell, after the title)."""
    import nbformat  # here: spares nbformat (~100 ms) at start-up

    nb = nbformat.read(notebook_path(runbook), as_version=4)
    for cell in nb.cells:
        if cell.cell_type == "markdown":
            lines = [line.strip() for line in cell.source.splitlines() if line.strip()]
            body = [line for line in lines if not line.startswith("#")]
            return body[0] if body else lines[0].lstrip("# ")
    return ""


def title(runbook: str) -> str:
    """The runbook's title (its first heading), without the '#'."""
    import nbformat  # here: spares nbformat (~100 ms) at start-up

    nb = nbformat.read(notebook_path(runbook), as_version=4)
    for cell in nb.cells:
        if cell.cell_type == "markdown":
            for line in cell.source.splitlines():
                if line.startswith("#"):
                    return line.lstrip("# ").strip()
    return runbook


def coerce(
    runbook: str, given: dict[str, str], declared: dict[str, Parameter] | None = None
) -> dict[str, Any]:
    """Check `given` (NAME -> text) against the declared parameters and convert each value."""
    declared = parameters(runbook) if declared is None else declared
    values: dict[str, Any] = {}
    for name, text in given.items():
        if name in RESERVED:
            raise UnknownParameter(f"pass the target with --target, not -p {name}")
        if name not in declared:
            close = difflib.get_close_matches(name, declared, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            names = ", ".join(n for n in declared if n not in RESERVED)
            raise UnknownParameter(
                f"runbook {runbook!r} has no parameter {name!r}{hint}; it takes: {names}"
            )
        values[name] = _convert(runbook, declared[name], str(text))
        declared[name].check(runbook, values[name])
    return values


def defaults(declared: dict[str, Parameter]) -> dict[str, Any]:
    """Each parameter's default value, as the parameters cell writes it."""

    return {name: ast.literal_eval(p.default) for name, p in declared.items()}


def _convert(runbook: str, p: Parameter, text: str) -> Any:
    if redact(text) != text or "://" in text:
        raise UnknownParameter(
            f"parameter {p.name!r} looks like a connection URL or secret: runbooks take a target "
            "name, and secrets stay in environment variables"
        )
    try:
        if p.type == "int":
            return int(text)
        if p.type == "float":
            return float(text)
        if p.type == "bool":
            if text.lower() in _TRUE | _FALSE:
                return text.lower() in _TRUE
            raise ValueError
    except ValueError:
        raise UnknownParameter(
            f"parameter {p.name!r} of {runbook!r} takes {p.type}, not {text!r} (default"
            f" {p.default})"
        ) from None
    return text


def _report_path(runbook: str, target: str, started: datetime) -> Path:
    """A report name no other run has, claimed (see `claim_of`) by this process."""
    folder = private_dir(config.settings().reports_dir / runbook)
    stem = f"{started:%Y%m%dT%H%M%SZ}_{target}"
    for n in range(1000):
        path = folder / (f"{stem}.ipynb" if n == 0 else f"{stem}-{n}.ipynb")
        if path.exists():
            continue
        try:
            create_private(claim_of(path))
        except FileExistsError:
            continue
        if path.exists():  # archived between the look and the claim
            claim_of(path).unlink()
            continue
        try:  # who holds it, for cleanup later; a full disk leaves the claim empty
            claim_of(path).write_text(f"{socket.gethostname()} {os.getpid()}\n")
        except OSError:
            pass
        return path
    raise RuntimeError(f"too many reports named {stem} in {folder}")


def run(
    runbook: str,
    target: str,
    given: dict[str, str] | None = None,
    *,
    incident: str | None = None,
    progress: bool = True,
    fleet: str | None = None,
) -> RunResult:
    """Run `runbook` against `target` and archive it. Bad input raises before anything is
    written. `fleet`: the fleet run this run belongs to (filed under it in the index). Safe to
    call from several threads at once: a fleet runs its targets so."""
    source = notebook_path(runbook)
    declared = parameters(runbook)
    values = coerce(runbook, given or {}, declared)
    since = time.time()  # monitoring files not written after this are written as "down"
    if (repo := shared.repository()) is not None:  # out of reach, or a wrong key: before it runs
        shared.sync_index(repo)  # what every runner archived: this run's trends see it
        _push(repo)
    if "target" in declared:
        values["target"] = target
        t = targets.resolve(target)
        if recovered := swaps.recover(
            t
        ):  # before connecting: a crashed swap may have left the database away
            print(f"pgrunbook: {recovered}", file=sys.stderr)
        try:
            with db.connect(t, application=f"pgrunbook/{runbook}") as conn:
                version = db.server_version(conn)
                identity = backups.identity(conn, t)  # the database itself: its own history
                guards.before_run(runbook, t, {**defaults(declared), **values}, conn)
        except ConnectionFailed as e:  # a dead server must not leave the last "OK" in place,
            _monitoring_down(t.name, {**defaults(declared), **values}, str(e), since)
            if not (fleet or os.environ.get(FLEET_ENV)):  # nor go unheard (a fleet: its digest)
                for note in alerts.after_run(
                    {"target": t.name, "runbook": runbook, "outcome": "FAILED", "error": str(e),
                     "link": "no report: the run could not start"}, [], repo=repo,
                ):  # fmt: skip
                    print(f"pgrunbook: {note}", file=sys.stderr)
            raise
        if note := targets.fallback_note(t):  # once the input is accepted: a refusal is one line
            print(f"pgrunbook: {note}", file=sys.stderr)
        source_of, version_of, database_of = t.source, version, identity
    else:  # a runbook about the archive (the fleet report): no database to reach
        guards.before_run(runbook, None, {**defaults(declared), **values}, None)
        source_of, version_of, database_of = "the archive", "", None
    started = datetime.now(UTC)
    out = _report_path(runbook, target, started)
    # papermill writes as the run goes: into a private working copy, never the archive, so that a
    # killed run leaves nothing unredacted there (the next run names what it left: see debris)
    work = (
        private_dir(config.settings().state_dir / "running")
        / f"{os.getpid()}_{out.parent.name}_{out.name}"
    )
    error = _execute(source, work, values, progress=progress)
    ended = datetime.now(UTC)
    meta = {
        "runbook": runbook,
        "runbook_version": _runbook_version(source),
        "runbook_sha256": sha256_file(source),
        "pgrunbook_version": __version__,
        "parameters": values,
        "parameters_changed": {
            k: v for k, v in values.items() if k != "target" and v != defaults(declared).get(k)
        },
        "target": target,
        "target_source": source_of,
        "server_version": version_of,
        "database": database_of,
        "fleet": fleet or os.environ.get(FLEET_ENV) or None,
        "operator": os.environ.get("PGRUNBOOK_OPERATOR") or getpass.getuser(),
        "host": socket.gethostname(),
        "incident": incident,
        "start": started.isoformat(timespec="seconds"),
        "end": ended.isoformat(timespec="seconds"),
        "duration_s": round((ended - started).total_seconds(), 3),
    }
    try:
        return _archive(work, out, meta, error, repo)
    except OSError as e:
        raise ArchiveFailed(_unarchived(work, meta, e)) from None
    finally:  # a run that failed before its figures were written: said so in them
        claim_of(out).unlink(missing_ok=True)
        why = error or "the run ended before it wrote its figures"
        _monitoring_down(target, {**defaults(declared), **values}, why, since)


def _push(repo) -> None:
    """What waits in this host's outbox goes up before the run; what stays is said, and the run
    goes on (its own report is what it is for)."""
    try:
        _, stays = shared.push(repo)
    except Exception as e:  # noqa: BLE001 - the run goes on; verify names what waits
        stays = [str(e).splitlines()[0] if str(e) else type(e).__name__]
    if stays:
        print(
            f"pgrunbook: {len(stays)} report(s) still wait to go up to {repo.url}: {stays[0]}",
            file=sys.stderr,
        )


def _planned_stop(nb) -> str:
    """Where a runbook stopped at a gate: its reason, the stopping cell's traceback replaced by
    that reason in words (the report shows why it stopped, not Python's stack)."""
    import nbformat  # here: spares nbformat (~100 ms) at start-up

    for cell in nb.cells:
        for n, out in enumerate(cell.get("outputs", [])):
            if out.get("output_type") == "error" and out.get("ename") == "RunbookStopped":
                reason = str(out.get("evalue", "")).strip()
                cell.outputs[n] = nbformat.v4.new_output(
                    "stream", name="stdout", text=f"Stopped here, as planned: {reason}\n"
                )
                return reason
    return ""


def first_steps(target: str, outcome: str, found: list[Finding]) -> list[dict[str, str]]:
    """What a report opens with when it is not OK: the worst findings first, each with the one
    thing to do (see findings.FIRST_STEPS); a failed run, what cleans up after it."""
    steps = []
    if outcome == "FAILED":
        steps.append({"status": "FAILED", "check": "the run", "do": first_step("the run", target)})
    for f in sorted(found, key=lambda f: -f.status.severity):
        if f.status in (Status.CRIT, Status.WARN) and (do := first_step(f.check, target)):
            steps.append({"status": f.status.name, "check": f.check, "do": do})
    return steps[:5]


FLEET_REPORT = "fleet_report"  # its run alerts for the whole fleet (see alerts.decide)


def _alert_run(meta: dict[str, Any], out: Path) -> dict[str, Any]:
    """What an alert says of the run, and the link to its report (`site_url` in [notify], else
    the report's path)."""
    root = config.settings().reports_dir
    page = out.with_suffix(".html")
    site = str(config.settings().notify.get("site_url", "")).rstrip("/")
    link = f"{site}/{page.relative_to(root).as_posix()}" if site else str(page)
    run = {k: meta.get(k) for k in ("target", "runbook", "outcome", "error")} | {"link": link}
    if meta["runbook"] == FLEET_REPORT and meta.get("parameters", {}).get("fleet_run"):
        from ..facts import history

        done = history.fleet_run(meta["parameters"]["fleet_run"])
        run |= {"members_runbook": done["runbook"], "members": [r["target"] for r in done["runs"]]}
    elif meta.get("fleet"):
        run["in_fleet"] = True
    return run


def _monitoring_down(target: str, values: dict[str, Any], reason: str, since: float) -> None:
    if not (values.get("prometheus_file") or values.get("json_file")):
        return
    from ..checks import health  # here: only runs that write monitoring files need it

    try:
        health.write_down(target, values, reason, since=since)
    except OSError as e:
        print(f"pgrunbook: the monitoring files were not written: {e}", file=sys.stderr)


def _unarchived(work: Path, meta: dict[str, Any], error: OSError) -> str:
    """What to say when a finished run cannot be archived: what it did, and where its notebook
    is."""
    payload = read_recorded(_read_or_empty(work)) or {}
    said = [f"{f['status']} {f['check']}: {f['summary']}" for f in payload.get("findings", [])]
    outcome = payload.get("outcome", "FAILED")
    return redact(
        f"{meta['runbook']} on {meta['target']} ended {outcome} but its report could not be"
        f" archived ({error.strerror or error}): the executed notebook is kept at {work}; what the"
        " run did and found:\n" + "\n".join(f"  {line}" for line in said)
    )


def _execute(source: Path, out: Path, values: dict[str, Any], *, progress: bool) -> str | None:
    """Run the notebook into `out`; the error that stopped it, if any."""
    import papermill  # here: spares papermill (~320 ms) at start-up
    from papermill.exceptions import (
        PapermillExecutionError,
    )  # here: spares papermill (~320 ms) at start-up

    # the kernel's own environment, not this process's: runs in other threads keep theirs
    env = {**os.environ, RUNNER_ENV: "1", "PGRUNBOOK_HOME": str(config.settings().home)}
    sockets = socket_dir("pgrb-k-", "kernel-99")
    contexts: list = []  # every ZeroMQ context the run's kernel manager and client use
    opened: list = []  # the kernel's log, open while it runs
    readings = Path(sockets) / "progress.jsonl"
    if progress:  # a person at a terminal: the step and the bytes a dump or restore moves
        env[progress_readings.ENV] = str(readings)
    shown = console.Display(out, readings, sys.stderr) if progress else contextlib.nullcontext()
    try:
        with shown:
            papermill.execute_notebook(
                str(source),
                str(out),
                parameters=values,
                progress_bar=False,
                cwd=str(source.parent),
                log_output=False,
                kernel_manager_class=_ipc_kernel_manager(sockets, env, contexts, opened),
            )
        return None
    except PapermillExecutionError as e:
        return redact(f"cell {e.exec_count}: {e.ename}: {e.evalue}".strip())
    except KeyboardInterrupt:
        return "interrupted by the operator"
    except Exception as e:  # the kernel died or could not start: still archived as failed
        said = _last_line(Path(sockets) / KERNEL_LOG)
        return redact(
            f"{type(e).__name__}: {e}".splitlines()[0] + (f" (kernel: {said})" if said else "")
        )
    finally:
        for context in contexts:  # closed here, never by the garbage collector: see below
            if not context.closed:
                context.destroy(linger=0)
        for f in opened:
            f.close()
        shutil.rmtree(sockets, ignore_errors=True)


KERNEL_LOG = "kernel.log"  # the kernel's own stdout and stderr, in the run's socket folder


def _last_line(log: Path) -> str:
    try:
        lines = [x for x in log.read_text(errors="replace").splitlines() if x.strip()]
    except OSError:
        return ""
    return lines[-1].strip()[:300] if lines else ""


def _ipc_kernel_manager(sockets: str, env: dict[str, str], contexts: list, opened: list):
    """A kernel manager on Unix sockets in the private folder `sockets`: query results never cross a
    TCP port, and runs started together never share a socket (jupyter_client's default, kernel-ipc-N
    in the working folder, is picked by which files exist and so collides). The kernel starts with
    `env`, its stdout and stderr into the folder's kernel.log (`opened`, for the run to close):
    not onto this process's terminal, where runs side by side would mix, and where its routine
    shutdown notice ("KeyboardInterrupt caught in kernel": a shutdown interrupts it first) reads
    as an error.

    The manager's and the client's ZeroMQ contexts go into `contexts` for the run to close: a
    context left to the garbage collector in a reference cycle with its sockets hangs the
    process for good (its finalizer waits in `term()` for sockets the same collection has not
    closed yet; jupyter_client#482), which happened at random under load."""
    import zmq.asyncio  # here: spares pyzmq at start-up
    from jupyter_client.manager import AsyncKernelManager  # here: spares jupyter_client at start-up

    class IPCKernelManager(AsyncKernelManager):
        def __init__(self, **kwargs):
            kwargs.setdefault("transport", "ipc")
            kwargs.setdefault("ip", os.path.join(sockets, "kernel"))
            super().__init__(**kwargs)
            contexts.append(self.context)

        def client(self, **kwargs):
            context = zmq.asyncio.Context()
            contexts.append(context)
            kwargs.setdefault("context", context)
            return super().client(**kwargs)

        async def start_kernel(self, **kwargs):
            kwargs.setdefault("env", env)
            log = open(os.path.join(sockets, KERNEL_LOG), "ab")  # noqa: SIM115  closed by the run
            opened.append(log)
            kwargs.setdefault("stdout", log)
            kwargs.setdefault("stderr", log)
            return await super().start_kernel(**kwargs)

    return IPCKernelManager


def _archive(
    work: Path, out: Path, meta: dict[str, Any], error: str | None, repo: object = shared.LOOK
) -> RunResult:
    """Redact the working copy into the archive (notebook, HTML, index line), then remove it."""
    import nbformat  # here: spares nbformat (~100 ms) at start-up

    nb = _read_or_empty(work)
    warnings = _take_stderr(nb)
    payload = read_recorded(nb)
    found = [Finding.from_dict(d) for d in (payload or {}).get("findings", [])]
    stopped = bool(error) and "RunbookStopped" in error  # at a gate, its findings recorded
    halt = _planned_stop(nb) if stopped else ""
    if halt:  # a planned stop is the reason it says, not a traceback nor a failure
        error = None
    if payload is None or (error and payload["outcome"] != "CRIT" and not stopped):
        outcome, code = "FAILED", Status.UNKNOWN.value
        error = error or "the runbook ended without recording its findings"
    else:  # finished, or stopped at a CRIT gate after recording its findings
        outcome, code = payload["outcome"], Status[payload["outcome"]].value
    made_by = steps(nb)
    meta.update(
        outcome=outcome,
        exit_code=code,
        error=error,
        findings=[
            {**f.to_dict(), **dict(zip(("step", "anchor"), made_by.get(n, ()), strict=False))}
            for n, f in enumerate(found)
        ],
        warnings=warnings,
        stopped=halt or None,
        written=(payload or {}).get("written", {}),
        summary={s.name: sum(f.status is s for f in found) for s in Status},
    )
    meta["first_steps"] = first_steps(meta["target"], outcome, found)
    notes = alerts.after_run(_alert_run(meta, out), found, repo=repo)
    if notes:  # said in the report; the run's verdict stays its own
        meta["alerts"] = notes
        nb.cells.append(
            nbformat.v4.new_markdown_cell("## Alerts\n\n" + "\n".join(f"- {n}" for n in notes))
        )
    nb.metadata["pgrunbook"] = meta
    text = redact_document(nbformat.writes(nb))
    write_atomic(out, text)
    html_path = out.with_suffix(".html")
    write_atomic(html_path, redact_document(_html(nbformat.reads(text, as_version=4))))
    shared.archive_run(meta, out, html_path, repo)
    work.unlink(missing_ok=True)
    try:
        site.build(full=False)  # the archive's front page lists this run now
    except OSError as e:  # the run is archived and indexed: the page waits for the next build
        print(f"pgrunbook: the archive's index.html was not updated: {e}", file=sys.stderr)
    return RunResult(
        meta["runbook"],
        meta["target"],
        out,
        html_path,
        outcome,
        code,
        found,
        error,
        meta["duration_s"],
        meta["written"],
        notes,
        halt,
    )


def _take_stderr(nb) -> list[dict[str, Any]]:
    """Move what cells wrote to stderr (library warnings, mostly) out of the reader's way: into
    the run's metadata, with the step's cell number."""
    taken = []
    for n, cell in enumerate(nb.cells):
        outputs = cell.get("outputs", [])
        kept = [o for o in outputs if not (o.output_type == "stream" and o.name == "stderr")]
        if len(kept) != len(outputs):
            text = "".join(o.text for o in outputs if o not in kept)
            taken.append({"cell": n, "text": text})
            cell.outputs = kept
    return taken


def _read_or_empty(path: Path):
    import nbformat  # here: spares nbformat (~100 ms) at start-up

    try:
        return nbformat.read(path, as_version=4)
    except Exception:  # the run died before papermill wrote anything readable
        return nbformat.v4.new_notebook()


_exporter = None
_exporter_lock = threading.Lock()  # one exporter, its filters set per notebook: one at a time


TEMPLATES = Path(__file__).resolve().parent / "templates"


def _html(nb) -> str:
    """The report as a person reads it: the project's nbconvert template (templates/pgrunbook),
    a title naming runbook, target, time and outcome, no prompts."""
    global _exporter
    run = nb.metadata.get("pgrunbook", {})
    if run:
        nb.metadata["title"] = (
            f"{run['runbook']} on {run['target']},"
            f" {run['start'][:19].replace('T', ' ')} UTC: {run['outcome']}"
        )
    with _exporter_lock:
        if _exporter is None:
            from nbconvert import HTMLExporter  # here: spares nbconvert (~390 ms) at start-up

            _exporter = HTMLExporter(
                template_name="pgrunbook",
                extra_template_basedirs=[str(TEMPLATES)],
                exclude_input_prompt=True,
                exclude_output_prompt=True,
            )
        body, _ = _exporter.from_notebook_node(nb)
    return body


def _runbook_version(source: Path) -> str:
    import nbformat  # here: spares nbformat (~100 ms) at start-up

    nb = nbformat.read(source, as_version=4)
    return str(nb.metadata.get("pgrunbook", {}).get("version", "0"))

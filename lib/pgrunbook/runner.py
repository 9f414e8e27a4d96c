"""The runner: execute a runbook through papermill and archive the result.

`run()` checks everything it can before starting (runbook, parameters,
target, connection), so that bad input changes nothing. Once started, a run
is always archived, failed or not: the executed notebook with its metadata,
an HTML copy, and a line in the index with both files' sha256.
"""

from __future__ import annotations

import difflib
import getpass
import os
import socket
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from . import __version__, config, db, reports, targets
from .errors import UnknownParameter, UnknownRunbook
from .fileio import sha256_file, write_atomic
from .findings import RUNNER_ENV, Finding, Status, read_recorded
from .secrets import redact, redact_document

RESERVED = {"target"}
_TRUE = {"true", "yes", "on", "1"}
_FALSE = {"false", "no", "off", "0"}


@dataclass(frozen=True)
class Parameter:
    name: str
    type: str
    default: str
    help: str


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


def available() -> list[str]:
    """Names of the runbooks in runbooks/."""
    return sorted(p.stem for p in config.settings().runbooks_dir.glob("*.ipynb"))


def notebook_path(runbook: str) -> Path:
    path = config.settings().runbooks_dir / f"{runbook}.ipynb"
    if not path.is_file():
        close = difflib.get_close_matches(runbook, available(), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise UnknownRunbook(
            f"unknown runbook {runbook!r}{hint}: `pgrunbook list` shows the {len(available())} there are"
        )
    return path


def parameters(runbook: str) -> dict[str, Parameter]:
    """The runbook's parameters as its `parameters` cell declares them."""
    from papermill.inspection import inspect_notebook

    found = inspect_notebook(str(notebook_path(runbook)))
    return {n: Parameter(n, p["inferred_type_name"], p["default"], p["help"]) for n, p in found.items()}


def purpose(runbook: str) -> str:
    """First line of the runbook's description (its first markdown cell, after the title)."""
    import nbformat

    nb = nbformat.read(notebook_path(runbook), as_version=4)
    for cell in nb.cells:
        if cell.cell_type == "markdown":
            lines = [line.strip() for line in cell.source.splitlines() if line.strip()]
            body = [line for line in lines if not line.startswith("#")]
            return body[0] if body else lines[0].lstrip("# ")
    return ""


def coerce(runbook: str, given: dict[str, str], declared: dict[str, Parameter] | None = None) -> dict[str, Any]:
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
            raise UnknownParameter(f"runbook {runbook!r} has no parameter {name!r}{hint}; it takes: {names}")
        values[name] = _convert(runbook, declared[name], str(text))
    return values


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
            f"parameter {p.name!r} of {runbook!r} takes {p.type}, not {text!r} (default {p.default})"
        ) from None
    return text


def _report_path(runbook: str, target: str, started: datetime) -> Path:
    folder = config.settings().reports_dir / runbook
    folder.mkdir(parents=True, exist_ok=True)
    stem = f"{started:%Y%m%dT%H%M%SZ}_{target}"
    for n in range(1000):
        path = folder / (f"{stem}.ipynb" if n == 0 else f"{stem}-{n}.ipynb")
        try:
            path.touch(exist_ok=False)
            return path
        except FileExistsError:
            continue
    raise RuntimeError(f"too many reports named {stem} in {folder}")


def run(
    runbook: str,
    target: str,
    given: dict[str, str] | None = None,
    *,
    incident: str | None = None,
    progress: bool = True,
) -> RunResult:
    """Run `runbook` against `target` and archive it. Bad input raises before anything is written."""
    source = notebook_path(runbook)
    declared = parameters(runbook)
    values = coerce(runbook, given or {}, declared)
    if "target" in declared:
        values["target"] = target
    t = targets.resolve(target)
    with db.connect(t, application=f"pgrunbook/{runbook}") as conn:
        version = db.server_version(conn)
    started = datetime.now(timezone.utc)
    out = _report_path(runbook, target, started)
    error = _execute(source, out, values, progress=progress)
    ended = datetime.now(timezone.utc)
    meta = {
        "runbook": runbook,
        "runbook_version": _runbook_version(source),
        "runbook_sha256": sha256_file(source),
        "pgrunbook_version": __version__,
        "parameters": values,
        "target": target,
        "target_source": t.source,
        "server_version": version,
        "operator": os.environ.get("PGRUNBOOK_OPERATOR") or getpass.getuser(),
        "host": socket.gethostname(),
        "incident": incident,
        "start": started.isoformat(timespec="seconds"),
        "end": ended.isoformat(timespec="seconds"),
        "duration_s": round((ended - started).total_seconds(), 3),
    }
    return _archive(out, meta, error)


def _execute(source: Path, out: Path, values: dict[str, Any], *, progress: bool) -> str | None:
    """Run the notebook into `out`; the error that stopped it, if any."""
    import papermill
    from papermill.exceptions import PapermillExecutionError

    saved = {k: os.environ.get(k) for k in (RUNNER_ENV, "PGRUNBOOK_HOME")}
    os.environ[RUNNER_ENV] = "1"
    os.environ["PGRUNBOOK_HOME"] = str(config.settings().home)
    try:
        papermill.execute_notebook(
            str(source), str(out), parameters=values, progress_bar=progress,
            cwd=str(source.parent), log_output=False, kernel_manager_class=_ipc_kernel_manager(),
        )
        return None
    except PapermillExecutionError as e:
        return redact(f"cell {e.exec_count}: {e.ename}: {e.evalue}".strip())
    except KeyboardInterrupt:
        return "interrupted by the operator"
    except Exception as e:  # the kernel died or could not start: still archived as failed
        return redact(f"{type(e).__name__}: {e}".splitlines()[0])
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _ipc_kernel_manager():
    """A kernel manager on Unix sockets: query results never cross a TCP port."""
    from jupyter_client.manager import AsyncKernelManager

    class IPCKernelManager(AsyncKernelManager):
        def __init__(self, **kwargs):
            kwargs.setdefault("transport", "ipc")
            super().__init__(**kwargs)

    return IPCKernelManager


def _archive(out: Path, meta: dict[str, Any], error: str | None) -> RunResult:
    import nbformat

    nb = _read_or_empty(out)
    payload = read_recorded(nb)
    found = [Finding.from_dict(d) for d in (payload or {}).get("findings", [])]
    if payload is None or (error and payload["outcome"] != "CRIT"):
        outcome, code = "FAILED", Status.UNKNOWN.value
        error = error or "the runbook ended without recording its findings"
    else:  # finished, or stopped at a CRIT gate after recording its findings
        outcome, code = payload["outcome"], Status[payload["outcome"]].value
    meta.update(outcome=outcome, exit_code=code, error=error,
                findings=[f.to_dict() for f in found],
                summary={s.name: sum(f.status is s for f in found) for s in Status})
    nb.metadata["pgrunbook"] = meta
    text = redact_document(nbformat.writes(nb))
    write_atomic(out, text)
    html_path = out.with_suffix(".html")
    write_atomic(html_path, redact_document(_html(nbformat.reads(text, as_version=4))))
    reports.append_index(meta, out, html_path)
    return RunResult(meta["runbook"], meta["target"], out, html_path, outcome, code, found, error,
                     meta["duration_s"])


def _read_or_empty(path: Path):
    import nbformat

    try:
        return nbformat.read(path, as_version=4)
    except Exception:  # the run died before papermill wrote anything readable
        return nbformat.v4.new_notebook()


_exporter = None


def _html(nb) -> str:
    global _exporter
    if _exporter is None:
        from nbconvert import HTMLExporter

        _exporter = HTMLExporter()
    body, _ = _exporter.from_notebook_node(nb)
    return body




def _runbook_version(source: Path) -> str:
    import nbformat

    nb = nbformat.read(source, as_version=4)
    return str(nb.metadata.get("pgrunbook", {}).get("version", "0"))

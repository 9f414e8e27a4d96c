"""The archive of executed runbooks and its index.

reports/index.jsonl holds one JSON line per run with the sha256 of the
report and its HTML copy. Each line also carries the sha256 of the line
before it, so an edited or deleted line breaks the chain and `verify` names
it, as it names a report whose bytes changed.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
from dataclasses import dataclass, field
from datetime import date, datetime
from pathlib import Path
from typing import Any

from . import config
from .errors import ReportNotFound
from .fileio import create_private, private_dir, sha256_file
from .secrets import redact

GENESIS = "0" * 64


def index_path() -> Path:
    return config.settings().reports_dir / "index.jsonl"


def _line_hash(line: str) -> str:
    return hashlib.sha256(line.rstrip("\n").encode()).hexdigest()


def append_index(meta: dict[str, Any], notebook: Path, html: Path) -> dict[str, Any]:
    """Add one run to the index (under an exclusive lock, so parallel runs chain correctly)."""
    root = config.settings().reports_dir
    path = index_path()
    private_dir(path.parent)
    if not path.exists():
        try:
            create_private(path)
        except FileExistsError:  # another run created it meanwhile
            pass
    with path.open("a+", encoding="utf-8") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        f.seek(0)
        lines = [line for line in f.read().splitlines() if line.strip()]
        entry = {
            "id": str(notebook.relative_to(root).with_suffix("")),
            **{k: meta[k] for k in ("runbook", "target", "outcome", "exit_code", "incident",
                                     "operator", "host", "start", "end", "duration_s")},
            "summary": meta.get("summary", {}),
            "files": {
                "ipynb": {"path": str(notebook.relative_to(root)), "sha256": sha256_file(notebook)},
                "html": {"path": str(html.relative_to(root)), "sha256": sha256_file(html)},
            },
            "prev": _line_hash(lines[-1]) if lines else GENESIS,
        }
        f.write(redact(json.dumps(entry, sort_keys=True)) + "\n")
        f.flush()
    return entry


def entries() -> list[dict[str, Any]]:
    """Every indexed run, oldest first."""
    path = index_path()
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


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
        return all((
            runbook is None or e["runbook"] == runbook,
            target is None or e["target"] == target,
            outcome is None or e["outcome"] == outcome.upper(),
            incident is None or e.get("incident") == incident,
            since is None or day >= since,
            until is None or day <= until,
        ))

    return [e for e in entries() if keep(e)]


def table(rows: list[dict[str, Any]]):
    """Runs as a DataFrame: one row each, newest last."""
    import pandas as pd

    cols = ["id", "runbook", "target", "outcome", "start", "duration_s", "incident", "operator"]
    return pd.DataFrame([{c: r.get(c) for c in cols} for r in rows], columns=cols)


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
    import nbformat

    entry = find(ref)
    path = config.settings().reports_dir / entry["files"]["ipynb"]["path"]
    if not path.exists():
        raise ReportNotFound(f"report {entry['id']} is indexed but its file is gone: {path}")
    return {**entry, **nbformat.read(path, as_version=4).metadata.get("pgrunbook", {})}


@dataclass
class Verification:
    checked: int = 0
    changed: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    broken_chain: list[int] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not (self.changed or self.missing or self.broken_chain)

    def lines(self) -> list[str]:
        out = [f"changed: {p}" for p in self.changed] + [f"missing: {p}" for p in self.missing]
        out += [f"index line {n} does not follow the line before it (edited or removed)"
                for n in self.broken_chain]
        verdict = "OK" if self.ok else "FAILED"
        return out + [f"{verdict}: {self.checked} files checked against {index_path()}"]


def verify() -> Verification:
    """Recompute every indexed file's sha256 and the index's chain of line hashes."""
    root = config.settings().reports_dir
    result = Verification()
    path = index_path()
    raw = path.read_text(encoding="utf-8").splitlines() if path.exists() else []
    prev = GENESIS
    for number, line in enumerate((line for line in raw if line.strip()), start=1):
        entry = json.loads(line)
        if entry.get("prev") != prev:
            result.broken_chain.append(number)
        prev = _line_hash(line)
        for info in entry["files"].values():
            file = root / info["path"]
            result.checked += 1
            if not file.exists():
                result.missing.append(info["path"])
            elif sha256_file(file) != info["sha256"]:
                result.changed.append(info["path"])
    return result

"""The archive as a site: reports/index.html, a page per incident and a page per target.

Static pages, relative links, filters in the page itself: they work from
file:// with no server. Every run rewrites index.html (the table only);
`pgrunbook reports site` writes every page, verifies every file first, and
draws each target's health figures across its runs.
"""

from __future__ import annotations

import functools
import hashlib
import json
import re
from datetime import datetime
from pathlib import Path
from typing import Any

from ..base import config
from ..base.display import pretty_number
from ..base.fileio import private_dir, write_atomic
from ..base.findings import Check
from ..facts import history
from . import reports

TEMPLATES = Path(__file__).resolve().parent / "templates" / "site"
FILTERS = ("runbook", "target", "outcome", "incident")
PAGES = "_site"
ROW_FIELDS = (  # what index.html's script needs of each run
    "id", "runbook", "target", "outcome", "incident", "start", "day", "duration", "html", "state",
    "target_page", "incident_page",
)  # fmt: skip  # the folder of the pages per incident and per target, beside index.html


def _environment():
    import jinja2  # here: spares Jinja2 at start-up; the reports CLI needs it only for the site

    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES),
        autoescape=jinja2.select_autoescape(enabled_extensions=("html", "j2")),
    )


@functools.lru_cache(maxsize=65536)
def _page_name(value: str) -> str:
    """A file name for a target or an incident: readable, and distinct for distinct names."""
    readable = re.sub(r"[^A-Za-z0-9._-]+", "_", value)[:60]
    return f"{readable}-{hashlib.sha256(value.encode()).hexdigest()[:8]}.html"


def _states_path() -> Path:
    return config.settings().state_dir / "site" / "verified.json"


def _states(check: reports.Verification | None) -> dict[str, str]:
    """Each indexed file's state as of the last full verification, saved for incremental builds."""
    path = _states_path()
    if check is None:
        try:
            return json.loads(path.read_text())["files"]
        except (OSError, ValueError, KeyError):
            return {}
    bad = {p: "changed" for p in check.changed} | {p: "missing" for p in check.missing}
    states = {
        f["path"]: bad.get(f["path"], "verified")
        for e in history.entries()
        for f in e.get("files", {}).values()
    }
    private_dir(path.parent)
    write_atomic(path, json.dumps({"at": datetime.now().astimezone().isoformat(), "files": states}))
    return states


def _row(entry: dict[str, Any], states: dict[str, str]) -> dict[str, Any]:
    files = entry.get("files", {})
    paths = [f["path"] for f in files.values()]
    found = [states.get(p, "unchecked") for p in paths]
    state = next((s for s in ("missing", "changed", "unchecked") if s in found), "verified")
    return {
        "id": entry["id"],
        "runbook": entry["runbook"],
        "target": entry["target"],
        "outcome": entry["outcome"],
        "incident": entry.get("incident") or "",
        "start": entry["start"][:19].replace("T", " "),
        "day": entry["start"][:10],
        "duration": f"{entry.get('duration_s', 0):.1f} s",
        "html": files.get("html", {}).get("path", ""),
        "state": state,
        "target_page": _page_name(entry["target"]),
        "incident_page": _page_name(entry["incident"]) if entry.get("incident") else "",
        "figures": entry.get("figures") or {},
        "thresholds": entry.get("thresholds") or {},
    }


WIDTH, HEIGHT = 600, 120  # a trend's drawing area, in the SVG's units

# the unit of each figure health records (its finding's value), as its chart names it
UNITS = {
    Check.STORAGE: "%", Check.HOST_CPU: "%", Check.HOST_MEMORY: "%",
    Check.LONG_TRANSACTIONS: "s", Check.IDLE_IN_TRANSACTION: "s", Check.REPLICATION: "s",
    Check.CONNECTIONS: "sessions", Check.SLOW_QUERIES: "queries",
    Check.XID_AGE: "transactions", Check.MULTIXACT_AGE: "multixacts",
}  # fmt: skip
# "WARN >= 80%", "CRIT >= 3600 s", "CRIT >= 1,400,000,000": a level, its number and unit
_LEVEL = re.compile(r"\b(WARN|CRIT)\s*(?:>=|>|<=|<)\s*(-?[\d,]*\.?\d+)\s*(%|ms|s|min|h)?")


def thresholds(text: str, unit: str) -> list[tuple[str, float]]:
    """The levels of a finding's threshold that are in the figure's own unit (a pool's WARN at
    80 % of it is not drawn on a chart of connections; its CRIT at 20 connections is)."""
    found = []
    for level, number, given in _LEVEL.findall(text or ""):
        if (given or "") == (unit if unit in ("%", "ms", "s", "min", "h") else ""):
            found.append((level, float(number.replace(",", ""))))
    return found


def _compact(v: float) -> str:
    """1.4 billion, 2.5 million, 12,345, 26.11: short enough for an axis."""
    for size, word in ((1e9, "billion"), (1e6, "million")):
        if abs(v) >= size:
            return f"{v / size:.3g} {word}"
    return pretty_number(v)


def _labelled(levels: list[tuple[str, float]], y) -> list[dict[str, str]]:
    """Each level's line and label; a label too close to the one above moves down a line."""
    drawn, last = [], None
    for level, n in sorted(levels, key=lambda x: y(x[1])):
        at = y(n)
        text_at = at + 4 if last is None or at + 4 - last >= 12 else last + 12
        drawn.append(
            {"level": level, "y": f"{at:.1f}", "text_y": f"{text_at:.1f}",
             "label": f"{level} {_compact(n)}"}
        )  # fmt: skip
        last = text_at
    return drawn


def _trend(check: str, points: list[tuple[str, float]], threshold: str = "") -> dict[str, Any]:
    """One figure of one target across its health runs, as the template's SVG line draws it:
    time along, value up, scaled to the drawing area with its WARN and CRIT levels in view."""
    unit = UNITS.get(check, "")
    levels = thresholds(threshold, unit)
    when = [datetime.fromisoformat(s.replace(" ", "T")).timestamp() for s, _ in points]
    values = [v for _, v in points]
    t0, span = when[0], (when[-1] - when[0]) or 1.0
    low = min([*values, *(n for _, n in levels)])
    high = max([*values, *(n for _, n in levels)])
    rise = high - low

    def y(v: float) -> float:  # a figure that never moved is drawn across the middle
        return HEIGHT / 2 if not rise else HEIGHT - HEIGHT * (v - low) / rise

    line = " ".join(
        f"{WIDTH * (t - t0) / span:.1f},{y(v):.1f}" for t, v in zip(when, values, strict=True)
    )

    return {
        "check": check,
        "unit": unit,
        "points": len(points),
        "line": line,
        "width": WIDTH,
        "height": HEIGHT,
        "low": _compact(low),  # in the unit the chart's heading names
        "high": _compact(high),
        "levels": _labelled(levels, y),
        "first": points[0][0][:16] + " UTC",
        "last": points[-1][0][:16] + " UTC",
    }


def _json_for_script(rows: list[dict[str, Any]]) -> str:
    """The rows as JSON that cannot end the <script> element holding it."""
    text = json.dumps(rows, separators=(",", ":"))
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def build(*, full: bool = True) -> Path:
    """Write the site into the archive folder; with `full`, verify every file and write the pages
    per incident and per target too. Returns index.html's path."""
    root = config.settings().reports_dir
    private_dir(root)
    check = reports.verify() if full else None
    states = _states(check)
    rows = [_row(e, states) for e in history.entries()]
    env = _environment()
    newest_first = sorted(rows, key=lambda r: r["start"], reverse=True)
    choices = {f: sorted({r[f] for r in rows if r[f]}) for f in FILTERS}
    verified = (
        f"verified when this page was written: {'OK' if check.ok else 'FAILED'}, "
        f"{check.checked} files checked against the index"
        + ("" if check.ok else f" ({len(check.lines()) - 1} problems: `pgrunbook reports verify`)")
        if check is not None
        else "runs since the last `pgrunbook reports site` are unchecked"
    )
    index = root / "index.html"
    write_atomic(
        index,
        env.get_template("index.html.j2").render(
            runs=newest_first,
            runs_json=_json_for_script([{k: r[k] for k in ROW_FIELDS} for r in newest_first]),
            choices=choices,
            root="",
            verified=verified,
        ),
    )
    if full:
        _pages(root, rows, env)
    return index


def _pages(root: Path, rows: list[dict[str, Any]], env) -> None:
    by_incident: dict[str, list[dict[str, Any]]] = {}
    by_target: dict[str, list[dict[str, Any]]] = {}
    for r in sorted(rows, key=lambda r: r["start"]):
        by_target.setdefault(r["target"], []).append(r)
        if r["incident"]:
            by_incident.setdefault(r["incident"], []).append(r)
    for folder in ("incidents", "targets"):
        private_dir(root / PAGES / folder)
    page = env.get_template("incident.html.j2")
    for incident, runs in by_incident.items():
        first = datetime.fromisoformat(runs[0]["start"].replace(" ", "T"))
        for r in runs:
            since = datetime.fromisoformat(r["start"].replace(" ", "T")) - first
            r["offset"] = f"+{since.total_seconds() / 60:.0f} min"
        write_atomic(
            root / PAGES / "incidents" / _page_name(incident),
            page.render(incident=incident, runs=runs, root="../../"),
        )
    page = env.get_template("target.html.j2")
    for target, runs in by_target.items():
        series: dict[str, list[tuple[str, float]]] = {}
        limits: dict[str, str] = {}  # the newest run's threshold of each figure
        for r in runs:
            if r["runbook"] == "health":
                for check, value in r["figures"].items():
                    series.setdefault(check, []).append((r["start"], value))
                limits.update(r["thresholds"])
        charts = [  # a figure of a known unit only: one whose meaning varies is not a trend
            _trend(check, points, limits.get(check, ""))
            for check, points in sorted(series.items())
            if len(points) >= 2 and check in UNITS
        ]
        write_atomic(
            root / PAGES / "targets" / _page_name(target),
            page.render(target=target, runs=runs, charts=charts, root="../../"),
        )

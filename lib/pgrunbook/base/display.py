"""How a runbook's tables read in its report: human units, no index column, no NaN, no reprs.

A runbook loads this as an IPython extension (`%load_ext pgrunbook.base.display`): every
DataFrame a cell shows is then rendered by `frame_html` instead of pandas' own HTML. The data
is not changed, only how it reads: sizes in kB/MB/GB (columns named `*bytes*`), numbers with
thousands separators and right-aligned, times to the second in UTC (named), empty cells for
missing values, dicts and lists as text, headers in words with their unit (`mean_ms` -> `mean
(ms)`), internal identifiers (`queryid`) left out, and the positional index left out (a named
index becomes the first column).
"""

from __future__ import annotations

import html
import math
import re
from datetime import UTC, date, datetime, timedelta
from numbers import Integral, Real
from typing import Any

MAX_ROWS = 500  # a report is read, not scrolled: longer tables say how many rows are left out
_BYTES = re.compile(r"(^|_)bytes(_|$)")
_ID = re.compile(r"id$", re.IGNORECASE)  # queryid, pid, oid, user_id: identifiers
_ISO_TIME = re.compile(r"^\d{4}-\d\d-\d\d[T ]\d\d:\d\d:\d\d(\.\d+)?([+-]\d\d:\d\d|Z)$")
HIDDEN = {"queryid"}  # internal keys: kept in the data, not shown to a person
UNITS = {"ms": "ms", "s": "s", "h": "h", "mb": "MB", "gb": "GB", "kb": "kB", "pct": "%"}
NUMERIC_STYLE = "text-align:right;font-variant-numeric:tabular-nums"


def pretty_bytes(n: float) -> str:
    """A size as PostgreSQL's pg_size_pretty reads it, 1024-based: 8.0 kB, 1.2 GB."""
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if abs(n) < 1024 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def pretty_number(x: Real) -> str:
    """1,234 for integers (and floats holding one), 1,234.6 / 12.35 / 0.0042 otherwise."""
    if isinstance(x, Integral) or (math.isfinite(x) and float(x).is_integer()):
        return f"{int(x):,}"
    if not math.isfinite(x):
        return str(x)
    a = abs(x)
    if a >= 100:
        return f"{x:,.0f}"
    if a >= 1:
        return f"{x:,.2f}".rstrip("0").rstrip(".")
    return f"{x:.2g}"


def aligned(rows: list[tuple], headers: tuple[str, ...], *, width: int | None = None) -> str:
    """Rows as a console table: columns padded to their widest cell, numbers and sizes
    right-aligned, the last column cut to fit `width` (the terminal's, by default)."""
    import shutil

    width = width or shutil.get_terminal_size((100, 24)).columns
    cells = [tuple("" if v is None else str(v) for v in row) for row in rows]
    table = [tuple(headers), *cells]
    sizes = [max(len(r[i]) for r in table) for i in range(len(headers))]
    right = [
        bool(cells)
        and all(_NUMERIC.match(r[i]) for r in cells if r[i])
        and any(r[i] for r in cells)
        for i in range(len(headers))
    ]
    lines = []
    for row in table:
        parts = [(c.rjust(sizes[i]) if right[i] else c.ljust(sizes[i])) for i, c in enumerate(row)]
        line = "  ".join(parts).rstrip()
        lines.append(line if len(line) <= width else line[: width - 3].rstrip() + "...")
    return "\n".join(lines)


_NUMERIC = re.compile(r"^-?[\d,]+(\.\d+)?( ?(B|kB|MB|GB|TB|s|ms|min|h|d|%))?$")


def plural(n: int, word: str, many: str | None = None) -> str:
    """A count with its noun as a person writes it: 1 backup, 2 backups, 1,000 rows, 1 index,
    2 indexes (`many` where the plural is not the word and an s)."""
    if n == 1:
        return f"1 {word}"
    if many is None:
        many = word + ("es" if word.endswith(("s", "x", "sh", "ch")) else "s")
    return f"{n:,} {many}"


def pretty_duration(td: timedelta) -> str:
    seconds = td.total_seconds()
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, s = divmod(round(seconds), 60)
    hours, m = divmod(minutes, 60)
    days, h = divmod(hours, 24)
    if days:
        return f"{days} d {h} h" if h else f"{days} d"
    if hours:
        return f"{hours} h {m} min" if m else f"{hours} h"
    return f"{m} min {s} s" if s else f"{m} min"


def _missing(value: Any) -> bool:
    if value is None:
        return True
    try:
        return bool(value != value)  # NaN, NaT, pd.NA
    except (TypeError, ValueError):
        return False


def cell_text(value: Any, column: str = "") -> str:
    """One cell as a person reads it."""
    if isinstance(value, (list, tuple, set, frozenset)):
        return ", ".join(cell_text(v) for v in value)
    if isinstance(value, dict):
        return ", ".join(f"{k}: {cell_text(v)}" for k, v in value.items())
    if _missing(value):
        return ""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, Real):
        if _BYTES.search(column):
            return pretty_bytes(value)
        if _ID.search(column) and float(value).is_integer():  # an identifier, not a quantity
            return str(int(value))
        return pretty_number(value)
    if isinstance(value, datetime):  # pandas' Timestamp too; aware times are shown in UTC
        if value.tzinfo is not None:
            return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
        return value.strftime("%Y-%m-%d %H:%M:%S")
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, timedelta):
        return pretty_duration(value)
    if isinstance(value, bytes):
        return f"{len(value)} bytes"
    if isinstance(value, str) and _ISO_TIME.match(value):  # a time kept as ISO text
        return cell_text(datetime.fromisoformat(value.replace("Z", "+00:00")), column)
    return str(value)


def timestamp(value: datetime | str | None) -> str:
    """A moment as reports write it: to the second, in UTC, the zone named."""
    return cell_text(value) if value else ""


def column_title(name: str, numeric: bool) -> str:
    """A field's name in words, its unit named: `mean_ms` -> `mean (ms)`, `cache_hit_pct` ->
    `cache hit %`, `rows_estimate` -> `rows estimate`; a size column loses its unit, which its
    cells now show: `heap_bytes` -> `heap`, `bloat_bytes_est` -> `bloat est`."""
    if numeric:
        name = _BYTES.sub(lambda m: "_" if m[1] and m[2] else "", name).strip("_") or name
    head, _, unit = name.rpartition("_")
    if head and unit.lower() in UNITS:
        unit = UNITS[unit.lower()]
        name = f"{head} {unit}" if unit == "%" else f"{head} ({unit})"
    return name.replace("_", " ")


def frame_html(df) -> str:
    """A DataFrame as a plain HTML table, in human units (see the module's docstring)."""
    import pandas as pd  # here: only a kernel that shows a table needs it

    pivot = df.columns.name is not None  # its column names are data (tables, roles), not fields
    keys = 0
    if not (isinstance(df.index, pd.RangeIndex) and df.index.name is None):
        keys = df.index.nlevels
        df = df.reset_index()
    df = df[[c for c in df.columns if str(c) not in HIDDEN]]
    names = [" ".join(map(str, c)) if isinstance(c, tuple) else str(c) for c in df.columns]
    numeric = [
        pd.api.types.is_numeric_dtype(t) and not pd.api.types.is_bool_dtype(t) for t in df.dtypes
    ]
    align = [f" style='{NUMERIC_STYLE}'" if n else "" for n in numeric]
    shown = df.head(MAX_ROWS)
    head = "".join(
        f"<th class='pgrb-name'{a}>{html.escape(c)}</th>"  # a name from the data, as it is
        if pivot and i >= keys
        else f"<th{a}>{html.escape(column_title(c, n))}</th>"
        for i, (c, n, a) in enumerate(zip(names, numeric, align, strict=True))
    )
    rows = "".join(
        "<tr>"
        + "".join(
            f"<td{a}>{html.escape(cell_text(v, name))}</td>"
            for v, name, a in zip(row, names, align, strict=True)
        )
        + "</tr>"
        for row in shown.itertuples(index=False, name=None)
    )
    more = (
        f"<p class='pgrb-note'>{len(df) - MAX_ROWS:,} more rows not shown</p>"
        if len(df) > MAX_ROWS
        else ""
    )
    if not len(df):
        rows = f"<tr><td colspan='{max(len(names), 1)}'>no rows</td></tr>"
    return (
        f"<table class='dataframe pgrb-table'><thead><tr>{head}</tr></thead>"
        f"<tbody>{rows}</tbody></table>{more}"
    )


def series_html(s) -> str:
    """A Series as a two-column table (its index and its values)."""
    return frame_html(s.to_frame(name=s.name if s.name is not None else "value"))


def _align(value: Any) -> str:
    numeric = isinstance(value, Real) and not isinstance(value, bool)
    return f" style='{NUMERIC_STYLE}'" if numeric else ""


def mapping_html(d: dict, key: str = "name", value: str = "value") -> str:
    """A dict (row counts, settings) as a two-column table."""
    rows = (
        "".join(
            f"<tr><td>{html.escape(cell_text(k))}</td>"
            f"<td{_align(v)}>{html.escape(cell_text(v, str(k)))}</td></tr>"
            for k, v in d.items()
        )
        or "<tr><td colspan='2'>none</td></tr>"
    )
    return (
        f"<table class='dataframe pgrb-table'><thead><tr><th>{html.escape(key)}</th>"
        f"<th>{html.escape(value)}</th></tr></thead><tbody>{rows}</tbody></table>"
    )


def load_ipython_extension(ip) -> None:
    """`%load_ext pgrunbook.base.display`: tables in every later cell render through here."""
    import pandas as pd  # here: only a kernel that shows a table needs it

    formatter = ip.display_formatter.formatters["text/html"]
    formatter.for_type(pd.DataFrame, frame_html)
    formatter.for_type(pd.Series, series_html)
    formatter.for_type(dict, mapping_html)

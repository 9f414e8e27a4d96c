"""How a runbook's tables read in its report: human units, no index column, no NaN, no reprs.

A runbook loads this as an IPython extension (`%load_ext pgrunbook.base.display`): every
DataFrame a cell shows is then rendered by `frame_html` instead of pandas' own HTML. The data
is not changed, only how it reads: sizes in kB/MB/GB (columns named `*bytes*`), numbers with
thousands separators, times to the second, empty cells for missing values, dicts and lists as
text, and the positional index left out (a named index becomes the first column).
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


def pretty_duration(td: timedelta) -> str:
    seconds = td.total_seconds()
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, s = divmod(round(seconds), 60)
    hours, m = divmod(minutes, 60)
    days, h = divmod(hours, 24)
    if days:
        return f"{days} d {h} h"
    return f"{hours} h {m} min" if hours else f"{m} min {s} s"


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
    return str(value)


def column_title(name: str, numeric: bool) -> str:
    """A size column loses its unit, which its cells now show: `heap_bytes` -> `heap`,
    `bloat_bytes_est` -> `bloat_est`. Other names (table names in a pivot) stay as they are."""
    if not numeric:
        return name
    return _BYTES.sub(lambda m: "_" if m[1] and m[2] else "", name).strip("_") or name


def frame_html(df) -> str:
    """A DataFrame as a plain HTML table, in human units (see the module's docstring)."""
    import pandas as pd  # here: only a kernel that shows a table needs it

    if not (isinstance(df.index, pd.RangeIndex) and df.index.name is None):
        df = df.reset_index()
    names = [" ".join(map(str, c)) if isinstance(c, tuple) else str(c) for c in df.columns]
    numeric = [pd.api.types.is_numeric_dtype(t) for t in df.dtypes]
    shown = df.head(MAX_ROWS)
    head = "".join(
        f"<th>{html.escape(column_title(c, n))}</th>" for c, n in zip(names, numeric, strict=True)
    )
    rows = "".join(
        "<tr>"
        + "".join(
            f"<td>{html.escape(cell_text(v, name))}</td>"
            for v, name in zip(row, names, strict=True)
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


def mapping_html(d: dict, key: str = "name", value: str = "value") -> str:
    """A dict (row counts, settings) as a two-column table."""
    rows = (
        "".join(
            f"<tr><td>{html.escape(cell_text(k))}</td>"
            f"<td>{html.escape(cell_text(v, str(k)))}</td></tr>"
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

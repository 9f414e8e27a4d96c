"""Tables as a report shows them (`%load_ext pgrunbook.base.display`): human units, no index
column, no NaN / NaT / None, no Python reprs."""

from __future__ import annotations

import re
from datetime import timedelta

import numpy as np
import pandas as pd

from pgrunbook.base import display


def cells(page: str) -> list[list[str]]:
    return [
        re.findall(r"<t[hd][^>]*>(.*?)</t[hd]>", row) for row in re.findall(r"<tr>(.*?)</tr>", page)
    ]


def test_sizes_numbers_times_and_missing_values_read_as_a_person_would():
    frame = pd.DataFrame(
        {
            "table": ["public.users", "public.orders_bytes"],
            "heap_bytes": [8192, np.nan],
            "dead_pct": [np.nan, 12.345],
            "calls": [1234567, 3],
            "queryid": [-4567890123, 12],
            "last_vacuum": [pd.NaT, pd.Timestamp("2026-01-01 10:00:00.123", tz="UTC")],
            "age": [timedelta(hours=5, minutes=3), None],
            "extra": [{"a": 1}, ["x", "y"]],
            "ok": [True, None],
        }
    )
    page = display.frame_html(frame)
    head, first, second = cells(page)
    # headers in words, the unit named or moved into the cells; the internal queryid left out
    assert head == ["table", "heap", "dead %", "calls", "last vacuum", "age", "extra", "ok"]
    assert first == ["public.users", "8.0 kB", "", "1,234,567", "", "5 h 3 min", "a: 1", "yes"]
    assert second == [
        "public.orders_bytes", "", "12.35", "3", "2026-01-01 10:00:00 UTC", "", "x, y", "",
    ]  # fmt: skip
    # numbers right-aligned, text left as it is
    aligned = re.findall(r"<th( style='text-align:right[^']*')?>", page)
    assert [bool(a) for a in aligned] == [False, True, True, True, False, False, False, False]


def test_headers_say_the_unit_and_times_kept_as_text_read_as_times():
    assert display.column_title("mean_ms", True) == "mean (ms)"
    assert display.column_title("oldest_transaction_s", True) == "oldest transaction (s)"
    assert display.column_title("cache_hit_pct", True) == "cache hit %"
    assert display.column_title("size_mb", True) == "size (MB)"
    assert display.column_title("bloat_bytes_est", True) == "bloat est"
    assert display.cell_text("2026-12-06T09:03:56.067243+00:00") == "2026-12-06 09:03:56 UTC"
    assert display.cell_text("20261206T090355Z") == "20261206T090355Z"  # an id, not a time


def test_a_named_index_becomes_a_column_and_the_positional_one_goes():
    pivot = pd.DataFrame({"role": ["app"], "public.users": ["SIUD"]}).set_index("role")
    pivot.columns.name = "table"
    head, row = cells(display.frame_html(pivot))
    assert head == ["role", "public.users"] and row == ["app", "SIUD"]  # names from the data
    assert "<th class='pgrb-name'>public.users</th>" in display.frame_html(pivot)
    head, row = cells(display.frame_html(pd.DataFrame({"a": [1]}, index=[7])))
    assert head == ["index", "a"] and row == ["7", "1"]
    head, row = cells(display.frame_html(pd.DataFrame({"a": [1]})))
    assert head == ["a"] and row == ["1"]


def test_long_tables_say_what_they_leave_out_and_values_are_escaped():
    page = display.frame_html(pd.DataFrame({"q": ["<script>"] * (display.MAX_ROWS + 5)}))
    assert "<script>" not in page and "&lt;script&gt;" in page
    assert "5 more rows not shown" in page and len(cells(page)) == display.MAX_ROWS + 1
    assert "no rows" in display.frame_html(pd.DataFrame({"a": []}))


def test_mappings_and_units():
    assert cells(display.mapping_html({"users": 1000}, "table", "rows")) == [
        ["table", "rows"],
        ["users", "1,000"],
    ]
    assert display.pretty_bytes(0) == "0 B" and display.pretty_bytes(5 * 1024**3) == "5.0 GB"
    assert display.pretty_number(0.00421) == "0.0042" and display.pretty_number(12.0) == "12"
    assert display.pretty_duration(timedelta(days=2, hours=1)) == "2 d 1 h"

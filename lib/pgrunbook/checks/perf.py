"""Performance review: query statistics, plans, index advice, tables, connections, trend.

Read-only, for any target. Every figure comes back as a DataFrame an operator
can drill into; the findings name what needs attention. Query statistics come
from pg_stat_statements when the server has it (the sandbox preloads it);
without it the review says how to enable it and goes on with the rest.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

import psycopg
from psycopg import sql

from ..base.display import pretty_bytes
from ..base.findings import Check, Finding, Status
from ..base.limits import DEFAULTS, level
from ..base.targets import Target
from ..facts import activity, backups, constraints, history, server, space
from ..facts.indexes import Index, indexes, stats_window
from ..facts.statements import EXPLAINABLE, has_statements

WRITES = re.compile(
    r"\b(insert|update|delete|merge|create|drop|alter|truncate|copy|call|nextval|setval)\b", re.I
)
PARAM = re.compile(r"\$\d+")


# -- query statistics ----------------------------------------------------------------------------


def statements_available(conn: psycopg.Connection) -> Finding:
    """Whether pg_stat_statements can be read here, and if not, how to enable it."""
    preload = server.preloaded(conn)
    installed = has_statements(conn)
    if preload is not None and "pg_stat_statements" not in preload:
        return Finding(
            "pg_stat_statements",
            Status.WARN,
            "not preloaded: add it to shared_preload_libraries (ALTER SYSTEM SET "
            "shared_preload_libraries = 'pg_stat_statements'), restart, then CREATE EXTENSION "
            "pg_stat_statements; the review goes on without query statistics",
        )
    if not installed:
        return Finding(
            "pg_stat_statements",
            Status.WARN,
            (
                "preloaded"
                if preload is not None
                else "perhaps preloaded (this role cannot read shared_preload_libraries)"
            )
            + " but not created in this database: run CREATE "
            "EXTENSION pg_stat_statements; "
            "the review goes on without query statistics",
        )
    since = (
        conn.execute("SELECT stats_reset FROM pg_stat_statements_info").fetchone()[0]
        if conn.info.server_version >= 140000
        else None
    )
    return Finding(
        "pg_stat_statements",
        Status.OK,
        "query statistics available" + (f" since {since:%Y-%m-%d %H:%M} UTC" if since else ""),
    )


def own_work_finding(frame) -> Finding:
    """What the rankings leave out: pgrunbook's own statements, its tools' and catalog reads."""
    left = frame.attrs.get("excluded", {"statements": 0, "total_ms": 0.0})
    return Finding(
        "own work",
        Status.OK,
        f"{left['statements']} statements of pgrunbook, pg_dump, pg_restore "
        f"and catalog reads left out of the rankings ({left['total_ms'] / 1000:.1f} s)",
        value=left["statements"],
    )


def top(frame, by: str = "total_ms", n: int = 20):
    """The `n` statements with most `by` (total_ms, mean_ms, calls or rows)."""
    return frame.sort_values(by, ascending=False).head(n).reset_index(drop=True)


def slow(frame, slow_ms: float):
    """Queries (not utility statements: COPY, DDL, VACUUM...) whose mean time is over `slow_ms`."""
    chosen = frame[(frame["mean_ms"] > slow_ms) & (frame["kind"] == "query")]
    return chosen.sort_values("mean_ms", ascending=False).reset_index(drop=True)


def slow_finding(frame, slow_ms: float) -> Finding:
    s = slow(frame, slow_ms)
    if s.empty:
        return Finding(
            "slow queries",
            Status.OK,
            f"no query averages over {slow_ms:g} ms ({len(frame)} statements)",
            value=0,
            threshold=f"mean > {slow_ms:g} ms",
        )
    return Finding(
        "slow queries",
        Status.WARN,
        f"{len(s)} queries average over {slow_ms:g} ms; the slowest "
        f"{s['mean_ms'].iloc[0]:.0f} ms over {s['calls'].iloc[0]} calls",
        value=len(s),
        threshold=f"mean > {slow_ms:g} ms",
        examples=tuple(_short(q) for q in s["query"].head(10)),
    )


def _short(query: str, width: int = 120) -> str:
    one = " ".join(query.split())
    return one if len(one) <= width else one[: width - 1] + "…"


def plot_statements(frame, slow_ms: float, *, n: int = 15):
    """Total-time bars, each labelled with its statement, and calls against mean time with the
    slow threshold drawn."""
    from matplotlib.figure import Figure  # here: spares matplotlib (~450 ms) at start-up

    fig = Figure(figsize=(13, 4.5), layout="constrained")
    bars, scatter = fig.subplots(1, 2, width_ratios=[3, 2])
    head = top(frame, "total_ms", n)
    labels = [_short(q, 60) for q in head["query"]]
    bars.barh(range(len(head)), head["total_ms"][::-1] / 1000, color="#4c72b0")
    bars.set_yticks(range(len(head)), labels[::-1], fontsize=7)
    bars.set_xlabel("total time (s)")
    bars.set_title(f"Top {len(head)} statements by total time")
    slow_mask = frame["mean_ms"] > slow_ms
    scatter.scatter(
        frame["calls"], frame["mean_ms"], s=12, c=["#cf222e" if x else "#4c72b0" for x in slow_mask]
    )
    scatter.axhline(slow_ms, color="#cf222e", linestyle="--", label=f"slow: {slow_ms:g} ms")
    if len(frame) and (frame["calls"] > 0).all() and (frame["mean_ms"] > 0).all():
        scatter.set_xscale("log")
        scatter.set_yscale("log")
    scatter.set_xlabel("calls")
    scatter.set_ylabel("mean time (ms)")
    scatter.set_title("Calls against mean time")
    scatter.legend()
    return fig


# -- plans -----------------------------------------------------------------------------------------


@dataclass
class Explained:
    query: str
    plan: dict | None
    note: str  # the costly nodes in one line, or why there is no plan

    @property
    def seq_scans(self) -> list[tuple[str, str, str]]:
        """(table, alias, filter) of every sequential scan in the plan."""
        return [
            (n.get("Relation Name", ""), n.get("Alias", ""), n.get("Filter", ""))
            for n in _nodes(self.plan)
            if n.get("Node Type") == "Seq Scan"
        ]

    @property
    def joins_on(self) -> list[str]:
        return [
            n[k]
            for n in _nodes(self.plan)
            for k in ("Hash Cond", "Merge Cond", "Join Filter")
            if k in n
        ]


def _nodes(plan: dict | None):
    if not plan:
        return
    stack = [plan]
    while stack:
        node = stack.pop()
        yield node
        stack.extend(node.get("Plans", []))


def explain(
    conn: psycopg.Connection, query: str, *, analyze: bool = False, timeout: str = "10s"
) -> Explained:
    """The plan of `query` (GENERIC_PLAN for $n parameters where the server has it); ANALYZE only
    for reads."""
    if not EXPLAINABLE.match(query):
        return Explained(query, None, "not a query that has a plan (utility statement)")
    params = bool(PARAM.search(query))
    generic = conn.info.server_version >= 160000
    if params and not generic:
        return Explained(
            query, None, "has parameters and the server is older than 16 (no GENERIC_PLAN)"
        )
    writes = bool(WRITES.search(query))
    analyze = analyze and not writes and not params
    options = (
        ["FORMAT JSON"]
        + (["GENERIC_PLAN"] if params else [])
        + (["ANALYZE", "BUFFERS"] if analyze else [])
    )
    try:
        with conn.transaction():
            conn.execute("SELECT set_config('statement_timeout', %s, true)", [timeout])
            row = conn.execute(
                sql.SQL("EXPLAIN ({}) {}").format(sql.SQL(", ".join(options)), sql.SQL(query))
            ).fetchone()
    except psycopg.Error as e:
        return Explained(query, None, f"no plan: {str(e).splitlines()[0]}")
    plan = (row[0] if isinstance(row[0], list) else json.loads(row[0]))[0]["Plan"]
    return Explained(query, plan, costly_nodes(plan))


def costly_nodes(plan: dict) -> str:
    """The nodes worth a look, in one line: large sequential scans, sorts (spilling), big nested
    loops."""
    notes = []
    for n in _nodes(plan):
        rows = n.get("Actual Rows", n.get("Plan Rows", 0)) * max(n.get("Actual Loops", 1), 1)
        kind = n.get("Node Type")
        if kind == "Seq Scan" and (rows >= DEFAULTS.large_scan_rows or n.get("Filter")):
            filt = f" filtering {n['Filter']}" if n.get("Filter") else ""
            notes.append(f"sequential scan on {n.get('Relation Name')} ({rows:,.0f} rows){filt}")
        elif kind == "Sort" and (
            n.get("Sort Space Type") == "Disk" or rows >= DEFAULTS.large_scan_rows
        ):
            disk = " spilling to disk" if n.get("Sort Space Type") == "Disk" else ""
            notes.append(f"sort of {rows:,.0f} rows{disk}")
        elif kind == "Nested Loop" and rows >= DEFAULTS.large_scan_rows:
            notes.append(f"nested loop over {rows:,.0f} rows")
    return "; ".join(notes) or "no costly node"


def explain_top(
    conn: psycopg.Connection,
    frame,
    *,
    slow_ms: float,
    top_n: int = 20,
    analyze: bool = False,
    enabled: bool = True,
) -> list[Explained]:
    """Plans of the slow statements (the top ones by total time when none is slow)."""
    if not enabled or frame.empty:
        return []
    chosen = slow(frame, slow_ms).head(top_n)
    return [explain(conn, q, analyze=analyze) for q in chosen["query"]]


def plans_frame(explained: list[Explained]):
    import pandas as pd  # here: spares pandas (~270 ms) at start-up

    return pd.DataFrame(
        [{"query": _short(e.query), "costly nodes": e.note} for e in explained],
        columns=["query", "costly nodes"],
    )


# -- index advice ----------------------------------------------------------------------------------


def unused_indexes(
    conn: psycopg.Connection,
    all_indexes: list[Index],
    *,
    min_days: float = DEFAULTS.unused_index_min_days,
) -> list[dict]:
    """Indexes never scanned since statistics count, that back no constraint: advice to drop them
    only when the statistics cover at least `min_days`; an index that serves a foreign key's lookups
    says so."""
    since, days = stats_window(conn)
    fks: dict[tuple[str, str], list[tuple[str, tuple[str, ...]]]] = {}
    for fk in constraints.foreign_keys(conn):
        fks.setdefault((fk.schema, fk.table), []).append((fk.name, tuple(fk.columns)))
    out = []
    for i in all_indexes:
        if i.scans or i.unique or i.backs_constraint:
            continue
        serves = [
            n for n, cols in fks.get((i.schema, i.table), []) if i.columns[: len(cols)] == cols
        ]
        why = (
            f"0 scans in the {days:.1f} days since {since:%Y-%m-%d %H:%M} (statistics reset or"
            " server start)"
        )
        if days < min_days:
            kind, ddl = (
                "unused (too early)",
                f"-- wait until {min_days:g} days of statistics before deciding",
            )
        else:
            kind, ddl = "unused", f"DROP INDEX CONCURRENTLY {i.ident};"
        if serves:
            why += (
                f"; it serves the lookups of foreign key {', '.join(serves)}: deleting or updating"
                " a referenced row scans the table without it"
            )
            ddl = f"-- keep unless those lookups are rare: {ddl.removeprefix('-- ')}"
        out.append(
            {
                "kind": kind,
                "table": f"{i.schema}.{i.table}",
                "index": i.name,
                "size_bytes": i.bytes,
                "why": why,
                "ddl": ddl,
                "cost": f"frees {pretty_bytes(i.bytes)}; writes to the table stop maintaining it",
            }
        )
    return out


def redundant_indexes(all_indexes: list[Index]) -> list[dict]:
    """Btree indexes whose columns are the same as, or a prefix of, another index's on the same
    table."""
    out = []
    plain = [
        i for i in all_indexes if i.method == "btree" and not i.partial_or_expression and i.valid
    ]
    for i in plain:
        for j in plain:
            if (
                i is j
                or (i.schema, i.table) != (j.schema, j.table)
                or i.unique
                or i.backs_constraint
            ):
                continue
            same = i.columns == j.columns
            if (same and i.name > j.name) or (
                not same and j.columns[: len(i.columns)] == i.columns
            ):
                out.append(
                    {
                        "kind": "duplicate" if same else "redundant",
                        "table": f"{i.schema}.{i.table}",
                        "index": i.name,
                        "size_bytes": i.bytes,
                        "why": (
                            f"({', '.join(i.columns)}) is covered by {j.name}"
                            f" ({', '.join(j.columns)})"
                        ),
                        "ddl": f"DROP INDEX CONCURRENTLY {i.ident};",
                        "cost": f"frees {pretty_bytes(i.bytes)}",
                    }
                )
                break
    return out


_REFERENCE = re.compile(r'(?:"?([A-Za-z_][A-Za-z0-9_$]*)"?\.)?"?([A-Za-z_][A-Za-z0-9_$]*)"?')
_LITERAL = re.compile(r"'(?:[^']|'')*'")


def _filter_columns(
    expr: str, columns: set[str], alias: str, *, qualified_only: bool = False
) -> list[str]:
    """Columns of `columns` referenced in a plan expression, unqualified or qualified by `alias`."""
    seen = []
    for qualifier, name in _REFERENCE.findall(_LITERAL.sub("", expr)):
        mine = qualifier == alias if qualifier else not qualified_only
        if mine and name in columns and name not in seen:
            seen.append(name)
    return seen


def missing_indexes(
    conn: psycopg.Connection,
    explained: list[Explained],
    all_indexes: list[Index],
    *,
    min_rows: int = DEFAULTS.large_scan_rows,
) -> list[dict]:
    """Columns that slow queries filter or join on by sequential scan of a large table, with no
    index leading on them."""
    stats = {
        (s, t): (seq, rows)
        for s, t, seq, rows in conn.execute(
            "SELECT schemaname, relname, seq_scan, n_live_tup FROM pg_stat_user_tables"
        ).fetchall()
    }
    by_name = {t: (s, t) for s, t in stats}
    leading = {(i.schema, i.table, i.columns[0]) for i in all_indexes if i.columns and i.valid}
    cols: dict[tuple[str, str], set[str]] = {}

    def columns_of(key: tuple[str, str]) -> set[str]:
        if key not in cols:
            cols[key] = {
                r[0]
                for r in conn.execute(
                    "SELECT attname FROM pg_attribute WHERE attrelid = %s::regclass AND attnum > 0"
                    " AND NOT attisdropped",
                    [sql.Identifier(*key).as_string(conn)],
                )
            }
        return cols[key]

    advice: dict[tuple[str, str, str], dict] = {}
    for e in explained:
        for table, alias, filt in e.seq_scans:
            key = by_name.get(table)
            if not key or stats[key][1] < min_rows:
                continue
            found = _filter_columns(filt, columns_of(key), alias) if filt else []
            found += [
                c
                for j in e.joins_on
                for c in _filter_columns(j, columns_of(key), alias, qualified_only=True)
            ]
            for column in [c for c in found if (key[0], key[1], c) not in leading][:1]:
                if (key[0], key[1], column) in advice:
                    continue
                size = conn.execute(
                    "SELECT pg_relation_size(%s::regclass)", [sql.Identifier(*key).as_string(conn)]
                ).fetchone()[0]
                name = f"ix_{key[1]}_{column}"[:63]
                advice[(key[0], key[1], column)] = {
                    "kind": "missing",
                    "table": f"{key[0]}.{key[1]}",
                    "index": name,
                    "size_bytes": None,
                    "why": (
                        f"{stats[key][0]:,} sequential scans of {stats[key][1]:,} rows; a slow"
                        f" query filters or joins on {column}: {_short(e.query, 80)}"
                    ),
                    "ddl": (
                        f"CREATE INDEX CONCURRENTLY {sql.Identifier(name).as_string(conn)} ON"
                        f" {sql.Identifier(*key).as_string(conn)}"
                        f" ({sql.Identifier(column).as_string(conn)});"
                    ),
                    "cost": (
                        f"reads the table's {pretty_bytes(size)} twice without blocking writes; the"
                        f" index about {pretty_bytes(stats[key][1] * 24)}, maintained on every"
                        " write"
                    ),
                }
    return list(advice.values())


def index_advice(
    conn: psycopg.Connection,
    explained: list[Explained],
    *,
    unused_min_days: float = DEFAULTS.unused_index_min_days,
):
    """Unused, duplicate, redundant and missing indexes, each with the DDL to run and its cost."""
    import pandas as pd  # here: spares pandas (~270 ms) at start-up

    found = indexes(conn)  # read once for the three kinds of advice
    rows = (
        missing_indexes(conn, explained, found)
        + redundant_indexes(found)
        + unused_indexes(conn, found, min_days=unused_min_days)
    )
    return pd.DataFrame(
        rows, columns=["kind", "table", "index", "size_bytes", "why", "ddl", "cost"]
    )


def advice_finding(advice) -> Finding:
    if advice.empty:
        return Finding("index advice", Status.OK, "no index to add or drop")
    counts = advice["kind"].value_counts().to_dict()
    missing = advice[advice["kind"] == "missing"]
    return Finding(
        "index advice",
        Status.WARN if not missing.empty else Status.OK,
        ", ".join(f"{n} {k}" for k, n in counts.items()),
        value=len(advice),
        examples=tuple(advice["ddl"].head(20)),
    )


# -- tables and connections ------------------------------------------------------------------------


def tables(conn: psycopg.Connection, *, limit: int = 50):
    """Largest tables: sizes, dead tuples and a bloat estimate, vacuum and analyze times, cache hit
    ratio."""
    import pandas as pd  # here: spares pandas (~270 ms) at start-up

    sizes = pd.DataFrame(
        space.table_sizes(conn, top=limit), columns=list(space.TableSize.__annotations__)
    )
    frame = sizes.merge(space.table_stats(conn), on=["schema", "table"], how="inner")
    seen = frame["live_rows"] + frame["dead_rows"]
    frame["dead_pct"] = (100 * frame["dead_rows"] / seen.where(seen > 0)).round(1)
    frame["bloat_bytes_est"] = (
        frame["dead_rows"] * frame["heap_bytes"] / seen.where(seen > 0)
    ).round()
    reads = frame["blocks_hit"] + frame["blocks_read"]
    frame["cache_hit_pct"] = (100 * frame["blocks_hit"] / reads.where(reads > 0)).round(2)
    frame["table"] = frame["schema"] + "." + frame["table"]
    return frame[
        [
            "table",
            "heap_bytes",
            "index_bytes",
            "toast_bytes",
            "live_rows",
            "dead_rows",
            "dead_pct",
            "bloat_bytes_est",
            "last_vacuum",
            "last_analyze",
            "seq_scans",
            "index_scans",
            "cache_hit_pct",
        ]
    ]


def cache_finding(
    conn: psycopg.Connection, *, warn_pct: float = DEFAULTS.cache_hit_warn_pct
) -> Finding:
    hit, read = conn.execute(
        "SELECT sum(heap_blks_hit), sum(heap_blks_read) FROM pg_statio_user_tables"
    ).fetchone()
    if not (hit or read):
        return Finding("cache hit ratio", Status.OK, "no table reads yet")
    pct = 100 * float(hit) / float(hit + read)
    return Finding(
        "cache hit ratio",
        level(pct, warn_pct, falling=True),
        f"{pct:.2f}% of table block reads served from shared buffers",
        value=round(pct, 2),
        threshold=f"WARN < {warn_pct:g}%",
    )


def dead_rows_finding(
    frame, *, warn_pct: float = DEFAULTS.dead_rows_warn_pct, min_rows: int = DEFAULTS.dead_rows_min
) -> Finding:
    bad = frame[(frame["dead_pct"].fillna(0) > warn_pct) & (frame["dead_rows"] > min_rows)]
    if bad.empty:
        return Finding("dead rows", Status.OK, f"no table over {warn_pct:g}% dead rows")
    return Finding(
        "dead rows",
        Status.WARN,
        f"{len(bad)} tables over {warn_pct:g}% dead rows: VACUUM them or tune autovacuum",
        examples=tuple(f"{t}: {p}%" for t, p in zip(bad["table"], bad["dead_pct"], strict=True)),
    )


def sessions(conn: psycopg.Connection):
    """Client sessions (this one excluded) by database, application and state, with the oldest
    open transaction of each group in seconds."""
    import pandas as pd  # here: spares pandas (~270 ms) at start-up

    frame = pd.DataFrame(activity.sessions(conn), columns=list(activity.Session.__annotations__))
    groups = frame.groupby(["database", "application", "state"], dropna=False)
    out = groups.agg(sessions=("pid", "size"), oldest_transaction_s=("xact_s", "max")).reset_index()
    return out.sort_values("sessions", ascending=False, ignore_index=True).round(
        {"oldest_transaction_s": 1}
    )


def locks_finding(waits) -> Finding:
    if waits.empty:
        return Finding("lock waits", Status.OK, "no session is waiting on a lock")
    roots = sorted(set(waits["blocking_pid"]) - set(waits["waiting_pid"]))
    return Finding(
        "lock waits",
        Status.WARN,
        f"{waits['waiting_pid'].nunique()} sessions wait on locks held by "
        f"{len(roots)} root blockers (pids {', '.join(map(str, roots))})",
        value=len(waits),
    )


# -- trend -----------------------------------------------------------------------------------------


def snapshot(frame, table_frame, advice) -> Finding:
    """The figures the next review compares with: table sizes, slow statements, unused indexes."""
    facts = {
        "table bytes": {
            t: int(h + i + x)
            for t, h, i, x in zip(
                table_frame["table"],
                table_frame["heap_bytes"],
                table_frame["index_bytes"],
                table_frame["toast_bytes"],
                strict=True,
            )
        },
        "slow": sorted(str(q) for q in frame.get("queryid", [])) if frame is not None else [],
        "unused indexes": (
            sorted(advice[advice["kind"] == "unused"]["index"]) if not advice.empty else []
        ),
    }
    return Finding(
        Check.SNAPSHOT,
        Status.OK,
        f"{len(facts['table bytes'])} tables, {len(facts['slow'])} slow statements, "
        f"{len(facts['unused indexes'])} unused indexes",
        value=facts,
    )


def trend(
    target: Target,
    current: Finding,
    *,
    enabled: bool = True,
    growth_pct: float = DEFAULTS.table_growth_pct,
):
    """(finding, DataFrame of changes) since the previous archived performance report of
    `target`."""
    import pandas as pd  # here: spares pandas (~270 ms) at start-up

    empty = pd.DataFrame(columns=["what", "name", "before", "now"])
    if not enabled:
        return Finding("trend", Status.OK, "not compared (compare_with_previous=False)"), empty
    database = backups.current_identity(target)
    if again := history.starts_again("performance", target.name, database):
        return Finding("trend", Status.OK, again), empty
    run = history.previous(
        "performance",
        target.name,
        where=lambda r: r["outcome"] != "FAILED" and history.value(r, Check.SNAPSHOT) is not None,
        database=database,
    )
    if run is not None:
        before = history.value(run, Check.SNAPSHOT)
        now, rows = current.value, []
        for t, size in now["table bytes"].items():
            old = before["table bytes"].get(t)
            if old is None or size > old * (1 + growth_pct / 100) + 2**20:
                rows.append(
                    (
                        "table grew" if old is not None else "new table",
                        t,
                        pretty_bytes(old or 0),
                        pretty_bytes(size),
                    )
                )
        rows += [("newly slow", q, "", "slow") for q in now["slow"] if q not in before["slow"]]
        rows += [
            ("newly unused index", i, "", "unused")
            for i in now["unused indexes"]
            if i not in before["unused indexes"]
        ]
        frame = pd.DataFrame(rows, columns=["what", "name", "before", "now"])
        return (
            Finding(
                "trend",
                Status.OK,
                f"since {run['id']}: "
                + (
                    ", ".join(f"{n} {k}" for k, n in frame["what"].value_counts().items())
                    if rows
                    else "nothing notable"
                ),
                examples=tuple(f"{w}: {n}" for w, n, _, _ in rows[:20]),
            ),
            frame,
        )
    return (
        Finding(
            "trend", Status.OK, f"no earlier performance report of {target.name!r} to compare with"
        ),
        empty,
    )

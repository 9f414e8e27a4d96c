"""Compare two databases table by table, row for row, without pulling the rows across.

Each row is hashed in the server: every column through its type's built-in
`hash*extended` function (the functions hash partitioning relies on, so they
agree across servers and major versions), each seeded by the hash of the
columns before it. A table's fingerprint is the
count and the sum of its row hashes. Where two fingerprints differ and the
table has an integer primary key, the key range is split into buckets,
fingerprinted per bucket on both sides at once, and only the differing
buckets are split again (the data-diff idea) until they are small enough to
compare key by key; then just the differing rows are fetched, side by side.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import psycopg
from psycopg import sql

from . import catalog, db
from .findings import Finding, Status
from .integrity import Rel, selected
from .targets import Target

HASHERS = {
    "int2": "hashint2extended", "int4": "hashint4extended", "int8": "hashint8extended",
    "text": "hashtextextended", "varchar": "hashtextextended", "bpchar": "hashbpcharextended",
    "numeric": "hash_numeric_extended", "float4": "hashfloat4extended", "float8": "hashfloat8extended",
    "timestamp": "timestamp_hash_extended", "timestamptz": "timestamp_hash_extended",
    "date": "hashint4extended", "uuid": "uuid_hash_extended",
    "jsonb": "jsonb_hash_extended", "oid": "hashoidextended", "bool": "hashint4extended",
}
CASTS = {"bool": "int4", "timestamptz": "timestamp"}
SESSION = ("SET TimeZone = 'UTC'", "SET DateStyle = 'ISO, YMD'", "SET extra_float_digits = 1",
           "SET IntervalStyle = 'iso_8601'", "SET bytea_output = 'hex'")  # text forms equal on both sides
FIRST_BUCKETS = 1024  # the first split is a full scan: make it fine, so few levels follow
BUCKETS = 64
LEAF = 8192


@dataclass(frozen=True)
class Table:
    rel: Rel
    columns: tuple[tuple[str, str], ...]  # (name, type name)
    key: tuple[str, ...]  # primary key columns
    key_is_int: bool


def tables(conn: psycopg.Connection, pattern: str = "*") -> dict[str, Table]:
    rels = [Rel(s, t) for s, t in catalog.tables(conn) if selected(Rel(s, t), pattern)]
    out = {}
    for rel in rels:
        cols = conn.execute(
            "SELECT a.attname, t.typname FROM pg_attribute a JOIN pg_type t ON t.oid = a.atttypid"
            " WHERE a.attrelid = %s::regclass AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum",
            [rel.ident.as_string(conn)]).fetchall()
        names, types = catalog.primary_key(conn, rel.ident.as_string(conn))
        out[str(rel)] = Table(rel, tuple(cols), names,
                              len(names) == 1 and types[0] in ("int2", "int4", "int8"))
    return out


def _column_hash(name: str, typ: str, seed: sql.Composable) -> sql.Composable:
    col = sql.Identifier(name)
    if typ in CASTS:
        col = sql.SQL("({})::{}").format(col, sql.SQL(CASTS[typ]))
    if typ == "date":
        col = sql.SQL("({} - date '2000-01-01')").format(sql.Identifier(name))
    fn = HASHERS.get(typ)
    if fn:
        return sql.SQL("{}({}, {})").format(sql.Identifier(fn), col, seed)
    return sql.SQL("hashtextextended(({})::text, {})").format(sql.Identifier(name), seed)


def row_hash(columns) -> sql.Composable:
    """SQL for one bigint hash of a whole row, from the columns' own hash functions.

    Each column's hash is seeded with the hash of the columns before it: one
    call per column and nothing else, which costs less than the plainest
    per-column aggregate, and a value moved to another column or another row
    changes the result. The functions are strict, so a row holding a NULL
    yields NULL there; COALESCE then evaluates, for those rows only, a
    NULL-safe form: each column hashed with its position as seed, NULL as
    minus that position, XORed, then hashed once more.
    """
    chain: sql.Composable = sql.Literal(0)
    parts = []
    for position, (name, typ) in enumerate(columns, start=1):
        chain = _column_hash(name, typ, chain)
        parts.append(sql.SQL("coalesce({}, {})").format(_column_hash(name, typ, sql.Literal(position)),
                                                        sql.Literal(-position)))
    null_safe = sql.SQL("hashint8extended({}, 0)").format(sql.SQL(" # ").join(parts))
    return sql.SQL("coalesce({}, {})").format(chain, null_safe)


def _connect(target: Target) -> psycopg.Connection:
    conn = db.connect(target, application="pgrunbook/compare", statement_timeout="1h")
    for stmt in SESSION:
        conn.execute(stmt)
    return conn


@dataclass
class TableResult:
    table: str
    rows_a: int
    rows_b: int
    same: bool
    changed: list = field(default_factory=list)
    only_a: list = field(default_factory=list)
    only_b: list = field(default_factory=list)
    note: str = ""

    @property
    def differing(self) -> int:
        return len(self.changed) + len(self.only_a) + len(self.only_b)


class Pair:
    """Two connections, one per side; `both()` runs a query on each at once."""

    def __init__(self, a: Target, b: Target):
        self.a, self.b = _connect(a), _connect(b)
        self.pool = ThreadPoolExecutor(max_workers=2)
        # bit_xor (PostgreSQL 14+) aggregates row hashes much faster than sum()'s numeric
        self.agg = sql.SQL("bit_xor" if min(self.a.info.server_version, self.b.info.server_version) >= 140000
                           else "sum")

    def both(self, query, params=None):
        fa = self.pool.submit(lambda: self.a.execute(query, params).fetchall())
        fb = self.pool.submit(lambda: self.b.execute(query, params).fetchall())
        return fa.result(), fb.result()

    def close(self):
        self.pool.shutdown()
        self.a.close()
        self.b.close()


def compare_table(pair: Pair, t: Table) -> TableResult:
    rh = row_hash(t.columns)
    # level 0: one plain aggregate, as cheap as the plainest full-content check; equal tables stop here
    ra, rb = pair.both(sql.SQL("SELECT count(*), coalesce({}({}), 0) FROM {}").format(pair.agg, rh, t.rel.ident))
    if ra == rb or not t.key:
        return TableResult(str(t.rel), ra[0][0], rb[0][0], ra == rb,
                           note="" if ra == rb else "no primary key: the differing rows cannot be located")
    if not t.key_is_int:
        return _merge(pair, t, rh, ra[0][0], rb[0][0])
    key = sql.Identifier(t.key[0])
    bounds = pair.both(sql.SQL("SELECT min({k}), max({k}) FROM {t}").format(k=key, t=t.rel.ident))
    lows = [r[0][0] for r in bounds if r[0][0] is not None]
    highs = [r[0][1] for r in bounds if r[0][1] is not None]
    if not lows:
        return TableResult(str(t.rel), 0, 0, True)
    lo, hi = min(lows), max(highs) + 1
    total_a, total_b = ra[0][0], rb[0][0]
    changed, only_a, only_b = [], [], []
    pending = [(lo, hi)]
    first = True
    while pending:
        lo_, hi_ = pending.pop()
        width = hi_ - lo_
        n = min(FIRST_BUCKETS if first else BUCKETS, max(width, 1))
        # bucket i holds the keys k with i * width <= (k - lo) * n < (i + 1) * width;
        # the first pass covers the whole table, so it needs no range condition (a seq scan)
        where = sql.SQL("") if first else sql.SQL(" WHERE {k} >= %s AND {k} < %s").format(k=key)
        q = sql.SQL("SELECT ({k} - %s::bigint) * %s::bigint / %s::bigint, count(*), {agg}({h}) FROM {t}{w}"
                    " GROUP BY 1").format(k=key, h=rh, t=t.rel.ident, agg=pair.agg, w=where)
        ra, rb = pair.both(q, [lo_, n, width] + ([] if first else [lo_, hi_]))
        a, b = {r[0]: r[1:] for r in ra}, {r[0]: r[1:] for r in rb}
        first = False
        for bucket in sorted(set(a) | set(b)):
            if a.get(bucket) == b.get(bucket):
                continue
            b_lo = lo_ + (bucket * width + n - 1) // n
            b_hi = lo_ + ((bucket + 1) * width + n - 1) // n
            rows = max(a.get(bucket, (0,))[0], b.get(bucket, (0,))[0])
            if rows <= LEAF or b_hi - b_lo <= LEAF:
                c, oa, ob = _leaf(pair, t, key, rh, b_lo, b_hi)
                changed, only_a, only_b = changed + c, only_a + oa, only_b + ob
            else:
                pending.append((b_lo, b_hi))
    same = not (changed or only_a or only_b) and total_a == total_b
    return TableResult(str(t.rel), total_a, total_b, same, sorted(changed), sorted(only_a), sorted(only_b))


def _leaf(pair: Pair, t: Table, key, rh, lo: int, hi: int):
    q = sql.SQL("SELECT {k}, {h} FROM {t} WHERE {k} >= %s AND {k} < %s").format(k=key, h=rh, t=t.rel.ident)
    ra, rb = pair.both(q, [lo, hi])
    a, b = dict(ra), dict(rb)
    changed = [k for k in a.keys() & b.keys() if a[k] != b[k]]
    return changed, sorted(a.keys() - b.keys()), sorted(b.keys() - a.keys())


def _merge(pair: Pair, t: Table, rh, rows_a: int, rows_b: int) -> TableResult:
    """Non-integer keys: stream (key, hash) in key order from both sides and merge."""
    keys = sql.SQL(", ").join(sql.Identifier(k) for k in t.key)
    q = sql.SQL("SELECT ({}), {} FROM {} ORDER BY {}").format(keys, rh, t.rel.ident, keys)
    ra, rb = pair.both(q)
    a, b = dict(ra), dict(rb)
    changed = sorted(k for k in a.keys() & b.keys() if a[k] != b[k])
    return TableResult(str(t.rel), rows_a, rows_b, False, changed, sorted(a.keys() - b.keys()),
                       sorted(b.keys() - a.keys()))


@dataclass
class Comparison:
    results: list[TableResult]
    side_by_side: dict[str, object] = field(default_factory=dict)

    def table(self):
        import pandas as pd

        return pd.DataFrame([(r.table, r.rows_a, r.rows_b, r.same, len(r.changed), len(r.only_a), len(r.only_b), r.note)
                             for r in self.results], columns=["table", "rows_a", "rows_b", "same", "changed",
                                                              "only_in_a", "only_in_b", "note"])

    def findings(self, a: str, b: str, *, max_examples: int = 20) -> list[Finding]:
        found = []
        for r in self.results:
            if r.same:
                continue
            keys = [f"changed {k}" for k in r.changed] + [f"only in {a}: {k}" for k in r.only_a] + \
                   [f"only in {b}: {k}" for k in r.only_b]
            found.append(Finding(f"compare {r.table}", Status.CRIT, f"{r.rows_a} rows in {a}, {r.rows_b} in {b}: "
                                 f"{len(r.changed)} changed, {len(r.only_a)} only in {a}, {len(r.only_b)} only in {b}"
                                 + (f"; {r.note}" if r.note else ""), value=r.differing,
                                 examples=tuple(keys[:max_examples])))
        if not found:
            found.append(Finding("compare", Status.OK, f"{len(self.results)} tables identical in {a} and {b} "
                                 f"({sum(r.rows_a for r in self.results):,} rows)"))
        return found


def compare(a: Target, b: Target, *, tables_glob: str = "*", max_examples: int = 20) -> Comparison:
    """Every selected table of `a` compared with the same table in `b`."""
    pair = Pair(a, b)
    try:
        ta, tb = tables(pair.a, tables_glob), tables(pair.b, tables_glob)
        results = []
        for name in sorted(ta.keys() | tb.keys()):
            if name not in ta or name not in tb:
                side = b.name if name not in ta else a.name
                results.append(TableResult(name, 0, 0, False, note=f"table only in {side}"))
                continue
            if ta[name].columns != tb[name].columns:
                results.append(TableResult(name, 0, 0, False, note="columns differ: compare the schemas first"))
                continue
            results.append(compare_table(pair, ta[name]))
        out = Comparison(results)
        for r in results:
            if r.differing and name_in(ta, r.table):
                out.side_by_side[r.table] = side_by_side(pair, ta[r.table], r, a.name, b.name, limit=max_examples)
        return out
    finally:
        pair.close()


def name_in(tables_: dict, name: str) -> bool:
    return name in tables_ and bool(tables_[name].key)


def side_by_side(pair: Pair, t: Table, r: TableResult, a: str, b: str, *, limit: int = 20):
    """The differing rows from both sides, one line per key, each column as (a, b)."""
    import pandas as pd

    keys = (r.changed + r.only_a + r.only_b)[:limit]
    key = sql.Identifier(t.key[0]) if len(t.key) == 1 else sql.SQL("({})").format(
        sql.SQL(", ").join(sql.Identifier(k) for k in t.key))
    q = sql.SQL("SELECT * FROM {} WHERE {} = ANY(%s)").format(t.rel.ident, key)
    ra, rb = pair.both(q, [keys])
    names = [c for c, _ in t.columns]
    fa = pd.DataFrame(ra, columns=names).set_index(list(t.key))
    fb = pd.DataFrame(rb, columns=names).set_index(list(t.key))
    both = pd.concat({a: fa, b: fb}, axis=1).swaplevel(axis=1).sort_index()
    return both[[(c, side) for c in names if c not in t.key for side in (a, b)]]


def highlight(frame):
    """A Styler marking, for each column, the cells where the two sides differ."""
    def mark(row):
        styles = []
        for col in row.index:
            other = [c for c in row.index if c[0] == col[0] and c != col]
            differs = other and str(row[col]) != str(row[other[0]])
            styles.append("background-color: #ffd7d5" if differs else "")
        return styles
    return frame.style.apply(mark, axis=1)

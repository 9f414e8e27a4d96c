"""Compare two databases table by table, row for row, without pulling the rows across.

Hashing happens in the server, through each type's built-in `hash*extended`
function (the functions hash partitioning relies on, so they agree across
servers and major versions). A table's fingerprint is its row count and, per
column, the XOR of its values' hashes seeded by the row's key: one pass
settles equal tables and names the columns that differ. Where they differ
and the primary key is an integer, rows are hashed on the key and those
columns only, the key range is split into buckets fingerprinted on both
sides at once, and only the differing buckets are split again (the
data-diff idea) until they are small enough to compare key by key; then
just the differing rows are fetched, side by side.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import date, datetime, time
from typing import Any

import psycopg
from psycopg import sql

from ..base import db
from ..base.errors import ConfirmationRequired
from ..base.findings import Finding, Status
from ..base.targets import Target
from ..facts import catalog
from ..facts.catalog import Rel, selected
from . import security

HASHERS = {
    "int2": "hashint2extended",
    "int4": "hashint4extended",
    "int8": "hashint8extended",
    "text": "hashtextextended",
    "varchar": "hashtextextended",
    "bpchar": "hashbpcharextended",
    "numeric": "hash_numeric_extended",
    "float4": "hashfloat4extended",
    "float8": "hashfloat8extended",
    "timestamp": "timestamp_hash_extended",
    "timestamptz": "timestamp_hash_extended",
    "date": "hashint4extended",
    "uuid": "uuid_hash_extended",
    "jsonb": "jsonb_hash_extended",
    "oid": "hashoidextended",
    "bool": "hashint4extended",
}
CASTS = {"bool": "int4", "timestamptz": "timestamp"}
SESSION = (
    "SET TimeZone = 'UTC'",
    "SET DateStyle = 'ISO, YMD'",
    "SET extra_float_digits = 1",
    "SET IntervalStyle = 'iso_8601'",
    "SET bytea_output = 'hex'",
)  # text forms equal on both sides
FIRST_BUCKETS = 4096  # the first split is a full scan: make it fine, so few levels follow
BUCKETS = 64
LEAF = 8192


@dataclass(frozen=True)
class Table:
    rel: Rel
    columns: tuple[tuple[str, str], ...]  # (name, type name)
    key: tuple[str, ...]  # primary key columns
    key_is_int: bool

    @property
    def source(self) -> sql.Composable:
        """The table's own rows, without those of inheritance children."""
        return sql.SQL("ONLY {}").format(self.rel.ident)


def tables(conn: psycopg.Connection, pattern: str = "*") -> dict[str, Table]:
    # rows are compared where they are stored: each partition and inheritance child alone (ONLY),
    # never again through its parent
    rels = [Rel(s, t) for s, t in catalog.tables(conn, kinds="r") if selected(Rel(s, t), pattern)]
    out = {}
    for rel in rels:
        cols = conn.execute(
            "SELECT a.attname, t.typname FROM pg_attribute a JOIN pg_type t ON t.oid = a.atttypid"
            " WHERE a.attrelid = %s::regclass AND a.attnum > 0 AND NOT a.attisdropped ORDER BY"
            " a.attnum",
            [rel.ident.as_string(conn)],
        ).fetchall()
        names, types = catalog.primary_key(conn, rel.ident.as_string(conn))
        out[str(rel)] = Table(
            rel, tuple(cols), names, len(names) == 1 and types[0] in ("int2", "int4", "int8")
        )
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


def row_hash(columns, seed: sql.Composable | None = None) -> sql.Composable:
    """SQL for one bigint hash of a whole row (or of `columns` of it), from the columns' own hash
    functions.

    Each column's hash is seeded with the hash of the columns before it (the
    first with `seed`, 0 by default): one call per column and nothing else,
    and a value moved to another column or another row changes the result.
    The functions are strict, so a row holding a NULL yields NULL there;
    COALESCE then evaluates, for those rows only, a NULL-safe form: each
    column hashed with its position as seed, NULL as minus that position,
    XORed with the seed, then hashed once more.
    """
    chain: sql.Composable = seed if seed is not None else sql.Literal(0)
    parts = [] if seed is None else [seed]
    for position, (name, typ) in enumerate(columns, start=1):
        chain = _column_hash(name, typ, chain)
        parts.append(
            sql.SQL("coalesce({}, {})").format(
                _column_hash(name, typ, sql.Literal(position)), sql.Literal(-position)
            )
        )
    if not columns:
        return sql.SQL("hashint8extended({}, 0)").format(chain)
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
    columns: list[str] = field(default_factory=list)  # the non-key columns whose contents differ

    @property
    def differing(self) -> int:
        return len(self.changed) + len(self.only_a) + len(self.only_b)


class Pair:
    """Two connections, one per side; `both()` runs a query on each at once."""

    def __init__(self, a: Target, b: Target):
        self.a, self.b = _connect(a), _connect(b)
        self.pool = ThreadPoolExecutor(max_workers=2)
        # bit_xor (PostgreSQL 14+) aggregates row hashes much faster than sum()'s numeric
        self.agg = sql.SQL(
            "bit_xor"
            if min(self.a.info.server_version, self.b.info.server_version) >= 140000
            else "sum"
        )

    def both(self, query, params=None):
        fa = self.pool.submit(lambda: self.a.execute(query, params).fetchall())
        fb = self.pool.submit(lambda: self.b.execute(query, params).fetchall())
        return fa.result(), fb.result()

    def close(self):
        self.pool.shutdown()
        self.a.close()
        self.b.close()


def column_fingerprints(t: Table, agg: sql.Composable) -> sql.Composable:
    """count(*) and, per column, the XOR of its values' hashes, each seeded by the row's key.

    The seed ties a value to its row, so a value moved between rows changes
    the column's fingerprint; a NULL adds nothing, and a row added or taken
    away changes the count and the key's fingerprint. Equal fingerprints for
    every column mean equal tables; unequal ones also say which columns
    differ, so that locating rows needs to hash only those.
    """
    if not t.key:
        return sql.SQL("count(*), {}({})").format(agg, row_hash(t.columns))
    seed = _key_seed(t)
    parts = [
        sql.SQL("{}({})").format(agg, _column_hash(n, typ, sql.Literal(0) if n in t.key else seed))
        for n, typ in t.columns
    ]
    return sql.SQL("count(*), {}").format(sql.SQL(", ").join(parts))


def _key_seed(t: Table) -> sql.Composable:
    """A bigint standing for the row's key: an integer key itself, other keys their hash."""
    if t.key_is_int:
        return sql.SQL("({})::int8").format(sql.Identifier(t.key[0]))
    return row_hash([(n, typ) for n, typ in t.columns if n in t.key])


def compare_table(pair: Pair, t: Table) -> TableResult:
    # level 0: one plain aggregate of per-column fingerprints, about the price of the plainest
    # full-content check; equal tables stop here, others learn which columns differ
    ra, rb = pair.both(
        sql.SQL("SELECT {} FROM {}").format(column_fingerprints(t, pair.agg), t.source)
    )
    (fa,), (fb,) = ra, rb
    if fa == fb or not t.key:
        return TableResult(
            str(t.rel),
            fa[0],
            fb[0],
            fa == fb,
            note="" if fa == fb else "no primary key: the differing rows cannot be located",
        )
    columns = [
        c for c, x, y in zip(t.columns, fa[1:], fb[1:], strict=True) if x != y and c[0] not in t.key
    ]
    # only the key and the columns that differ are hashed from here on
    rh = row_hash(columns, seed=_key_seed(t))
    changed, only_a, only_b = _bisect(pair, t, rh) if t.key_is_int else _merge(pair, t, rh)
    same = not (changed or only_a or only_b) and fa[0] == fb[0]
    return TableResult(
        str(t.rel),
        fa[0],
        fb[0],
        same,
        sorted(changed),
        sorted(only_a),
        sorted(only_b),
        columns=[c for c, _ in columns],
    )


def _bisect(pair: Pair, t: Table, rh):
    key = sql.Identifier(t.key[0])
    # the fingerprints differ, so at least one side has rows
    bounds = pair.both(sql.SQL("SELECT min({k}), max({k}) FROM {t}").format(k=key, t=t.source))
    lows = [r[0][0] for r in bounds if r[0][0] is not None]
    highs = [r[0][1] for r in bounds if r[0][1] is not None]
    lo, hi = min(lows), max(highs) + 1
    changed, only_a, only_b = [], [], []
    pending = [(lo, hi)]
    first = True
    while pending:
        lo_, hi_ = pending.pop()
        width = hi_ - lo_
        step = -(-width // (FIRST_BUCKETS if first else BUCKETS))  # keys per bucket, rounded up
        # bucket i holds the keys lo + i * step <= k < lo + (i + 1) * step; the arithmetic stays
        # in the key's own type where it cannot overflow (no cast per row); the first pass covers
        # the whole table, so it needs no range condition (a seq scan)
        kind = sql.SQL(
            "int8" if hi_ - lo_ > 2**31 - 1 or dict(t.columns)[t.key[0]] == "int8" else "int4"
        )
        where = sql.SQL("") if first else sql.SQL(" WHERE {k} >= %s AND {k} < %s").format(k=key)
        q = sql.SQL(
            "SELECT ({k}::{kind} - %s::{kind}) / %s::{kind}, {agg}({h}) FROM {t}{w} GROUP BY 1"
        ).format(k=key, kind=kind, h=rh, t=t.source, agg=pair.agg, w=where)
        ra, rb = pair.both(q, [lo_, step] + ([] if first else [lo_, hi_]))
        a, b = dict(ra), dict(rb)
        first = False
        for bucket in sorted(set(a) | set(b)):
            if a.get(bucket) == b.get(bucket):
                continue
            b_lo = lo_ + bucket * step
            b_hi = min(b_lo + step, hi_)
            if b_hi - b_lo <= LEAF:  # at most LEAF keys: compare them one by one
                c, oa, ob = _leaf(pair, t, key, rh, b_lo, b_hi)
                changed, only_a, only_b = changed + c, only_a + oa, only_b + ob
            else:
                pending.append((b_lo, b_hi))
    return changed, only_a, only_b


def _leaf(pair: Pair, t: Table, key, rh, lo: int, hi: int):
    q = sql.SQL("SELECT {k}, {h} FROM {t} WHERE {k} >= %s AND {k} < %s").format(
        k=key, h=rh, t=t.source
    )
    ra, rb = pair.both(q, [lo, hi])
    a, b = dict(ra), dict(rb)
    changed = [k for k in a.keys() & b.keys() if a[k] != b[k]]
    return changed, sorted(a.keys() - b.keys()), sorted(b.keys() - a.keys())


def _merge(pair: Pair, t: Table, rh):
    """Non-integer keys: stream (key, hash) in key order from both sides and merge."""
    keys = sql.SQL(", ").join(sql.Identifier(k) for k in t.key)
    q = sql.SQL("SELECT {}, {} FROM {} ORDER BY {}").format(keys, rh, t.source, keys)
    ra, rb = pair.both(q)

    def keyed(rows):  # a composite key becomes a tuple of its typed values
        return {(r[0] if len(r) == 2 else tuple(r[:-1])): r[-1] for r in rows}

    a, b = keyed(ra), keyed(rb)
    changed = [k for k in a.keys() & b.keys() if a[k] != b[k]]
    return changed, sorted(a.keys() - b.keys()), sorted(b.keys() - a.keys())


def pg_text(value: Any) -> str:
    """A key or value as PostgreSQL writes it (`1986-06-26`, `(10001, 1986-06-26)`, `NULL`),
    never as Python's repr."""
    if value is None:
        return "NULL"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, tuple):
        return "(" + ", ".join(pg_text(v) for v in value) + ")"
    if isinstance(value, (bytes, memoryview)):
        return "\\x" + bytes(value).hex()
    if isinstance(value, datetime):
        return value.isoformat(sep=" ")
    if isinstance(value, (date, time)):
        return value.isoformat()
    return str(value)


EMAIL_IN_TEXT = re.compile(r"[^@\s]+@[^@\s]+\.[A-Za-z]{2,}")
PHONE_IN_TEXT = re.compile(r"\+?[0-9][0-9 ().-]{6,}[0-9]")


class Masker:
    """Personal-looking values as short keyed hashes: within one comparison equal values show the
    same token, so a reader still sees what differs, and nothing of the value itself.

    A value is personal-looking when its column's name is (`security.PERSONAL_NAME`, the rule
    the security review uses) or when it is text holding an e-mail address or a phone number.
    The key is random per comparison: tokens cannot be matched across reports.
    """

    def __init__(self, *, enabled: bool = True):
        self.enabled = enabled
        self._key = secrets.token_bytes(16)

    def personal(self, column: str) -> bool:
        return bool(security.PERSONAL_NAME.search(column)) and not security.KEY_NAME.search(column)

    def value(self, value: Any, column: str = "") -> Any:
        if not self.enabled or value is None or isinstance(value, (bool, int, float)):
            return value
        text = str(value)
        if not (
            (column and self.personal(column))
            or (
                isinstance(value, str)
                and (EMAIL_IN_TEXT.search(text) or PHONE_IN_TEXT.search(text))
            )
        ):
            return value
        return "#" + hmac.new(self._key, text.encode(), hashlib.sha256).hexdigest()[:10]

    def row(self, row: tuple, columns: list[str]) -> tuple:
        return tuple(self.value(v, c) for v, c in zip(row, columns, strict=True))

    def key(self, key: Any, columns: tuple[str, ...]) -> Any:
        if isinstance(key, tuple):
            return self.row(key, list(columns))
        return self.value(key, columns[0] if columns else "")


@dataclass
class Comparison:
    results: list[TableResult]
    side_by_side: dict[str, object] = field(default_factory=dict)
    masker: Masker = field(default_factory=Masker)
    keys: dict[str, tuple[str, ...]] = field(default_factory=dict)  # each table's key columns

    def table(self):
        import pandas as pd  # here: spares pandas (~270 ms) at start-up

        return pd.DataFrame(
            [
                (
                    r.table,
                    r.rows_a,
                    r.rows_b,
                    r.same,
                    len(r.changed),
                    len(r.only_a),
                    len(r.only_b),
                    ", ".join(r.columns),
                    r.note,
                )
                for r in self.results
            ],
            columns=[
                "table",
                "rows_a",
                "rows_b",
                "same",
                "changed",
                "only_in_a",
                "only_in_b",
                "columns_differing",
                "note",
            ],
        )

    def shown(self, key: Any, columns: tuple[str, ...]) -> str:
        """A row's key as PostgreSQL writes it, its personal-looking parts as tokens."""
        return pg_text(self.masker.key(key, columns))

    def findings(self, a: str, b: str, *, max_examples: int = 20) -> list[Finding]:
        found = []
        for r in self.results:
            if r.same:
                continue
            columns = self.keys.get(r.table, ())
            keys = [f"changed {self.shown(k, columns)}" for k in r.changed]
            keys += [f"only in {a}: {self.shown(k, columns)}" for k in r.only_a]
            keys += [f"only in {b}: {self.shown(k, columns)}" for k in r.only_b]
            found.append(
                Finding(
                    f"compare {r.table}",
                    Status.CRIT,
                    f"{r.rows_a} rows in {a}, {r.rows_b} in {b}: {len(r.changed)} changed,"
                    f" {len(r.only_a)} only in {a}, {len(r.only_b)} only in {b}"
                    + (f" (columns differing: {', '.join(r.columns)})" if r.changed else "")
                    + (f"; {r.note}" if r.note else ""),
                    value=r.differing,
                    examples=tuple(keys[:max_examples]),
                )
            )
        if not found:
            found.append(
                Finding(
                    "compare",
                    Status.OK,
                    f"{len(self.results)} tables identical in {a} and {b} "
                    f"({sum(r.rows_a for r in self.results):,} rows)",
                )
            )
        return found


def compare(
    a: Target,
    b: Target,
    *,
    tables_glob: str = "*",
    max_examples: int = 20,
    show_values: bool = False,
) -> Comparison:
    """Every selected table of `a` compared with the same table in `b`. Personal-looking values
    of the differing rows are shown as tokens (see `Masker`) unless `show_values`, which neither
    side may be protected for."""
    if show_values and (a.protected or b.protected):
        protected = a.name if a.protected else b.name
        raise ConfirmationRequired(
            f"show_values is refused with protected target {protected!r}: its personal data would "
            "be written into the report; compare without it (values show as tokens)"
        )
    masker = Masker(enabled=not show_values)
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
                results.append(
                    TableResult(name, 0, 0, False, note="columns differ: compare the schemas first")
                )
                continue
            results.append(compare_table(pair, ta[name]))
        out = Comparison(results, masker=masker, keys={n: t.key for n, t in ta.items()})
        for r in results:
            if r.differing and name_in(ta, r.table):
                out.side_by_side[r.table] = side_by_side(
                    pair, ta[r.table], r, a.name, b.name, limit=max_examples, masker=masker
                )
        return out
    finally:
        pair.close()


def name_in(tables_: dict, name: str) -> bool:
    return name in tables_ and bool(tables_[name].key)


def side_by_side(
    pair: Pair,
    t: Table,
    r: TableResult,
    a: str,
    b: str,
    *,
    limit: int = 20,
    masker: Masker | None = None,
):
    """The differing rows from both sides, one line per key, each column as (a, b); personal-looking
    values through `masker`."""
    masker = masker or Masker()
    import pandas as pd  # here: spares pandas (~270 ms) at start-up

    keys = (r.changed + r.only_a + r.only_b)[:limit]
    if len(t.key) == 1:
        q = sql.SQL("SELECT * FROM {} WHERE {} = ANY(%s)").format(
            t.source, sql.Identifier(t.key[0])
        )
        ra, rb = pair.both(q, [keys])
    else:
        rows = sql.SQL(", ").join(
            sql.SQL("({})").format(sql.SQL(", ").join(map(sql.Literal, k))) for k in keys
        )
        q = sql.SQL("SELECT * FROM {} WHERE ({}) IN ({})").format(
            t.source, sql.SQL(", ").join(sql.Identifier(k) for k in t.key), rows
        )
        ra, rb = pair.both(q)
    names = [c for c, _ in t.columns]
    ra, rb = ([masker.row(row, names) for row in rows] for rows in (ra, rb))
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

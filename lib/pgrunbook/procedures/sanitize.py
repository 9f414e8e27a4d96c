"""Masking rules for personal data, applied in the server as rows load, and the proof that none
remains.

Rules come from a TOML file (the Fixia one is sanitize.toml at the project
root). Every fake is derived from the value and a salt (sha256 on the server),
so the same person maps to the same fake in every table and every refresh,
and a unique column stays unique. The masking runs in BEFORE INSERT triggers
during a restore's data pass; the salt reaches them as a session setting of
that pass only: it is never in SQL text, a catalog, a report or a log.

The residual check compares hashes of the source's values with hashes of the
copy's, across the two servers, streaming the source's hashes (never its
values) into a temporary table on the copy's side.
"""

from __future__ import annotations

import hashlib
import os
import queue
import secrets
import tomllib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from ..base import config, db
from ..base.errors import PgRunbookError
from ..base.findings import Finding, Status
from ..base.targets import Target
from ..checks import security
from ..facts import catalog
from ..facts.catalog import Rel

SALT_ENV = "PGRUNBOOK_SANITIZE_SALT"
SALT_COLUMN = sql.SQL("pgrunbook_salt")  # the name masking expressions read the salt by
TEXT_TYPES = catalog.TEXT_TYPES
DATE_TYPES = ("date", "timestamp", "timestamptz")
KINDS: dict[str, tuple[str, ...]] = {  # rule -> the column types it applies to (empty: any)
    "keep": (),
    "null": (),
    "email": TEXT_TYPES,
    "name": TEXT_TYPES,
    "phone": TEXT_TYPES,
    "city": TEXT_TYPES,
    "text": TEXT_TYPES,
    "token": TEXT_TYPES,
    "shift_date": DATE_TYPES,
}
UNIQUE_SAFE = ("keep", "email", "token")  # rules that keep distinct values distinct
# bounded (an address's local part is at most 64 characters, a phone number at most 20), so that a
# TOAST-sized value without any contact in it is scanned in linear time, not quadratic
EMAIL_TOKEN = r"[A-Za-z0-9._%+-]{1,64}@[A-Za-z0-9.-]{1,253}\.[A-Za-z]{2,24}"
PHONE_TOKEN = r"\+?[0-9][0-9 ().-]{6,18}[0-9]"
PLACEHOLDER = "Text removed in the staging copy."


class RulesError(PgRunbookError):
    "The masking rules file is missing or invalid"


class SaltMissing(PgRunbookError):
    "No salt is set for deterministic masking"


@dataclass(frozen=True)
class Rule:
    table: str  # schema.table
    column: str
    kind: str
    options: tuple[tuple[str, Any], ...] = ()

    def option(self, name: str, default: Any) -> Any:
        return dict(self.options).get(name, default)

    @property
    def rel(self) -> Rel:
        schema, name = self.table.split(".", 1)
        return Rel(schema, name)

    def __str__(self) -> str:
        opts = ", ".join(f"{k}={v!r}" for k, v in self.options)
        return f"{self.kind}({opts})" if opts else self.kind


@dataclass(frozen=True)
class Rules:
    path: Path
    rules: dict[tuple[str, str], Rule]
    email_domain: str = "example.invalid"

    def masked(self) -> list[Rule]:
        return [r for r in self.rules.values() if r.kind != "keep"]

    def tables(self) -> dict[str, list[Rule]]:
        out: dict[str, list[Rule]] = {}
        for r in self.masked():
            out.setdefault(r.table, []).append(r)
        return out


def rules_path(name: str) -> Path:
    """`name` as given if it exists, else relative to the project home."""

    path = Path(name)
    return path if path.is_absolute() or path.exists() else config.settings().home / path


def load(name: str) -> Rules:
    """The rules in file `name`; RulesError naming the file and the key at fault."""
    path = rules_path(name)
    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise RulesError(
            f"no rules file {path}: pass rules=PATH (the Fixia rules are sanitize.toml)"
        ) from None
    except tomllib.TOMLDecodeError as e:
        raise RulesError(f"{path} is not valid TOML: {e}") from None
    settings = data.get("settings", {})
    rules = {}
    for table, columns in data.get("columns", {}).items():
        qualified = table if "." in table else f"public.{table}"
        for column, spec in columns.items():
            rule = _rule(path, qualified, column, spec)
            rules[(qualified, column)] = rule
    unknown = set(data) - {"settings", "columns"}
    if unknown:
        raise RulesError(
            f"{path}: unknown section {sorted(unknown)[0]!r}: use [settings] and [columns.TABLE]"
        )
    return Rules(path, rules, settings.get("email_domain", "example.invalid"))


def _rule(path: Path, table: str, column: str, spec: Any) -> Rule:
    where = f"{path}: {table}.{column}"
    if isinstance(spec, str):
        spec = {"rule": spec}
    if not isinstance(spec, dict) or "rule" not in spec:
        raise RulesError(f'{where}: write a rule name or {{ rule = "...", ... }}')
    kind = spec["rule"]
    if kind not in KINDS:
        raise RulesError(f"{where}: unknown rule {kind!r}: choose from {', '.join(KINDS)}")
    options = tuple(sorted((k, v) for k, v in spec.items() if k != "rule"))
    allowed = {
        "email": {"domain"},
        "name": {"prefix"},
        "text": {"placeholder"},
        "shift_date": {"days"},
    }
    if bad := {k for k, _ in options} - allowed.get(kind, set()):
        raise RulesError(f"{where}: rule {kind!r} takes no option {sorted(bad)[0]!r}")
    days = dict(options).get("days", 30)
    if kind == "shift_date" and (not isinstance(days, int) or days < 1):
        raise RulesError(f"{where}: days must be a whole number of at least 1")
    return Rule(table, column, kind, options)


# -- the salt -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Salt:
    value: str = field(repr=False)
    source: str

    @property
    def fingerprint(self) -> str:
        """Tells two salts apart without showing either."""
        return hashlib.sha256(b"pgrunbook-salt:" + self.value.encode()).hexdigest()[:8]

    def __repr__(self) -> str:
        return f"Salt(from {self.source}, fingerprint {self.fingerprint})"


def salt(*, sandbox: bool) -> Salt:
    """The salt from $PGRUNBOOK_SANITIZE_SALT; for a sandbox source, one kept in the state
    folder."""
    if value := os.environ.get(SALT_ENV):
        return Salt(value, f"${SALT_ENV}")
    if not sandbox:
        raise SaltMissing(
            f"set {SALT_ENV} to a long random secret (e.g. `openssl rand -hex 32`) kept like a "
            "password: the same salt gives the same fakes at every refresh"
        )

    path = config.settings().state_dir / "sanitize.salt"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_hex(32))
    return Salt(path.read_text().strip(), "the sandbox's salt file")


def salt_status(*, sandbox: bool) -> Finding:
    """Whether a salt is there, without reading it into the report."""
    try:
        return salt_finding(salt(sandbox=sandbox))
    except SaltMissing as e:
        return Finding("salt", Status.WARN, f"not set: {e}")


def salt_finding(s: Salt) -> Finding:
    weak = len(s.value) < 16
    return Finding(
        "salt",
        Status.WARN if weak else Status.OK,
        f"from {s.source}, fingerprint {s.fingerprint}"
        + (": shorter than 16 characters" if weak else ""),
    )


# -- the plan -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Column:
    table: str
    column: str
    type: str
    not_null: bool
    unique: bool


def columns(conn: psycopg.Connection) -> list[Column]:
    """Every column of every user table, with whether a unique index covers it alone."""
    rows = conn.execute(
        "SELECT n.nspname || '.' || c.relname, a.attname, t.typname, a.attnotnull, EXISTS (SELECT"
        " 1 FROM pg_index x WHERE x.indrelid = c.oid AND x.indisunique  AND x.indnkeyatts = 1 AND"
        " x.indkey[0] = a.attnum) FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid JOIN"
        " pg_namespace n ON n.oid = c.relnamespace JOIN pg_type t ON t.oid = a.atttypid WHERE"
        " c.relkind IN ('r', 'p') AND a.attnum > 0 AND NOT a.attisdropped AND"
        f" {catalog.USER_SCHEMAS} AND {catalog.NOT_EXTENSION} ORDER BY 1, a.attnum"
    ).fetchall()
    return [Column(*r) for r in rows]


@dataclass
class Plan:
    rows: list[dict[str, Any]]
    findings: list[Finding]

    def frame(self):
        """Every column with its rule and verdict, as a DataFrame."""
        import pandas as pd  # here: spares pandas (~270 ms) at start-up

        return pd.DataFrame(
            self.rows, columns=["table", "column", "type", "rule", "status", "note"]
        )

    @property
    def blocked(self) -> bool:
        return any(f.status is Status.CRIT for f in self.findings)


def plan(conn: psycopg.Connection, rules: Rules, *, sample: int = 200) -> Plan:
    """Each column's rule; personal-looking columns without one, and rules that cannot apply, are
    CRIT."""
    cols = columns(conn)
    personal = dict(security.personal_columns(conn, sample=sample))
    rows, unruled, wrong = [], [], []
    for c in cols:
        rule = rules.rules.get((c.table, c.column))
        why = personal.get(f"{c.table}.{c.column}")
        if rule is None:
            status, note = (
                ("CRIT", f"looks personal ({why}): write a rule or keep") if why else ("OK", "kept")
            )
            if why:
                unruled.append(f"{c.table}.{c.column} ({why})")
        else:
            problem = _unfit(rule, c)
            status, note = (
                ("CRIT", problem)
                if problem
                else ("OK", "masked" if rule.kind != "keep" else "kept (rule)")
            )
            if problem:
                wrong.append(f"{c.table}.{c.column}: {problem}")
        rows.append(
            {
                "table": c.table,
                "column": c.column,
                "type": c.type,
                "rule": str(rule) if rule else "",
                "status": status,
                "note": note,
            }
        )
    known = {(c.table, c.column) for c in cols}
    wrong += [
        f"{t}.{col}: no such column in the source"
        for t, col in rules.rules
        if (t, col) not in known
    ]
    masked = len([r for r in rules.masked() if (r.table, r.column) in known])
    found = [
        Finding(
            "rules",
            Status.OK,
            f"{masked} columns masked, {len(cols) - masked} kept, from {rules.path.name}",
            value=masked,
        )
    ]
    found.append(
        Finding(
            "unruled personal columns",
            Status.CRIT if unruled else Status.OK,
            (
                f"{len(unruled)} columns look personal and have no rule: add a rule or 'keep' to "
                f"{rules.path.name}"
                if unruled
                else "every personal-looking column has a rule"
            ),
            examples=tuple(unruled),
        )
    )
    found.append(
        Finding(
            "rule errors",
            Status.CRIT if wrong else Status.OK,
            (
                f"{len(wrong)} rules cannot apply: {wrong[0]}"
                if wrong
                else "every rule fits its column"
            ),
            examples=tuple(wrong),
        )
    )
    found.append(phrases_in_source(conn, rules))
    return Plan(rows, found)


def plan_for(target: Target, rules: Rules) -> Plan:
    """`plan` on a read-only session of `target`."""
    with db.connect(target, application="pgrunbook/staging_refresh") as conn:
        return plan(conn, rules)


def verdict(p: Plan, mode: str) -> Finding:
    """Whether the plan lets the refresh go on: an incomplete plan stops apply and fails plan
    mode."""
    blocking = [f for f in p.findings if f.status is Status.CRIT]
    if blocking:
        return Finding(
            "plan",
            Status.CRIT,
            f"the rules are incomplete ({', '.join(f.check for f in blocking)}): "
            "nothing is copied until they are fixed",
        )
    return Finding(
        "plan",
        Status.OK,
        "complete: every personal-looking column has a fitting rule"
        + ("" if mode == "apply" else "; run with mode=apply to refresh"),
    )


def _unfit(rule: Rule, c: Column) -> str:
    if KINDS[rule.kind] and c.type not in KINDS[rule.kind]:
        return f"rule {rule.kind!r} does not apply to type {c.type}"
    if rule.kind == "null" and c.not_null:
        return "rule 'null' on a NOT NULL column"
    if c.unique and rule.kind not in UNIQUE_SAFE:
        return f"rule {rule.kind!r} would break the column's unique index: use email or token"
    return ""


# -- masking --------------------------------------------------------------------------------------

SALT_SETTING = "pgrunbook.salt"  # a session setting of the restore's data pass only
MASK_PREFIX = "pgrunbook_mask_"


def _hash(salt: sql.Composable, column: sql.Composable) -> sql.Composable:
    return sql.SQL("encode(sha256(convert_to({} || {}::text, 'UTF8')), 'hex')").format(salt, column)


def expression(
    rule: Rule,
    domain: str,
    *,
    column: sql.Composable | None = None,
    salt: sql.Composable = SALT_COLUMN,
) -> sql.Composable:
    """The SQL computing the masked value of `rule.column` (or of `column`), given the SQL naming
    the salt.

    The rule's options are SQL literals: they are not secret. The salt is
    never one: it is named by `salt` (the triggers' variable, or a bound parameter).
    """
    col = column if column is not None else sql.Identifier(rule.column)
    h = _hash(salt, col)
    lit = sql.Literal
    if rule.kind == "null":
        return sql.SQL("NULL")
    if rule.kind == "email":
        expr = sql.SQL("'user-' || left({}, 20) || '@' || {}::text").format(
            h, lit(rule.option("domain", domain))
        )
    elif rule.kind == "name":
        expr = sql.SQL("{}::text || ' ' || upper(left({}, 8))").format(
            lit(rule.option("prefix", "Person")), h
        )
    elif rule.kind == "phone":
        digits = sql.SQL("mod(('x' || left({}, 15))::bit(60)::bigint, 10000000000)").format(h)
        expr = sql.SQL("'+999 ' || lpad({}::text, 10, '0')").format(digits)
    elif rule.kind == "city":
        expr = sql.SQL(
            "CASE WHEN {c} ~ ',' THEN btrim(regexp_replace({c}, '^[^,]*,', '')) ELSE {c} END"
        ).format(c=col)
    elif rule.kind == "text":
        expr = sql.SQL("{}::text").format(lit(rule.option("placeholder", PLACEHOLDER)))
    elif rule.kind == "token":
        expr = sql.SQL("'redacted-' || left({}, 32)").format(h)
    elif (
        rule.kind == "shift_date"
    ):  # 1..days days, forward or back, never zero; reveals only the shift
        x = sql.SQL("(hashtextextended({} || {}::text, 0) & 2147483647)").format(salt, col)
        expr = sql.SQL(
            "{c} + (CASE WHEN mod({x}, 2) = 0 THEN 1 ELSE -1 END) * (mod({x} / 2, {d}) + 1)"
            " * interval '1 day'"
        ).format(c=col, x=x, d=lit(int(rule.option("days", 30))))
    else:
        raise RulesError(f"no masking for rule {rule.kind!r}")
    return sql.SQL("CASE WHEN {} IS NULL THEN NULL ELSE {} END").format(col, expr)


@dataclass(frozen=True)
class Masked:
    table: str
    columns: tuple[str, ...]


def _function(rel: Rel) -> sql.Identifier:
    return sql.Identifier(rel.schema, f"{MASK_PREFIX}{rel.name}"[:63])


def install_masks(conn: psycopg.Connection, rules: Rules) -> list[Masked]:
    """Before the data is loaded: a BEFORE INSERT trigger per table masks each row as COPY writes
    it.

    So the source's values are never stored in the copy, not even in dead
    rows or WAL. The salt is read from the session setting pgrunbook.salt,
    which only the data pass of the restore has; without it the load fails.
    """
    done = []
    present = {(c.table, c.column) for c in columns(conn)}
    for table, ruled in sorted(rules.tables().items()):
        ruled = [r for r in ruled if (r.table, r.column) in present]
        if not ruled:
            continue
        assigns = sql.SQL(" ").join(
            sql.SQL("NEW.{c} := {e};").format(
                c=sql.Identifier(r.column),
                e=expression(
                    r, rules.email_domain, column=sql.SQL("NEW.{}").format(sql.Identifier(r.column))
                ),
            )
            for r in ruled
        )
        body = (
            sql.SQL(
                "DECLARE pgrunbook_salt text := current_setting({}); BEGIN IF pgrunbook_salt = ''"
                " THEN RAISE EXCEPTION 'no salt for masking'; END IF; {} RETURN NEW; END"
            )
            .format(sql.Literal(SALT_SETTING), assigns)
            .as_string(conn)
        )
        fn, rel = _function(ruled[0].rel), ruled[0].rel
        conn.execute(
            sql.SQL("CREATE FUNCTION {}() RETURNS trigger LANGUAGE plpgsql AS {}").format(
                fn, sql.Literal(body)
            )
        )
        conn.execute(
            sql.SQL(
                "CREATE TRIGGER {} BEFORE INSERT ON {} FOR EACH ROW EXECUTE FUNCTION {}()"
            ).format(sql.Identifier(MASK_PREFIX.rstrip("_")), rel.ident, fn)
        )
        done.append(Masked(table, tuple(r.column for r in ruled)))
    return done


def remove_masks(conn: psycopg.Connection, masked: list[Masked]) -> None:
    """After the data is loaded: the triggers and their functions go; nothing of the rules stays in
    the copy."""
    for m in masked:
        rel = Rel(*m.table.split(".", 1))
        conn.execute(
            sql.SQL("DROP TRIGGER {} ON {}").format(
                sql.Identifier(MASK_PREFIX.rstrip("_")), rel.ident
            )
        )
        conn.execute(sql.SQL("DROP FUNCTION {}()").format(_function(rel)))


def data_env(s: Salt) -> dict[str, str]:
    """The environment of the restore's data pass: the salt as a session setting, never on a command
    line."""
    value = s.value.replace("\\", "\\\\").replace(" ", "\\ ")
    options = f"-c {SALT_SETTING}={value}"
    return {
        "PGOPTIONS": (
            f"{os.environ['PGOPTIONS']} {options}" if os.environ.get("PGOPTIONS") else options
        )
    }


def masked_frame(done: list[Masked], row_counts: dict[str, int] | None = None):
    import pandas as pd  # here: spares pandas (~270 ms) at start-up

    counts = row_counts or {}
    return pd.DataFrame(
        [
            {"table": m.table, "columns": ", ".join(m.columns), "rows": counts.get(m.table)}
            for m in done
        ],
        columns=["table", "columns", "rows"],
    )


# -- proof: nothing personal is left --------------------------------------------------------------


def _changed_by_rule(rule: Rule) -> sql.Composable:
    """Source values the rule changes (salt-free, so it can run on the source)."""
    col = sql.Identifier(rule.column)
    if rule.kind == "city":
        return sql.SQL("{} ~ ','").format(col)
    if rule.kind == "text":
        return sql.SQL("{} <> {}").format(col, sql.Literal(rule.option("placeholder", PLACEHOLDER)))
    return sql.SQL("true")


def _stream(
    source: psycopg.Connection, query: sql.Composable, copy: psycopg.Connection, table: str
) -> None:
    """Stream one bigint column from `query` on the source into temporary `table` on the copy."""
    copy.execute(
        sql.SQL("CREATE TEMP TABLE IF NOT EXISTS {} (h bigint)").format(sql.Identifier(table))
    )
    copy.execute(sql.SQL("TRUNCATE {}").format(sql.Identifier(table)))
    with source.cursor().copy(sql.SQL("COPY ({}) TO STDOUT (FORMAT binary)").format(query)) as out:
        with copy.cursor().copy(
            sql.SQL("COPY {} (h) FROM STDIN (FORMAT binary)").format(sql.Identifier(table))
        ) as into:
            for chunk in out:
                into.write(chunk)
    copy.execute(sql.SQL("ANALYZE {}").format(sql.Identifier(table)))


def _residual_column(
    source: psycopg.Connection, copy: psycopg.Connection, rule: Rule, *, max_examples: int = 20
) -> Finding:
    """Rows of the copy whose `rule.column` still holds a value of the source (by hash); OK when
    none."""
    name = f"residual {rule.table}.{rule.column}"
    if rule.kind == "null":
        return Finding(name, Status.OK, "set to NULL")
    col, rel = sql.Identifier(rule.column), rule.rel
    key, _ = catalog.primary_key(copy, rel.ident.as_string(copy))
    keys = sql.SQL(", ").join(sql.Identifier("t", k) for k in key) if key else sql.SQL("t.ctid")
    if rule.kind == "shift_date":  # dates collide across rows: compare row by row, by key
        if not key:
            return Finding(
                name, Status.UNKNOWN, "no primary key to compare shifted dates row by row"
            )
        pair = sql.SQL("hashtextextended(row({})::text || '|' || {}::text, 0)")
        _stream(
            source,
            sql.SQL("SELECT {} FROM {} t WHERE {} IS NOT NULL").format(
                pair.format(keys, sql.Identifier("t", rule.column)), rel.ident, col
            ),
            copy,
            "pgrb_source_hashes",
        )
        hit = pair.format(keys, sql.Identifier("t", rule.column))
    else:
        _stream(
            source,
            sql.SQL(
                "SELECT DISTINCT hashtextextended({}::text, 0) FROM {} WHERE {} IS NOT NULL AND {}"
            ).format(col, rel.ident, col, _changed_by_rule(rule)),
            copy,
            "pgrb_source_hashes",
        )
        hit = sql.SQL("hashtextextended({}::text, 0)").format(sql.Identifier("t", rule.column))
    rows = copy.execute(
        sql.SQL(
            "SELECT row({})::text, count(*) OVER () FROM {} t JOIN pg_temp.pgrb_source_hashes s ON"
            " s.h = {} LIMIT %s"
        ).format(keys, rel.ident, hit),
        [max_examples],
    ).fetchall()
    if rows:
        return Finding(
            name,
            Status.CRIT,
            f"{rows[0][1]} rows still hold a value from the source (rule {rule.kind})",
            value=rows[0][1],
            examples=tuple(f"row {r[0]}" for r in rows),
        )
    return Finding(name, Status.OK, "no source value left")


def _summary(per_column: list[Finding]) -> list[Finding]:
    bad = [f for f in per_column if f.status is not Status.OK]
    clean = len(per_column) - len(bad)
    return bad + [
        Finding(
            "residual values",
            Status.CRIT if bad else Status.OK,
            f"{clean} masked columns hold no source value"
            + (
                f"; {len(bad)} do or cannot be checked"
                if bad
                else " (compared by hash across the two databases)"
            ),
            value=clean,
        )
    ]


def _checked(copy: psycopg.Connection, rules: Rules) -> list[Rule]:
    present = {(c.table, c.column) for c in columns(copy)}
    return [r for r in rules.masked() if (r.table, r.column) in present]


def residual(
    source: psycopg.Connection, copy: psycopg.Connection, rules: Rules, *, max_examples: int = 20
) -> list[Finding]:
    """For each masked column, copy rows still holding a source value (by hash); CRIT when any."""
    return _summary(
        [
            _residual_column(source, copy, r, max_examples=max_examples)
            for r in _checked(copy, rules)
        ]
    )


def prove(
    source: Target, copy: Target, rules: Rules, *, workers: int = 2, max_examples: int = 20
) -> list[Finding]:
    """`residual` and `contact_leaks` together, spread over `workers` pairs of sessions."""

    with db.connect(copy, statement_timeout="0", application="pgrunbook/refresh") as conn:
        jobs: queue.SimpleQueue = queue.SimpleQueue()
        for rule in _checked(conn, rules):
            jobs.put(rule)
    jobs.put(None)  # None: the contact-leak search
    jobs.put("phrases")  # names and streets inside free text

    def work() -> list[tuple[Rule | None, Finding]]:
        done = []
        with (
            db.connect(source, statement_timeout="0", application="pgrunbook/refresh") as src,
            db.connect(
                copy, readonly=False, statement_timeout="0", application="pgrunbook/refresh"
            ) as dst,
        ):
            while True:
                try:
                    rule = jobs.get_nowait()
                except queue.Empty:
                    return done
                done.append(
                    (
                        rule,
                        (
                            contact_leaks(src, dst, rules, max_examples=max_examples)
                            if rule is None
                            else (
                                phrase_leaks(src, dst, rules)
                                if rule == "phrases"
                                else _residual_column(src, dst, rule, max_examples=max_examples)
                            )
                        ),
                    )
                )

    with ThreadPoolExecutor(max_workers=workers) as pool:
        results = [x for f in [pool.submit(work) for _ in range(workers)] for x in f.result()]
    order = {r: i for i, r in enumerate(rules.masked())}
    per_column = sorted(
        (pair for pair in results if isinstance(pair[0], Rule)), key=lambda p: order[p[0]]
    )
    return (
        _summary([f for _, f in per_column])
        + [f for r, f in results if r is None]
        + [f for r, f in results if r == "phrases"]
    )


SYNTHETIC = (
    "email",
    "name",
    "phone",
    "token",
    "null",
    "text",
)  # output made from a hash or a literal only
CONTACT = f"({EMAIL_TOKEN})|({PHONE_TOKEN})"


def _numbered_values(cols: list[Column]) -> list[tuple[sql.Composable, sql.Composable]]:
    """Per table of `cols`: the table, and a VALUES list of (the column's number in `cols`, its
    text),
    so that one scan of each table reads all its columns."""
    tables: dict[str, list[tuple[int, Column]]] = {}
    for n, c in enumerate(cols):
        tables.setdefault(c.table, []).append((n, c))
    return [
        (
            Rel(*table.split(".", 1)).ident,
            sql.SQL(", ").join(
                sql.SQL("({}, t.{}::text)").format(sql.Literal(n), sql.Identifier(c.column))
                for n, c in numbered
            ),
        )
        for table, numbered in tables.items()
    ]


def _tokens(cols: list[Column], *, by_column: bool) -> sql.Composable:
    """Hashes of the email- and phone-shaped substrings of `cols` (one scan per table), with the
    column's number."""
    parts = [
        sql.SQL(
            "SELECT v.n, hashtextextended(coalesce(m[1], m[2]), 0) AS h FROM {} t,"
            " LATERAL (VALUES {}) v(n, x), regexp_matches(v.x, {}, 'g') m"
        ).format(rel, values, sql.Literal(CONTACT))
        for rel, values in _numbered_values(cols)
    ]
    union = sql.SQL(" UNION ALL ").join(parts)
    if by_column:
        return sql.SQL("SELECT n, h, count(*) FROM ({}) s GROUP BY n, h").format(union)
    return sql.SQL("SELECT DISTINCT h FROM ({}) s").format(union)


# -- names and streets inside free text ------------------------------------------------------------
#
# A masked name or street can still sit in a kept text column ("customer Leslie Collier lives at 814
# Cortez Loop"). The source's masked names (first and last of one row together, and each name value)
# and the streets the city rule removes are hashed as phrases of 2 to 4 words; every kept text
# column
# is cut into its 2- to 4-word phrases and hashed alike; a phrase in both is a leak. One word alone
# (a
# first name, a city) is too common to be evidence of anything: it is not looked for.

PHRASE = r"^\S+( \S+){1,3}$"  # 2 to 4 words


def _normal(expr: sql.Composable) -> sql.Composable:
    """Lower case, every run of non-alphanumerics one space: 'Collier,  Leslie' -> 'collier
    leslie'."""
    return sql.SQL("btrim(regexp_replace(lower({}), '[^[:alnum:]]+', ' ', 'g'))").format(expr)


def _source_phrases(conn: psycopg.Connection, rules: Rules) -> sql.Composable | None:
    """A query of the hashes of the source's masked names and streets, as phrases; None if it has
    none."""
    present = {(c.table, c.column) for c in columns(conn)}
    by_table: dict[str, list[Rule]] = {}
    for r in rules.masked():
        if r.kind in ("name", "city") and (r.table, r.column) in present:
            by_table.setdefault(r.table, []).append(r)
    parts = []
    for rs in by_table.values():
        names = [
            sql.SQL("{}::text").format(sql.Identifier(r.column)) for r in rs if r.kind == "name"
        ]
        values = (
            [sql.SQL("concat_ws(' ', {})").format(sql.SQL(", ").join(names))]
            if len(names) > 1
            else []
        )
        values += names + [
            sql.SQL("CASE WHEN {0}::text ~ ',' THEN split_part({0}::text, ',', 1) END").format(
                sql.Identifier(r.column)
            )
            for r in rs
            if r.kind == "city"
        ]
        parts.append(
            sql.SQL("SELECT {} AS p FROM {} t, LATERAL (VALUES {}) v(x)").format(
                _normal(sql.SQL("v.x")),
                rs[0].rel.ident,
                sql.SQL(", ").join(sql.SQL("({})").format(v) for v in values),
            )
        )
    if not parts:
        return None
    return sql.SQL("SELECT DISTINCT hashtextextended(p, 0) AS h FROM ({}) s WHERE p ~ {}").format(
        sql.SQL(" UNION ALL ").join(parts), sql.Literal(PHRASE)
    )


def _text_phrases(cols: list[Column]) -> sql.Composable:
    """(n, h): the hash of every 2- to 4-word phrase of the text columns `cols` (n: the column's
    number)."""
    parts = [
        sql.SQL(
            "SELECT v.n, hashtextextended(array_to_string(w.a[i:i + k - 1], ' '), 0) AS h"
            " FROM {} t, LATERAL (VALUES {}) v(n, x),"
            " LATERAL (SELECT regexp_split_to_array({}, ' ') AS a) w,"
            " generate_series(2, 4) k, generate_series(1, cardinality(w.a) - k + 1) i"
            " WHERE v.x ~ '[[:alnum:]][^[:alnum:]]+[[:alnum:]]'"
        ).format(rel, values, _normal(sql.SQL("v.x")))
        for rel, values in _numbered_values(cols)
    ]
    return sql.SQL(" UNION ALL ").join(parts)


def _kept_text(conn: psycopg.Connection, rules: Rules) -> list[Column]:
    masked = {(r.table, r.column) for r in rules.masked()}
    return [c for c in columns(conn) if c.type in TEXT_TYPES and (c.table, c.column) not in masked]


def _phrase_finding(
    cols: list[Column], hits: list[tuple[int, int]], *, status: Status, where: str
) -> Finding:
    if not hits:
        return Finding(
            "names in text",
            Status.OK,
            f"no masked name or street of the source in {where}'s "
            f"{len(cols)} kept text columns (phrases of 2 to 4 words, compared by hash)",
        )
    named = [f"{cols[n].table}.{cols[n].column}: {count} phrases" for n, count in hits]
    return Finding(
        "names in text",
        status,
        f"{len(named)} kept text columns of {where} hold names or streets "
        f"of the source's masked columns: {named[0]}; give them a rule (text or null)",
        examples=tuple(named),
    )


def phrases_in_source(conn: psycopg.Connection, rules: Rules) -> Finding:
    """Plan mode: the source's kept text columns that hold its own masked names or streets
    (WARN)."""
    cols, names = _kept_text(conn, rules), _source_phrases(conn, rules)
    if not cols or names is None:
        return Finding(
            "names in text", Status.OK, "no masked name or street column, or no kept text to search"
        )
    hits = conn.execute(
        sql.SQL(
            "WITH src AS ({}) SELECT n, count(*) FROM ({}) p WHERE h IN (SELECT h FROM src)"
            " GROUP BY n ORDER BY n"
        ).format(names, _text_phrases(cols))
    ).fetchall()
    return _phrase_finding(cols, hits, status=Status.WARN, where="the source")


def phrase_leaks(source: psycopg.Connection, copy: psycopg.Connection, rules: Rules) -> Finding:
    """The proof: the copy's kept text columns holding the source's masked names or streets
    (CRIT)."""
    cols, names = _kept_text(copy, rules), _source_phrases(source, rules)
    if not cols or names is None:
        return Finding(
            "names in text", Status.OK, "no masked name or street column, or no kept text to search"
        )
    _stream(source, names, copy, "pgrb_source_phrases")
    hits = copy.execute(
        sql.SQL(
            "SELECT n, count(*) FROM ({}) p WHERE h IN (SELECT h FROM pg_temp.pgrb_source_phrases)"
            " GROUP BY n ORDER BY n"
        ).format(_text_phrases(cols))
    ).fetchall()
    return _phrase_finding(cols, hits, status=Status.CRIT, where="the copy")


def personal_sources(source: psycopg.Connection, rules: Rules) -> set[tuple[str, str]]:
    """(table, column) of the source whose values are personal: those the rules mask, and those that
    look personal (by name or content) and no rule keeps on purpose."""
    kept = {(r.table, r.column) for r in rules.rules.values() if r.kind == "keep"}
    looks = {tuple(name.rsplit(".", 1)) for name, _ in security.personal_columns(source)}
    return ({(r.table, r.column) for r in rules.masked()} | looks) - kept


def contact_leaks(
    source: psycopg.Connection, copy: psycopg.Connection, rules: Rules, *, max_examples: int = 20
) -> Finding:
    """The source's personal emails and phones that appear in the copy's text columns.

    What is looked for are the email- and phone-shaped strings of the
    source's personal columns: those the rules mask, and those that look
    personal and no rule keeps (see `personal_sources`). Data kept on
    purpose is not a source of them (a title reading "1980-1990" is
    not a phone number of anyone). Columns whose rule makes their values from
    a hash or a literal alone are not searched (nothing of the source can be
    in them; the residual check covers them); every other text column of the
    copy is. The copy is searched first: when it holds no such string at
    all, the source is not read.
    """
    synthetic = {(r.table, r.column) for r in rules.masked() if r.kind in SYNTHETIC}
    cols = [
        c for c in columns(copy) if c.type in TEXT_TYPES and (c.table, c.column) not in synthetic
    ]
    if not cols:
        return Finding("contact leaks", Status.OK, "no text column of the copy to search")
    copy.execute("CREATE TEMP TABLE IF NOT EXISTS pgrb_copy_tokens (n int, h bigint, hits bigint)")
    copy.execute("TRUNCATE pgrb_copy_tokens")
    found = copy.execute(
        sql.SQL("INSERT INTO pgrb_copy_tokens {}").format(_tokens(cols, by_column=True))
    ).rowcount
    if found:
        personal = personal_sources(source, rules)
        src_cols = [
            c for c in columns(source) if c.type in TEXT_TYPES and (c.table, c.column) in personal
        ]
        if not src_cols:
            return Finding(
                "contact leaks",
                Status.OK,
                "no masked text column in the source to take contact "
                f"values from ({found} email- or phone-shaped strings in the copy's kept text)",
            )
        _stream(source, _tokens(src_cols, by_column=False), copy, "pgrb_source_hashes")
        leaks = copy.execute(
            "SELECT n, sum(hits) FROM pgrb_copy_tokens WHERE h IN (SELECT h FROM"
            " pg_temp.pgrb_source_hashes) GROUP BY n ORDER BY n"
        ).fetchall()
        if leaks:
            named = [
                f"{cols[n].table}.{cols[n].column}: {hits} emails or phones of the source's masked"
                " columns"
                for n, hits in leaks
            ]
            return Finding(
                "contact leaks",
                Status.CRIT,
                f"{len(named)} columns hold the source's emails or phones: {named[0]}",
                examples=tuple(named[:max_examples]),
            )
    return Finding(
        "contact leaks",
        Status.OK,
        "no email or phone of the source's masked columns in the copy's "
        f"{len(cols)} text columns not made by a rule ({found} distinct email- or phone-shaped "
        "strings there, none of them personal values of the source)",
    )

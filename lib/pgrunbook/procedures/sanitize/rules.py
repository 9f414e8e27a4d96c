"""Masking rules for personal data, read from a TOML file, and the salt every fake is derived with.

Rules come from a TOML file (the Fixia one is sanitize.toml at the project
root). Every fake is derived from the value and a salt (sha256 on the server),
so the same person maps to the same fake in every table and every refresh,
and a unique column stays unique.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import secrets
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from ...base import config
from ...base.errors import PgRunbookError
from ...base.findings import Finding, Status
from ...facts import catalog
from ...facts.catalog import Rel

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
    path: Path | None  # None: no rules written for this application yet
    rules: dict[tuple[str, str], Rule]
    email_domain: str = "example.invalid"
    app: str = ""  # the application they belong to

    @property
    def written(self) -> bool:
        return self.path is not None

    @property
    def name(self) -> str:
        return self.path.name if self.path else "no rules file"

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


class NoRules(RulesError):
    "The application has no masking rules: a refresh cannot mask what nobody described"


def for_refresh(source, target, given: str = "") -> Rules:
    """The masking rules of a refresh: the file `given`, else the target's application's (its
    `sanitize`), else the source's; where neither has any, none (never another application's):
    plan mode then proposes a start from the source's own columns, apply is refused."""
    if given:
        return load(given)
    for app in (target.app, source.app):
        if app.sanitize:
            return dataclasses.replace(load(app.sanitize), app=app.name)
    return Rules(None, {}, app=target.app.name or source.app.name)


def require_written(rules: Rules, target_name: str) -> None:
    """NoRules (one line, before anything starts) where there are no rules to apply."""
    if not rules.written:
        whose = f"app {rules.app!r}" if rules.app else f"target {target_name!r} (it names no app)"
        raise NoRules(
            f"no masking rules for {whose}: write them first (plan mode proposes a start from the"
            ' source\'s columns), then set sanitize = "FILE" on the app or pass -p rules FILE'
        )


def load(name: str) -> Rules:
    """The rules in file `name`; RulesError naming the file and the key at fault."""
    path = rules_path(name)
    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise RulesError(
            f"no rules file {path}: pass rules=PATH, a TOML file of masking rules"
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

"""Where things live and what the project configures.

The project home is the folder holding `runbooks/` and `pyproject.toml`: found
from $PGRUNBOOK_HOME, else by walking up from the working directory, else the
source tree this package was installed from (editable installs).

Configuration is `[tool.pgrunbook]` in pyproject.toml, then `pgrunbook.toml`
beside it, then the file named by $PGRUNBOOK_CONFIG, each adding to and
overriding the one before. What belongs to one application (its assertions,
its migration history, its roles, its seed) is an `[apps.NAME]` table that
targets name with `app = "NAME"`; a target without one is any PostgreSQL
database, and nothing application-specific is asked of it.
"""

from __future__ import annotations

import difflib
import os
import tomllib
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

from .errors import ConfigError
from .thresholds import Limits

DEFAULT_TARGETS: dict[str, dict[str, Any]] = {
    "production": {"url_env": "DATABASE_URL", "protected": True},
    "staging": {"url_env": "STAGING_DATABASE_URL", "protected": False},
}


APP_KEYS = {"checks", "migrations", "migrations_path", "app_roles", "seed", "sanitize"}
MIGRATION_KINDS = ("alembic", "prisma", "sql")


@dataclass(frozen=True)
class App:
    """What one application brings to the targets that run it."""

    name: str = ""
    checks: tuple[str, ...] = ()  # folders of SQL assertion files, relative to the project home
    migrations: str = ""  # alembic (migrations/), prisma (a Prisma Migrate folder) or sql (files)
    migrations_path: str = ""  # prisma and sql: the folder, relative to the project home
    app_roles: tuple[str, ...] = ()  # roles the application connects as
    seed: bool = False  # the seed runbook's data fits this application's schema
    sanitize: str = ""  # its masking rules (TOML) for staging refreshes, relative to the home


@dataclass(frozen=True)
class Settings:
    home: Path
    state_dir: Path
    reports_dir: Path
    backups_dir: Path
    pitr_dir: Path  # WAL archives, base backups and restored clusters, per server
    targets: dict[str, dict[str, Any]] = field(default_factory=dict)
    app_roles: tuple[str, ...] = ()
    apps: dict[str, App] = field(default_factory=dict)
    limits: dict[str, Any] = field(default_factory=dict)
    fleets: dict[str, dict[str, Any]] = field(default_factory=dict)
    notify: dict[str, Any] = field(default_factory=dict)  # [notify]: channels, site_url
    repository: str = ""  # where backups live: s3://bucket/prefix (empty: backups_dir)
    encrypt: bool = True  # a remote repository is written encrypted unless this says otherwise
    object_lock_days: int = 0  # S3 Object Lock: every object in the repository kept this long
    reports: str = ""  # a shared audit archive: s3://bucket/prefix (empty: reports_dir only)
    wal_program: str = ""  # how the server's user runs pgrunbook (empty: this Python, -m pgrunbook)

    def app_of(self, target: str) -> App:
        """The application profile of target `target` (an empty one when it names none)."""
        name = self.targets.get(target, {}).get("app", "")
        return self.apps.get(name, App())

    @property
    def runbooks_dir(self) -> Path:
        return self.home / "runbooks"

    @property
    def migrations_dir(self) -> Path:
        return self.home / "migrations"

    @property
    def sandbox_dir(self) -> Path:
        return self.state_dir / "sandbox"


def _looks_like_home(path: Path) -> bool:
    return (path / "runbooks").is_dir() and (path / "pyproject.toml").is_file()


def find_home() -> Path:
    """The project home (see module docstring)."""
    if env := os.environ.get("PGRUNBOOK_HOME"):
        return Path(env).resolve()
    here = Path.cwd().resolve()
    for candidate in (here, *here.parents):
        if _looks_like_home(candidate):
            return candidate
    source_tree = Path(__file__).resolve().parents[3]  # lib/pgrunbook/base/config.py
    if _looks_like_home(source_tree):
        return source_tree
    return here


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        return {}
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path} is not valid TOML ({e}): fix or remove it") from None


def _merge(base: dict[str, Any], more: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in more.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def _own_file(path: Path) -> dict[str, Any]:
    """pgrunbook.toml or $PGRUNBOOK_CONFIG: its settings at the top, or under [tool.pgrunbook]
    as pyproject.toml holds them (copied from there), never both; every key checked."""
    data = _read_toml(path)
    tool = data.pop("tool", None)
    if tool is not None:
        if not isinstance(tool, dict) or set(tool) != {"pgrunbook"} or data:
            raise ConfigError(
                f"{path} mixes [tool.*] tables with other settings: write its settings at the top"
                " ([targets.NAME]) or all under [tool.pgrunbook], not both"
            )
        data = tool["pgrunbook"]
    _known(data, path)
    return data


def _known(config: dict[str, Any], where: Path) -> None:
    """Refuse a key pgrunbook does not read: a setting read as nothing is a false OK waiting to
    happen (a misspelt retention, a table under the wrong heading)."""
    known = set(NOT_LIMITS) | Limits.names()
    if unknown := sorted(set(config) - known):
        close = [m for k in unknown for m in difflib.get_close_matches(k, known, n=1)]
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ConfigError(
            f"{where}: unknown setting {unknown[0]!r}{hint}: see docs/targets.md for what a"
            " configuration holds"
        )
    for name, spec in (config.get("targets") or {}).items():
        if isinstance(spec, dict) and (bad := sorted(set(spec) - TARGET_KEYS - Limits.names())):
            close = difflib.get_close_matches(bad[0], TARGET_KEYS | Limits.names(), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ConfigError(
                f"{where}: [targets.{name}] has unknown setting {bad[0]!r}{hint}: a target takes"
                f" {', '.join(sorted(TARGET_KEYS))} and any limit"
            )


def _project_config(home: Path, extra: str) -> dict[str, Any]:
    pyproject = home / "pyproject.toml"
    config = _read_toml(pyproject).get("tool", {}).get("pgrunbook", {})
    _known(config, pyproject)
    config = _merge(config, _own_file(home / "pgrunbook.toml"))
    if extra:
        if not Path(extra).is_file():
            raise ConfigError(
                f"$PGRUNBOOK_CONFIG names {extra}, which is not a file: fix or unset it"
            )
        config = _merge(config, _own_file(Path(extra)))
    return config


def _checked(config: dict[str, Any], targets: dict[str, dict[str, Any]]) -> None:
    """Every value whose kind matters, checked before any run starts: limits (for every target
    and the project), and switches that are true or false (a string "false" is not false)."""
    for where, spec in [("[tool.pgrunbook]", config)] + [
        (f"[targets.{n}]", s) for n, s in targets.items()
    ]:
        for key in ("protected", "encrypt"):
            if key in spec and not isinstance(spec[key], bool):
                raise ConfigError(
                    f"{key} = {spec[key]!r} in {where}: write {key} = true or {key} = false"
                    " (without quotes)"
                )
    base = Limits().with_values(config, where="[tool.pgrunbook]")
    for name, spec in targets.items():
        base.with_values(spec, where=f"[tool.pgrunbook.targets.{name}]")


def _app(name: str, spec: Any) -> App:
    if not isinstance(spec, dict) or set(spec) - APP_KEYS:
        raise ConfigError(f"[apps.{name}] takes only {', '.join(sorted(APP_KEYS))}")
    checks = spec.get("checks", ())
    kind = spec.get("migrations", "")
    if kind and kind not in MIGRATION_KINDS:
        raise ConfigError(
            f"[apps.{name}] migrations = {kind!r}: choose from {', '.join(MIGRATION_KINDS)}"
        )
    return App(
        name,
        (checks,) if isinstance(checks, str) else tuple(checks),
        kind,
        str(spec.get("migrations_path", "")),
        tuple(spec.get("app_roles", ())),
        bool(spec.get("seed", False)),
        str(spec.get("sanitize", "")),
    )


def _dir(env: str, default: Path) -> Path:
    return Path(os.environ[env]).resolve() if os.environ.get(env) else default


@cache
def _load(home: Path, state: str, reports: str, backups: str, pitr: str, extra: str) -> Settings:
    config = _project_config(home, extra)
    state_dir = _dir("PGRUNBOOK_STATE_DIR", home / ".pgrunbook")
    apps = {name: _app(name, spec) for name, spec in config.get("apps", {}).items()}
    targets = {**DEFAULT_TARGETS}
    fleets = {name: _fleet(name, spec, home) for name, spec in config.get("fleets", {}).items()}
    listed = {t: s for f in fleets.values() for t, s in f.get("entries", {}).items()}
    for name, spec in {**listed, **config.get("targets", {})}.items():
        if not isinstance(spec, dict) or (
            "url_env" not in spec and "service" not in spec and name != "sandbox"
        ):
            raise ConfigError(
                f'target {name!r} needs url_env = "VARIABLE" (or service = "NAME" from'
                " pg_service.conf) in its table"
            )
        if spec.get("app") and spec["app"] not in apps:
            raise ConfigError(
                f"target {name!r} names app {spec['app']!r}, which has no [apps.{spec['app']}]"
                " table"
            )
        targets[name] = {"protected": name == "production", **targets.get(name, {}), **spec}
    _checked(config, targets)
    return Settings(
        home=home,
        state_dir=state_dir,
        reports_dir=_dir("PGRUNBOOK_REPORTS_DIR", home / "reports"),
        backups_dir=(backups_dir := _dir("PGRUNBOOK_BACKUPS_DIR", state_dir / "backups")),
        pitr_dir=_dir("PGRUNBOOK_PITR_DIR", backups_dir / "pitr"),
        targets=targets,
        app_roles=tuple(config.get("app_roles", ())),
        apps=apps,
        limits={k: v for k, v in config.items() if k not in NOT_LIMITS},
        fleets=fleets,
        notify=dict(config.get("notify", {})),
        repository=str(config.get("repository", "")),
        encrypt=bool(config.get("encrypt", True)),
        wal_program=str(config.get("wal_program", "")),
        reports=str(config.get("reports", "")),
        object_lock_days=config.get("object_lock_days", 0),
    )


NOT_LIMITS = ("targets", "apps", "app_roles", "fleets", "repository", "encrypt", "wal_program",
              "reports", "object_lock_days", "notify")  # fmt: skip


TARGET_KEYS = {"url_env", "service", "protected", "app", "tags", "repository", "encrypt",
               "object_lock_days", "heartbeat_url_env", "staging"}  # fmt: skip
FLEET_KEYS = {"targets", "tags", "file"}
FILE_COLUMNS = ("name", "url_env", "service", "tags", "protected", "app")


def _fleet(name: str, spec: Any, home: Path) -> dict[str, Any]:
    """A fleet's selection (`targets`: names or globs, `tags`) and, from its `file`, the targets
    it brings (a CSV a team generates: name, url_env or service, tags, protected, app)."""
    if not isinstance(spec, dict) or not spec or set(spec) - FLEET_KEYS:
        raise ConfigError(
            f"[fleets.{name}] takes {', '.join(sorted(FLEET_KEYS))} (at least one of them)"
        )
    out = {"targets": list(spec.get("targets", ())), "tags": list(spec.get("tags", ()))}
    if file := spec.get("file"):
        path = Path(file) if Path(file).is_absolute() else home / file
        out["entries"] = _fleet_file(name, path)
    return out


def _fleet_file(fleet: str, path: Path) -> dict[str, dict[str, Any]]:
    import csv  # here: only fleets with a file need it

    try:
        with path.open(newline="") as f:
            rows = list(csv.DictReader(f))
    except FileNotFoundError:
        raise ConfigError(f"[fleets.{fleet}] file {path} does not exist") from None
    entries: dict[str, dict[str, Any]] = {}
    for n, row in enumerate(rows, start=2):
        unknown = set(row) - set(FILE_COLUMNS)
        name = (row.get("name") or "").strip()
        if unknown or not name or not (row.get("url_env") or row.get("service")):
            raise ConfigError(
                f"{path} line {n}: each row needs name and url_env or service (columns:"
                f" {', '.join(FILE_COLUMNS)})"
            )
        spec: dict[str, Any] = {
            k: row[k].strip() for k in ("url_env", "service", "app") if (row.get(k) or "").strip()
        }
        spec["tags"] = (row.get("tags") or "").split()
        spec["protected"] = (row.get("protected") or "").strip().lower() in ("true", "yes", "1")
        entries[name] = spec
    return entries


def project_path(name: str | Path) -> Path:
    """`name` as given when absolute, else relative to the project home."""
    path = Path(name)
    return path if path.is_absolute() else settings().home / path


def settings() -> Settings:
    """The settings in force now (environment variables are read on each call)."""
    env = os.environ
    return _load(
        find_home(),
        env.get("PGRUNBOOK_STATE_DIR", ""),
        env.get("PGRUNBOOK_REPORTS_DIR", ""),
        env.get("PGRUNBOOK_BACKUPS_DIR", ""),
        env.get("PGRUNBOOK_PITR_DIR", ""),
        env.get("PGRUNBOOK_CONFIG", ""),
    )

"""Where things live and what the project configures.

The project home is the folder holding `runbooks/` and `pyproject.toml`: found
from $PGRUNBOOK_HOME, else by walking up from the working directory, else the
source tree this package was installed from (editable installs).
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

from .errors import ConfigError

DEFAULT_TARGETS: dict[str, dict[str, Any]] = {
    "production": {"url_env": "DATABASE_URL", "protected": True},
    "staging": {"url_env": "STAGING_DATABASE_URL", "protected": False},
}


@dataclass(frozen=True)
class Settings:
    home: Path
    state_dir: Path
    reports_dir: Path
    backups_dir: Path
    pool_limit: int = 20
    targets: dict[str, dict[str, Any]] = field(default_factory=dict)
    app_roles: tuple[str, ...] = ()

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
    source_tree = Path(__file__).resolve().parents[2]
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


def _project_config(home: Path) -> dict[str, Any]:
    config = _read_toml(home / "pyproject.toml").get("tool", {}).get("pgrunbook", {})
    own = _read_toml(home / "pgrunbook.toml")
    targets = {**config.get("targets", {}), **own.get("targets", {})}
    return {**config, **own, "targets": targets}


def _dir(env: str, default: Path) -> Path:
    return Path(os.environ[env]).resolve() if os.environ.get(env) else default


@cache
def _load(home: Path, state: str, reports: str, backups: str) -> Settings:
    config = _project_config(home)
    state_dir = _dir("PGRUNBOOK_STATE_DIR", home / ".pgrunbook")
    targets = {**DEFAULT_TARGETS}
    for name, spec in config.get("targets", {}).items():
        if not isinstance(spec, dict) or "url_env" not in spec:
            raise ConfigError(f"target {name!r} needs url_env = \"VARIABLE\" in its table")
        targets[name] = {"protected": name == "production", **spec}
    return Settings(
        home=home,
        state_dir=state_dir,
        reports_dir=_dir("PGRUNBOOK_REPORTS_DIR", home / "reports"),
        backups_dir=_dir("PGRUNBOOK_BACKUPS_DIR", state_dir / "backups"),
        pool_limit=int(config.get("pool_limit", 20)),
        targets=targets,
        app_roles=tuple(config.get("app_roles", ())),
    )


def settings() -> Settings:
    """The settings in force now (environment variables are read on each call)."""
    env = os.environ
    return _load(
        find_home(),
        env.get("PGRUNBOOK_STATE_DIR", ""),
        env.get("PGRUNBOOK_REPORTS_DIR", ""),
        env.get("PGRUNBOOK_BACKUPS_DIR", ""),
    )

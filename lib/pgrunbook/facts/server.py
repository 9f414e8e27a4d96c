"""The server: its version, uptime, settings and extensions."""

from __future__ import annotations

from dataclasses import dataclass

import psycopg
from psycopg.rows import class_row

SERVER = """
    SELECT current_setting('server_version') AS version,
           current_database() AS database,
           date_trunc('second', now() - pg_postmaster_start_time())::text AS uptime
"""

SETTINGS = """
    SELECT name, setting, unit, source
      FROM pg_settings
     WHERE name = ANY(%(names)s)
     ORDER BY name
"""

# What a setting pgrunbook's own session set at connection (source 'client') is for everyone
# else: the database's or role's ALTER ... SET, else the configuration files' (readable with
# pg_read_all_settings), else the built-in default.
ROLE_OR_DATABASE = """
    SELECT split_part(c, '=', 2)
      FROM pg_db_role_setting s, unnest(s.setconfig) AS c
     WHERE s.setdatabase IN (0, (SELECT oid FROM pg_database WHERE datname = current_database()))
       AND s.setrole IN (0, (SELECT oid FROM pg_roles WHERE rolname = session_user))
       AND split_part(c, '=', 1) = %(name)s
     ORDER BY (s.setdatabase <> 0)::int + 2 * (s.setrole <> 0)::int DESC
     LIMIT 1
"""
FILES = """
    SELECT setting FROM pg_file_settings
     WHERE name = %(name)s AND applied IS NOT FALSE AND error IS NULL
     ORDER BY seqno DESC LIMIT 1
"""
BOOT = "SELECT boot_val, unit FROM pg_settings WHERE name = %(name)s"

EXTENSIONS = "SELECT extname AS name, extversion AS version FROM pg_extension ORDER BY 1"


@dataclass(frozen=True)
class Server:
    version: str
    database: str
    uptime: str


@dataclass(frozen=True)
class Setting:
    name: str
    setting: str
    unit: str | None
    source: str


@dataclass(frozen=True)
class Extension:
    name: str
    version: str


def server(conn: psycopg.Connection) -> Server:
    with conn.cursor(row_factory=class_row(Server)) as cur:
        return cur.execute(SERVER).fetchone()


def settings(conn: psycopg.Connection, names: list[str] | tuple[str, ...]) -> dict[str, Setting]:
    """The named settings this role can read (pg_settings hides some from roles without
    pg_read_all_settings), by name: the server's, not what this session set for itself (its
    timeouts, see `db.session_options`)."""
    with conn.cursor(row_factory=class_row(Setting)) as cur:
        found = {s.name: s for s in cur.execute(SETTINGS, {"names": list(names)})}
    return {n: _servers(conn, s) if s.source == "client" else s for n, s in found.items()}


def _servers(conn: psycopg.Connection, ours: Setting) -> Setting:
    args = {"name": ours.name}
    if row := conn.execute(ROLE_OR_DATABASE, args).fetchone():
        return Setting(ours.name, row[0], None, "database or role")
    try:
        with conn.transaction():
            if row := conn.execute(FILES, args).fetchone():
                return Setting(ours.name, row[0], None, "configuration file")
    except psycopg.errors.InsufficientPrivilege:
        boot, unit = conn.execute(BOOT, args).fetchone()
        return Setting(ours.name, boot, unit, "default (the configuration files are not readable"
                       " by this role)")  # fmt: skip
    boot, unit = conn.execute(BOOT, args).fetchone()
    return Setting(ours.name, boot, unit, "default")


def preloaded(conn: psycopg.Connection) -> tuple[str, ...] | None:
    """The libraries in shared_preload_libraries, or None where this role may not read it (it is
    shown to superusers and members of pg_read_all_settings only)."""
    found = settings(conn, ("shared_preload_libraries",)).get("shared_preload_libraries")
    if found is None:
        return None
    return tuple(x.strip().strip('"') for x in found.setting.split(",") if x.strip())


def extensions(conn: psycopg.Connection) -> list[Extension]:
    """The extensions created in the connected database."""
    with conn.cursor(row_factory=class_row(Extension)) as cur:
        return cur.execute(EXTENSIONS).fetchall()

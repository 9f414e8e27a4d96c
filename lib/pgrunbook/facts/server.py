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
    pg_read_all_settings), by name."""
    with conn.cursor(row_factory=class_row(Setting)) as cur:
        return {s.name: s for s in cur.execute(SETTINGS, {"names": list(names)})}


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

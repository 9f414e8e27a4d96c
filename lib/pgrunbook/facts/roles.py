"""Roles and privileges: who exists, with which attributes, which passwords, which grants.

One reading of pg_roles that every role check derives from; pg_authid, where
it is readable, only for whether a password is set, expires, or is an md5
hash: the hashes themselves are never read into Python.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import psycopg
from psycopg.rows import class_row

from .catalog import NOT_EXTENSION, USER_SCHEMAS

ROLES = """
    SELECT rolname AS name,
           oid = 10 AS bootstrap,
           rolsuper AS superuser,
           rolcanlogin AS login,
           rolcreaterole AS createrole,
           rolcreatedb AS createdb,
           rolbypassrls AS bypassrls,
           rolreplication AS replication,
           rolvaliduntil AS valid_until
      FROM pg_roles
     WHERE rolname !~ '^pg_'
     ORDER BY 1
"""

PASSWORDS = """
    SELECT rolname AS name,
           rolcanlogin AS login,
           rolpassword IS NOT NULL AS has_password,
           coalesce(rolpassword LIKE 'md5%%', false) AS md5,
           rolvaliduntil IS NOT NULL AS expires,
           oid = 10 AS bootstrap
      FROM pg_authid
     WHERE rolname !~ '^pg_'
     ORDER BY 1
"""

TABLE_PRIVILEGES = f"""
    SELECT r.rolname AS role,
           n.nspname || '.' || c.relname AS table,
           concat(CASE WHEN has_table_privilege(r.oid, c.oid, 'SELECT') THEN 'S' END,
                  CASE WHEN has_table_privilege(r.oid, c.oid, 'INSERT') THEN 'I' END,
                  CASE WHEN has_table_privilege(r.oid, c.oid, 'UPDATE') THEN 'U' END,
                  CASE WHEN has_table_privilege(r.oid, c.oid, 'DELETE') THEN 'D' END) AS privileges
      FROM pg_roles r
     CROSS JOIN pg_class c
      JOIN pg_namespace n ON n.oid = c.relnamespace
     WHERE r.rolcanlogin
       AND c.relkind IN ('r', 'p', 'v', 'm')
       AND {USER_SCHEMAS}
       AND {NOT_EXTENSION}
     ORDER BY 1, 2
"""

PUBLIC_GRANTS = f"""
    SELECT n.nspname || '.' || c.relname AS table,
           string_agg(a.privilege_type, ', ' ORDER BY a.privilege_type) AS privileges
      FROM pg_class c
      JOIN pg_namespace n ON n.oid = c.relnamespace,
           aclexplode(c.relacl) a
     WHERE a.grantee = 0
       AND {USER_SCHEMAS}
       AND {NOT_EXTENSION}
     GROUP BY n.nspname, c.relname
     ORDER BY 1
"""


@dataclass(frozen=True)
class Role:
    name: str
    bootstrap: bool
    superuser: bool
    login: bool
    createrole: bool
    createdb: bool
    bypassrls: bool
    replication: bool
    valid_until: datetime | None

    @property
    def powers(self) -> tuple[str, ...]:
        """The attributes short of superuser that let a role reach beyond its own data."""
        return tuple(
            name.upper()
            for name in ("createrole", "createdb", "bypassrls", "replication")
            if getattr(self, name)
        )


@dataclass(frozen=True)
class Password:
    name: str
    login: bool
    has_password: bool
    md5: bool
    expires: bool
    bootstrap: bool


@dataclass(frozen=True)
class PublicGrant:
    table: str
    privileges: str


def roles(conn: psycopg.Connection) -> list[Role]:
    """Every role but PostgreSQL's predefined ones (pg_*)."""
    with conn.cursor(row_factory=class_row(Role)) as cur:
        return cur.execute(ROLES).fetchall()


def passwords(conn: psycopg.Connection) -> list[Password] | None:
    """What is known of each role's password, or None where pg_authid is not readable (a managed
    server, a role that is not superuser)."""
    try:
        with conn.transaction(), conn.cursor(row_factory=class_row(Password)) as cur:
            return cur.execute(PASSWORDS).fetchall()
    except psycopg.errors.InsufficientPrivilege:
        return None


def table_privileges(conn: psycopg.Connection):
    """Login roles against tables: the privileges each holds, as letters (S, I, U, D)."""
    import pandas as pd  # here: spares pandas (~270 ms) at start-up

    cur = conn.execute(TABLE_PRIVILEGES)
    return pd.DataFrame(cur.fetchall(), columns=[c.name for c in cur.description])


def public_grants(conn: psycopg.Connection) -> list[PublicGrant]:
    """Tables that grant something to PUBLIC, that is to every role."""
    with conn.cursor(row_factory=class_row(PublicGrant)) as cur:
        return cur.execute(PUBLIC_GRANTS).fetchall()

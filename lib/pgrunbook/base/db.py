"""Connections: every session names itself and carries its own timeouts.

`connect()` opens a psycopg connection whose server-side settings are set at
start-up (application_name, statement_timeout, lock_timeout and, for
inspection, default_transaction_read_only), so no statement ever runs
without them. Connection failures become one-line `ConnectionFailed` errors
with the password masked.
"""

from __future__ import annotations

import re
from urllib.parse import quote, urlsplit

import psycopg
from psycopg import sql
from psycopg.conninfo import make_conninfo

from .errors import ConnectionFailed
from .secrets import redact
from .targets import Target

TAG = "/* pgrunbook */"  # what pgrunbook ends each statement with: its own work, recognized


class TaggedCursor(psycopg.Cursor):
    """A cursor whose statements carry pgrunbook's tag at their end, so that query statistics
    tell its work from the application's (pg_stat_statements keeps a statement's text from its
    first token on: a comment before it is dropped, one after it kept)."""

    def execute(self, query, params=None, **kwargs):
        return super().execute(tag(query), params, **kwargs)


def tag(query):
    """`query` (text or composed SQL) with pgrunbook's tag after it, on a line of its own (the
    query may end in a -- comment)."""
    if isinstance(query, str):
        return f"{query}\n{TAG}"
    if isinstance(query, bytes):
        return query + f"\n{TAG}".encode()
    return sql.Composed([query, sql.SQL(f"\n{TAG}")])


MAY_UNTRACK = {  # whether this role may set pg_stat_statements.track (asked, not tried:
    # a refused SET would put an error in the server's log at every connection)
    True: "SELECT has_parameter_privilege('pg_stat_statements.track', 'SET')",  # 15 and later
    False: "SELECT current_setting('is_superuser') = 'on'",
}


def untracked(conn: psycopg.Connection) -> bool:
    """Keep this session's statements out of pg_stat_statements where the role may (a superuser,
    or one granted SET on pg_stat_statements.track); whether it could."""
    try:
        with conn.transaction():
            allowed = conn.execute(MAY_UNTRACK[conn.info.server_version >= 150000]).fetchone()[0]
            if allowed:
                conn.execute("SET pg_stat_statements.track = 'none'")
        return bool(allowed)
    except psycopg.Error:
        return False


DEFAULT_STATEMENT_TIMEOUT = "60s"
DEFAULT_LOCK_TIMEOUT = "5s"
_TIMEOUT = re.compile(r"^\d+\s*(us|ms|s|min|h|d)?$")


def _check_timeout(value: str) -> str:
    if not _TIMEOUT.match(str(value).strip()):
        raise ValueError(f"{value!r} is not a PostgreSQL duration such as '500ms', '30s' or '5min'")
    return str(value).strip().replace(" ", "")


def session_options(*, readonly: bool, statement_timeout: str, lock_timeout: str) -> str:
    """The libpq `options` string that sets the session's guards at start-up."""
    opts = [
        f"-c statement_timeout={_check_timeout(statement_timeout)}",
        f"-c lock_timeout={_check_timeout(lock_timeout)}",
        "-c idle_in_transaction_session_timeout=10min",
    ]
    if readonly:
        opts.append("-c default_transaction_read_only=on")
    return " ".join(opts)


def connect(
    target: Target,
    *,
    readonly: bool = True,
    application: str = "pgrunbook",
    statement_timeout: str = DEFAULT_STATEMENT_TIMEOUT,
    lock_timeout: str = DEFAULT_LOCK_TIMEOUT,
    autocommit: bool = True,
    database: str | None = None,
) -> psycopg.Connection:
    """A connection to `target` (or another `database` on its server)."""
    url = with_database(target.url, database) if database else target.url
    try:
        conn = psycopg.connect(
            url,
            autocommit=autocommit,
            application_name=application[:63],
            options=session_options(
                readonly=readonly, statement_timeout=statement_timeout, lock_timeout=lock_timeout
            ),
            connect_timeout=10,
            cursor_factory=TaggedCursor,
        )
    except psycopg.OperationalError as e:
        raise ConnectionFailed(explain_failure(target, e)) from None
    untracked(conn)
    if not autocommit:
        conn.rollback()  # the SET's transaction: the caller starts its own
    return conn


def with_database(url: str, database: str) -> str:
    """`url` (a URL or a key=value string) pointing at another database on the same server."""
    if "://" in url:
        parts = urlsplit(url)
        return parts._replace(path="/" + quote(database, safe="")).geturl()
    return make_conninfo(url, dbname=database)


def explain_failure(target: Target, error: Exception) -> str:
    """One line saying why a connection to `target` failed and what to do."""
    message = redact(str(error)).strip()
    where = f"target {target.name!r} ({target.display_url})"
    if "password authentication failed" in message or "no password supplied" in message:
        return (
            f"login refused by {where}: check the user and password in {target.source or 'its URL'}"
        )
    if m := re.search(r'database "([^"]+)" does not exist', message):
        if target.sandbox:  # a sandbox made before this database was one of its own
            return f"database {m[1]!r} does not exist on {where}: `pgrunbook sandbox up` makes it"
        return f"database {m[1]!r} does not exist on {where}: create it or fix {target.source}"
    if m := re.search(r'role "([^"]+)" does not exist', message):
        return f"role {m[1]!r} does not exist on {where}: fix the user in {target.source}"
    if any(
        s in message
        for s in ("Connection refused", "No such file", "timeout", "could not translate")
    ):
        hint = (
            "start it with `pgrunbook sandbox up`"
            if target.sandbox
            else "is the server up and reachable?"
        )
        return f"cannot reach the server of {where}: {hint}"
    first = message.splitlines()[0] if message else type(error).__name__
    return f"cannot connect to {where}: {first}"


def server_version(conn: psycopg.Connection) -> str:
    """The server's version string, e.g. '18.6'."""
    return str(conn.execute("SHOW server_version").fetchone()[0]).split()[0]

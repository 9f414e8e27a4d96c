"""Putting a database in another's place, so that a crash at any instant leaves the old one or the
new.

A swap (restore in swap mode, staging refresh) is written down before its
first step, in a journal under the state folder, and runs under a lock per
target database. Its steps:

1. the journal: target, the copy's name, the name the old database will keep;
2. the copy gets the old database's own properties (owner, grants, settings,
   comment, connection limit), checked equal;
3. the old database stops accepting connections, and its sessions end;
4. one transaction renames old -> kept and copy -> target: either both
   renames happened or neither did;
5. the journal is removed.

A process killed anywhere leaves a journal nobody holds the lock of. Every
later run of the target (the runner does it before it connects) calls
`recover`, which reads the server: if the renames committed it finishes the
swap, else it rolls it back (the old database accepts connections again, the
copy is kept under its own name), and says which.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import signal
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from ..base import config
from ..base.errors import PgRunbookError
from ..base.fileio import private_dir, write_atomic
from ..base.findings import Check, Finding, Status
from ..base.targets import Target
from . import admin

APPLICATION = "pgrunbook/swap"  # the name of a swap's session: recovery ends a dead run's
INJECT_ENV = "PGRUNBOOK_INJECT_KILL"  # tests: SIGKILL this process at the named step
_held: dict[str, Any] = {}  # locks this process holds, by key: their open file
# settings stored as quoted lists (pg_dump's variable_is_guc_list_quote)
LIST_SETTINGS = {
    "local_preload_libraries",
    "search_path",
    "session_preload_libraries",
    "shared_preload_libraries",
    "temp_tablespaces",
    "unix_socket_directories",
}


class Busy(PgRunbookError):
    "Another restore or refresh of the same database is running"


class SwapFailed(PgRunbookError):
    "The swap could not be done; the target is as it was"


def _inject(step: str) -> None:
    """Die here, as a crash would, when a test asks for it (PostgreSQL's injection points, in
    small)."""
    if os.environ.get(INJECT_ENV) == step:
        os.kill(os.getpid(), signal.SIGKILL)


def key(target: Target) -> str:
    """One name per database (server address and database name), whatever the target is called."""
    return hashlib.sha256(f"{target.address}/{target.database}".encode()).hexdigest()[:16]


def _folder(kind: str) -> Path:
    return private_dir(config.settings().state_dir / kind)


def journal_path(target: Target) -> Path:
    return _folder("swaps") / f"{key(target)}.json"


def _done_path(target: Target) -> Path:
    return _folder("swaps") / f"{key(target)}.recovered.json"


def lock_path(target: Target) -> Path:
    return _folder("locks") / f"{key(target)}.lock"


@contextmanager
def exclusive(target: Target, operation: str) -> Iterator[None]:
    """Hold the target database's lock for `operation`; Busy at once if another process holds it.

    The lock is an flock on a file in the state folder: the kernel releases it
    when its holder dies, so a crashed run never blocks the next one.
    """
    k = key(target)
    if k in _held:  # this process holds it already (a refresh's swap inside its own lock)
        yield
        return
    path = lock_path(target)
    f = path.open("a+")
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.seek(0)
        holder = f.read().strip() or "another process"
        f.close()
        raise Busy(
            f"{target.name!r} is busy: {holder}; wait for it to end, then run again"
        ) from None
    os.chmod(path, 0o600)
    f.seek(0)
    f.truncate()
    f.write(f"{operation} by pid {os.getpid()} since {datetime.now(UTC):%Y-%m-%d %H:%M:%S} UTC")
    f.flush()
    _held[k] = f
    try:
        yield
    finally:
        del _held[k]
        f.close()


def busy(target: Target) -> str | None:
    """Who holds the target's lock, or None when nobody does (nothing is locked by asking)."""
    try:
        with exclusive(target, "check"):
            return None
    except Busy as e:
        return str(e)


@dataclass(frozen=True)
class Intent:
    target: str
    database: str
    new: str
    kept: str
    existed: bool
    operation: str
    pid: int
    started: str


PROPERTIES = """
    SELECT d.datname AS name,
           pg_get_userbyid(d.datdba) AS owner,
           d.datconnlimit AS connection_limit,
           shobj_description(d.oid, 'pg_database') AS comment,
           (SELECT coalesce(array_agg(format(
                       '%%s %%s%%s',
                       CASE WHEN a.grantee = 0 THEN 'PUBLIC' ELSE pg_get_userbyid(a.grantee) END,
                       a.privilege_type,
                       CASE WHEN a.is_grantable THEN ' WITH GRANT OPTION' END) ORDER BY 1), '{}')
              FROM aclexplode(coalesce(d.datacl, acldefault('d', d.datdba))) AS a) AS grants,
           (SELECT coalesce(array_agg(format(
                       '%%s: %%s',
                       coalesce(pg_get_userbyid(nullif(s.setrole, 0)), '*'),
                       c.setting) ORDER BY 1), '{}')
              FROM pg_db_role_setting AS s, unnest(s.setconfig) AS c(setting)
             WHERE s.setdatabase = d.oid) AS settings
      FROM pg_database AS d
     WHERE d.datname = %s
"""


@dataclass(frozen=True)
class Properties:
    """What belongs to a database itself, not to its contents: lost by a rename unless copied."""

    name: str
    owner: str
    connection_limit: int
    comment: str | None
    grants: tuple[str, ...]
    settings: tuple[str, ...]

    def same_as(self, other: Properties) -> list[str]:
        return [
            f"{f}: {getattr(self, f)!r} vs {getattr(other, f)!r}"
            for f in ("owner", "connection_limit", "comment", "grants", "settings")
            if getattr(self, f) != getattr(other, f)
        ]


def properties(conn: psycopg.Connection, database: str) -> Properties | None:
    row = conn.execute(PROPERTIES, [database]).fetchone()
    if row is None:
        return None
    name, owner, limit, comment, grants, settings = row
    return Properties(name, owner, limit, comment, tuple(grants), tuple(settings))


def copy_properties(conn: psycopg.Connection, source: str, copy: str) -> Finding:
    """Give database `copy` the owner, grants, settings, comment and connection limit of `source`
    (in one transaction), then check them equal."""
    ident, lit = sql.Identifier, sql.Literal
    target_props = properties(conn, source)
    if target_props is None:
        return Finding(
            "database properties", Status.OK, f"{source!r} does not exist: nothing to carry over"
        )
    with conn.transaction():
        conn.execute(
            sql.SQL("ALTER DATABASE {} OWNER TO {}").format(ident(copy), ident(target_props.owner))
        )
        conn.execute(
            sql.SQL("ALTER DATABASE {} CONNECTION LIMIT {}").format(
                ident(copy), lit(target_props.connection_limit)
            )
        )
        conn.execute(
            sql.SQL("COMMENT ON DATABASE {} IS {}").format(ident(copy), lit(target_props.comment))
        )
        conn.execute(sql.SQL("REVOKE ALL ON DATABASE {} FROM PUBLIC").format(ident(copy)))
        conn.execute(
            sql.SQL("REVOKE ALL ON DATABASE {} FROM {}").format(
                ident(copy), ident(target_props.owner)
            )
        )
        acl = conn.execute(
            """
            SELECT a.grantee = 0, pg_get_userbyid(a.grantee), a.privilege_type, a.is_grantable
              FROM pg_database AS d, aclexplode(coalesce(d.datacl, acldefault('d', d.datdba))) AS a
             WHERE d.datname = %s""",
            [source],
        ).fetchall()
        for public, grantee, privilege, grantable in acl:
            if privilege not in ("CONNECT", "CREATE", "TEMPORARY"):
                raise SwapFailed(f"unknown database privilege {privilege!r} on {source!r}")
            conn.execute(
                sql.SQL("GRANT {} ON DATABASE {} TO {}{}").format(
                    sql.SQL(privilege),
                    ident(copy),
                    sql.SQL("PUBLIC") if public else ident(grantee),
                    sql.SQL(" WITH GRANT OPTION" if grantable else ""),
                )
            )
        rows = conn.execute(
            """
            SELECT nullif(s.setrole, 0) IS NOT NULL, pg_get_userbyid(s.setrole),
                   split_part(c.setting, '=', 1), substr(c.setting, strpos(c.setting, '=') + 1)
              FROM pg_db_role_setting AS s JOIN pg_database AS d ON d.oid = s.setdatabase,
                   unnest(s.setconfig) AS c(setting)
             WHERE d.datname = %s""",
            [source],
        ).fetchall()
        for per_role, role, name, value in rows:
            guc = sql.SQL(".").join(ident(part) for part in name.split("."))
            if name.lower() in LIST_SETTINGS:
                # stored as a quoted list: set_config parses it as the server does, FROM CURRENT
                # stores it
                conn.execute("SELECT set_config(%s, %s, true)", [name, value])
                value_sql = sql.SQL("FROM CURRENT")
            else:
                value_sql = sql.SQL("TO {}").format(lit(value))
            who = (
                sql.SQL("ROLE {} IN DATABASE {}").format(ident(role), ident(copy))
                if per_role
                else sql.SQL("DATABASE {}").format(ident(copy))
            )
            conn.execute(sql.SQL("ALTER {} SET {} {}").format(who, guc, value_sql))
    differ = target_props.same_as(properties(conn, copy))
    if differ:
        return Finding(
            "database properties",
            Status.CRIT,
            f"the copy differs from {source!r}: {differ[0]}",
            examples=tuple(differ),
        )
    return Finding(
        "database properties",
        Status.OK,
        f"owner {target_props.owner}, {len(target_props.grants)} grants, "
        f"{len(target_props.settings)} settings, comment and connection limit as {source!r}'s",
    )


def _admin(target: Target) -> psycopg.Connection:
    return admin.connect(target, application=APPLICATION)


def swap(target: Target, new: str, kept: str, *, operation: str) -> Finding:
    """Put database `new` in the target's place, keeping the old one as `kept`; journalled (see
    module).

    Returns the database-properties finding. Raises SwapFailed (the target as
    it was) when the copy cannot be given the old database's properties or a
    step fails; a crash at any instant is recovered by the next run.
    """
    current = target.database
    with exclusive(target, operation), _admin(target) as conn:
        existed = admin.exists(conn, current)
        intent = Intent(
            target.name,
            current,
            new,
            kept,
            existed,
            operation,
            os.getpid(),
            datetime.now(UTC).isoformat(timespec="seconds"),
        )
        write_atomic(journal_path(target), json.dumps(asdict(intent), indent=1))
        _inject("journal written")
        try:
            props = copy_properties(conn, current, new)
            if props.status is Status.CRIT:
                raise SwapFailed(f"not swapped: {props.summary}")
            _inject("properties copied")
            if existed:
                admin.allow_connections(conn, current, False)
                _inject("connections off")
                admin.end_sessions(conn, current)
                _inject("sessions ended")
            conn.execute(
                "SET client_connection_check_interval = '1s'"
            )  # a dead client aborts a waiting rename
            with conn.transaction():
                if existed:
                    admin.rename(conn, current, kept)
                    _inject("inside the renaming transaction")
                    admin.allow_connections(conn, kept, True)
                admin.rename(conn, new, current)
            _inject("renamed")
        except BaseException as e:
            if isinstance(e, (psycopg.Error, PgRunbookError)):
                message = _undo(conn, intent)
                journal_path(target).unlink(missing_ok=True)
                raise SwapFailed(
                    f"swap of {current!r} failed ({str(e).splitlines()[0]}): {message}"
                ) from None
            raise  # interrupted: the journal stays for the next run to recover
        journal_path(target).unlink(missing_ok=True)
        return props


def _undo(conn: psycopg.Connection, intent: Intent) -> str:
    """Bring the server back to the old state or on to the new one, whichever the renames left."""
    if conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
        conn.rollback()
    current, new, kept = intent.database, intent.new, intent.kept
    if admin.exists(conn, kept) and not admin.exists(conn, new):  # the renames committed
        admin.allow_connections(conn, current, True)
        admin.allow_connections(conn, kept, True)
        return f"completed: {new!r} is now {current!r}, the old one kept as {kept!r}"
    if not intent.existed and admin.exists(conn, new) and not admin.exists(conn, current):
        admin.rename(conn, new, current)
        return f"completed: {new!r} is now {current!r} (there was no old one)"
    if admin.exists(conn, current):
        admin.allow_connections(conn, current, True)
    left = f"; the copy is kept as {new!r}" if admin.exists(conn, new) else ""
    return f"rolled back: {current!r} is the old database, accepting connections{left}"


def recover(target: Target) -> str | None:
    """Finish or roll back a swap of `target` that a crashed run left; what was done, or None.

    A swap whose run is alive (it holds the lock) is left alone and said so.
    """
    path = journal_path(target)
    if not path.exists():
        return None
    try:
        intent = Intent(**json.loads(path.read_text()))
    except (ValueError, TypeError):
        path.unlink(missing_ok=True)
        return None
    try:
        with exclusive(target, "recovery"), _admin(target) as conn:
            # the dead run's session may still hold its renaming transaction open (waiting on a
            # lock): end it, so that it rolls back before the server's state is read
            conn.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                " WHERE application_name = %s AND pid <> pg_backend_pid()",
                [APPLICATION],
            )
            time.sleep(0.2)
            message = _undo(conn, intent)
    except Busy as e:
        return f"a swap of {intent.database!r} is in progress ({e})"
    text = (
        f"an unfinished {intent.operation} swap of {intent.database!r} started {intent.started} "
        f"(pid {intent.pid}) was {message}"
    )
    write_atomic(
        _done_path(target),
        json.dumps({"message": text, "at": datetime.now(UTC).isoformat()}),
    )
    path.unlink(missing_ok=True)
    return text


def finding(target: Target) -> Finding:
    """An unfinished swap, recovered here or by the runner just before: WARN, saying what was
    done."""
    done = recover(target)
    record = _done_path(target)
    if done is None and record.exists():
        try:
            done = json.loads(record.read_text())["message"]
        except (ValueError, KeyError):
            done = None
    record.unlink(missing_ok=True)
    if done is None:
        return Finding(
            Check.UNFINISHED_SWAP, Status.OK, "none: every earlier swap of this database ended"
        )
    return Finding(Check.UNFINISHED_SWAP, Status.WARN, done)

"""Security and access review: who can reach the data, how, and what changed since last time.

Read-only, for any target. Password hashes are never read into Python: only
whether each is md5 or SCRAM, and only where pg_authid is readable (UNKNOWN
on managed servers that hide it). Credentials of two targets are compared by
fingerprint, never shown.
"""

from __future__ import annotations

import hashlib
import re

import psycopg
from psycopg import sql

from ..base import config, targets
from ..base.display import plural
from ..base.findings import Check, Finding, Status
from ..base.targets import Target
from ..facts import activity, backups, history, server
from ..facts import roles as role_facts
from ..facts.catalog import NOT_EXTENSION, TEXT_TYPES, USER_SCHEMAS

PERSONAL_NAME = re.compile(
    r"(e_?mail|phone|mobile|first_?name|last_?name|full_?name|surname|address|street|"
    r"city|zip|post_?code|postal|birth|dob|ssn|passport|iban|card|(^|_)ip($|_)|ip_?addr|"
    r"location|pass_?word|passwd|(^|_)pwd($|_)|secret)",
    re.I,
)
KEY_NAME = re.compile(
    r"(^|_)id$", re.I
)  # address_id, city_id: a reference to a row, not personal itself
KEY_TYPES = ("int2", "int4", "int8", "uuid")
EMAIL_RE = r"^[^@\s]+@[^@\s]+\.[a-z]{2,}$"
PHONE_RE = r"^\+?[0-9][0-9 ().-]{6,}[0-9]$"


def _names(rows) -> tuple[str, ...]:
    return tuple(str(r[0]) for r in rows)


# -- roles ------------------------------------------------------------------------


def roles(conn: psycopg.Connection):
    """Every role but PostgreSQL's own, with its attributes."""
    import pandas as pd  # here: spares pandas (~270 ms) at start-up

    frame = pd.DataFrame(role_facts.roles(conn), columns=list(role_facts.Role.__annotations__))
    return frame.drop(columns="bootstrap").rename(columns={"name": "role"})


def password_expiry(conn: psycopg.Connection, app_roles: list[str]) -> Finding:
    """People's login roles (not the bootstrap or application roles) whose password never
    expires."""
    known = role_facts.passwords(conn)
    if known is None:
        return Finding(
            "password expiry",
            Status.UNKNOWN,
            "pg_authid is not readable here: which roles have passwords cannot be told",
        )
    never = [
        (p.name,)
        for p in known
        if p.login
        and p.has_password
        and not p.expires
        and not p.bootstrap
        and p.name not in app_roles
    ]
    return Finding(
        "password expiry",
        Status.WARN if never else Status.OK,
        (
            f"{len(never)} login roles besides the application's have passwords that never expire "
            "(ALTER ROLE ... VALID UNTIL ...)"
            if never
            else "every personal password has an expiry"
        ),
        examples=_names(never),
    )


def role_findings(conn: psycopg.Connection, app_roles: list[str] = ()) -> list[Finding]:
    every = role_facts.roles(conn)
    boot = next(r.name for r in every if r.bootstrap)
    supers = [(r.name,) for r in every if r.superuser and not r.bootstrap]
    found = [
        Finding(
            "superusers",
            Status.CRIT if supers else Status.OK,
            (
                f"{plural(len(supers), 'superuser')} besides {boot}: {', '.join(_names(supers))}"
                if supers
                else f"only the bootstrap superuser {boot}"
            ),
            examples=_names(supers),
        )
    ]
    powerful = [
        (f"{r.name} ({', '.join(r.powers)})",) for r in every if not r.superuser and r.powers
    ]
    found.append(
        Finding(
            "role attributes",
            Status.WARN if powerful else Status.OK,
            (
                f"{len(powerful)} non-superusers can create roles or databases, bypass RLS or"
                " replicate"
                if powerful
                else "no non-superuser holds CREATEROLE, CREATEDB, BYPASSRLS or REPLICATION"
            ),
            examples=_names(powerful),
        )
    )
    found.append(password_hashes(conn))
    found.append(password_expiry(conn, list(app_roles)))
    return found


def password_hashes(conn: psycopg.Connection) -> Finding:
    """Which roles still have md5 password hashes (the hashes themselves are never read)."""
    known = role_facts.passwords(conn)
    if known is None:
        return Finding(
            "password hashes",
            Status.UNKNOWN,
            "pg_authid is not readable here (managed server or "
            "no superuser): md5 against SCRAM cannot be told",
        )
    md5 = [(p.name,) for p in known if p.md5]
    return Finding(
        "password hashes",
        Status.WARN if md5 else Status.OK,
        (
            f"{len(md5)} roles still have md5 password hashes: reset them under scram-sha-256"
            if md5
            else "no md5 password hash"
        ),
        examples=_names(md5),
    )


# -- privileges --------------------------------------------------------------------


def privileges(conn: psycopg.Connection):
    """Login roles against tables: the privileges each holds, as letters (S, I, U, D)."""
    frame = role_facts.table_privileges(conn)
    return frame.pivot(index="role", columns="table", values="privileges") if len(frame) else frame


def plot_privileges(matrix):
    """Heat map of how many of S, I, U, D each login role holds on each table."""
    from matplotlib.figure import Figure  # here: spares matplotlib (~450 ms) at start-up

    counts = matrix.map(lambda v: len(v or "")) if len(matrix) else matrix
    label = max((len(str(c)) for c in counts.columns), default=0)  # rotated: they need height
    fig = Figure(
        figsize=(
            2.5 + 0.5 * max(counts.shape[1], 1),
            1.2 + 0.4 * max(counts.shape[0], 1) + 0.07 * label,
        ),
        layout="constrained",
    )
    ax = fig.subplots()
    if len(counts):
        im = ax.imshow(counts.values, cmap="Reds", vmin=0, vmax=4, aspect="auto")
        ax.set_xticks(range(counts.shape[1]), counts.columns, rotation=60, ha="right")
        ax.set_yticks(range(counts.shape[0]), counts.index)
        fig.colorbar(im, ax=ax, label="privileges (of S, I, U, D)")
    ax.set_title("Table privileges of login roles")
    return fig


def grant_findings(conn: psycopg.Connection, app_roles: list[str]) -> list[Finding]:
    public = [(f"{g.table}: {g.privileges}",) for g in role_facts.public_grants(conn)]
    found = [
        Finding(
            "grants to PUBLIC",
            Status.CRIT if public else Status.OK,
            (
                f"{len(public)} tables grant privileges to PUBLIC (every role):"
                f" {', '.join(_names(public)[:3])}"
                if public
                else "no table grants anything to PUBLIC"
            ),
            examples=_names(public),
        )
    ]
    create = conn.execute("SELECT has_schema_privilege('public', 'public', 'CREATE')").fetchone()[0]
    found.append(
        Finding(
            "schema public",
            Status.WARN if create else Status.OK,
            (
                "PUBLIC may CREATE in schema public: REVOKE CREATE ON SCHEMA public FROM PUBLIC"
                if create
                else "PUBLIC cannot create objects in schema public"
            ),
        )
    )
    defaults = conn.execute(
        "SELECT pg_get_userbyid(d.defaclrole) || ' grants ' || a.privilege_type || ' on new ' ||"
        " CASE d.defaclobjtype WHEN 'r' THEN 'tables' WHEN 'S' THEN 'sequences' WHEN 'f' THEN"
        " 'functions' ELSE d.defaclobjtype::text END || ' to ' || CASE WHEN a.grantee = 0 THEN"
        " 'PUBLIC' ELSE pg_get_userbyid(a.grantee) END FROM pg_default_acl d,"
        " aclexplode(d.defaclacl) a ORDER BY 1"
    ).fetchall()
    to_public = [d for d in _names(defaults) if d.endswith(" to PUBLIC")]
    found.append(
        Finding(
            "default privileges",
            Status.WARN if to_public else Status.OK,
            (
                f"{len(to_public)} default privileges grant to PUBLIC"
                if to_public
                else f"{len(defaults)} default privileges, none to PUBLIC"
            ),
            examples=_names(defaults),
        )
    )
    if app_roles:
        owned = conn.execute(
            "SELECT n.nspname || '.' || c.relname || ' (' || pg_get_userbyid(c.relowner) || ')'"
            " FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.relkind IN"
            f" ('r', 'p') AND {USER_SCHEMAS} AND {NOT_EXTENSION} AND pg_get_userbyid(c.relowner) ="
            " ANY(%s) ORDER BY 1",
            [app_roles],
        ).fetchall()
        found.append(
            Finding(
                "owned by the app",
                Status.WARN if owned else Status.OK,
                (
                    f"the application role owns {len(owned)} tables, so it can drop them"
                    if owned
                    else f"the application roles ({', '.join(app_roles)}) own no table"
                ),
                examples=_names(owned),
            )
        )
    secdef = conn.execute(
        "SELECT n.nspname || '.' || p.proname || '(' || pg_get_function_identity_arguments(p.oid)"
        " || ')' FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace LEFT JOIN pg_depend"
        " e ON e.objid = p.oid AND e.deptype = 'e' WHERE p.prosecdef AND e.objid IS NULL AND"
        f" {USER_SCHEMAS} AND NOT coalesce(array_to_string(p.proconfig, ',') LIKE"
        " '%%search_path=%%', false) ORDER BY 1"
    ).fetchall()
    found.append(
        Finding(
            "security definer",
            Status.CRIT if secdef else Status.OK,
            (
                f"{len(secdef)} SECURITY DEFINER functions without a fixed search_path: "
                f"{', '.join(_names(secdef)[:3])} (ALTER FUNCTION ... SET search_path = ...)"
                if secdef
                else "every SECURITY DEFINER function fixes its search_path"
            ),
            examples=_names(secdef),
        )
    )
    return found


# -- access ---------------------------------------------------------------------


def sessions(conn: psycopg.Connection):
    """Client sessions (this one excluded): who, from where, with SSL or not."""
    import pandas as pd  # here: spares pandas (~270 ms) at start-up

    cols = ["pid", "role", "application", "client", "database", "state", "ssl"]
    frame = pd.DataFrame(activity.sessions(conn), columns=list(activity.Session.__annotations__))
    return frame[cols].sort_values(["role", "application"], ignore_index=True)


def access_findings(
    conn: psycopg.Connection, *, app_roles: list[str], protected: bool
) -> list[Finding]:
    every = activity.sessions(conn)
    plain = [(f"{x.role}@{x.client} ({x.application})",) for x in every if x.client and not x.ssl]
    found = [
        Finding(
            "ssl",
            Status.WARN if plain else Status.OK,
            f"{len(plain)} TCP sessions without SSL" if plain else "no TCP session without SSL",
            examples=_names(plain),
        )
    ]
    existing = {r.name for r in role_facts.roles(conn)}
    missing = [r for r in app_roles if r not in existing]
    if missing:
        found.append(
            Finding(
                "app roles",
                Status.WARN,
                f"the application roles {', '.join(missing)} do not exist "
                "on this server: fix app_roles (the parameter or the target's app), or create them",
                examples=tuple(missing),
            )
        )
    if not protected:
        found.append(
            Finding("direct access", Status.OK, "not a protected target: direct access not checked")
        )
    elif not app_roles:
        found.append(
            Finding(
                "direct access",
                Status.UNKNOWN,
                "no app_roles given: pass app_roles=... (or set "
                "app_roles in [tool.pgrunbook]) to tell the application's sessions from direct"
                " ones",
            )
        )
    else:
        here = [x for x in every if x.here]
        direct = [(str(x),) for x in sorted(here, key=str) if x.role not in app_roles]
        by_app = len(here) - len(direct)
        if direct:
            summary = f"{len(direct)} sessions by roles other than {', '.join(app_roles)}"
        elif by_app:
            summary = f"{by_app} sessions, all by the application's roles ({', '.join(app_roles)})"
        else:
            summary = "no other session is connected"
        found.append(
            Finding(
                "direct access",
                Status.WARN if direct else Status.OK,
                summary,
                examples=_names(direct),
            )
        )
    return found


# -- settings ---------------------------------------------------------------------


def settings_findings(conn: psycopg.Connection) -> list[Finding]:
    names = (
        "ssl",
        "password_encryption",
        "log_connections",
        "log_disconnections",
        "log_statement",
        "listen_addresses",
    )
    s = {name: x.setting for name, x in server.settings(conn, names).items()}
    found = []
    tcp = s.get("listen_addresses", "") not in ("",)
    found.append(
        Finding(
            "ssl setting",
            Status.WARN if tcp and s.get("ssl") == "off" else Status.OK,
            f"ssl={s.get('ssl')}, listen_addresses={s.get('listen_addresses', 'hidden')!r}",
        )
    )
    found.append(
        Finding(
            "password_encryption",
            Status.WARN if s.get("password_encryption") == "md5" else Status.OK,
            f"password_encryption={s.get('password_encryption')}",
        )
    )
    logged = [k for k in ("log_connections", "log_disconnections") if s.get(k) in ("off", "", None)]
    found.append(
        Finding(
            "connection logging",
            Status.WARN if logged else Status.OK,
            (
                f"{', '.join(logged)} off: access cannot be audited"
                if logged
                else (
                    f"log_connections={s.get('log_connections')},"
                    f" log_disconnections={s.get('log_disconnections')}"
                )
            ),
        )
    )
    found.append(
        Finding(
            "log_statement",
            Status.WARN if s.get("log_statement") == "none" else Status.OK,
            f"log_statement={s.get('log_statement')}"
            + (
                " (set ddl to keep schema changes in the log)"
                if s.get("log_statement") == "none"
                else ""
            ),
        )
    )
    ext = [(f"{e.name} {e.version}",) for e in server.extensions(conn)]
    found.append(Finding("extensions", Status.OK, f"{len(ext)} installed", examples=_names(ext)))
    return found


# -- separation -------------------------------------------------------------------


def _fingerprint(*parts: str) -> str:
    return hashlib.sha256("\x1f".join(parts).encode()).hexdigest()


def separation() -> Finding:
    """Staging and production: not one server and database, not one set of credentials."""

    try:
        prod, stag = targets.resolve("production"), targets.resolve("staging")
    except Exception as e:  # one of them is not configured here
        return Finding(
            "separation", Status.UNKNOWN, f"cannot resolve both production and staging: {e}"
        )
    p, s = prod.params, stag.params
    same_server = prod.address == stag.address
    if same_server and prod.database == stag.database:
        return Finding("separation", Status.CRIT, "staging and production are the same database")
    if prod.sandbox and stag.sandbox:
        return Finding("separation", Status.OK, "the sandbox holds both on one server by design")
    creds = _fingerprint(p.get("user", ""), p.get("password", "")) == _fingerprint(
        s.get("user", ""), s.get("password", "")
    )
    problems = (["the same server"] if same_server else []) + (
        ["the same credentials"] if creds else []
    )
    return Finding(
        "separation",
        Status.WARN if problems else Status.OK,
        (
            f"staging and production share {' and '.join(problems)}"
            if problems
            else "separate servers and credentials (compared by fingerprint)"
        ),
    )


# -- sensitive columns --------------------------------------------------------------


def personal_columns(conn: psycopg.Connection, *, sample: int = 200) -> list[tuple[str, str]]:
    """(schema.table.column, why) for columns whose name looks personal, or text columns whose
    sampled content does."""

    cols = conn.execute(
        "SELECT n.nspname, c.relname, a.attname, coalesce(bt.typname, t.typname) = ANY(%s),"
        " coalesce(bt.typname, t.typname) = ANY(%s), ARRAY(SELECT f.attname FROM pg_attribute f"
        " WHERE f.attrelid = t.typrelid AND f.attnum > 0) FROM pg_attribute a JOIN pg_class c ON"
        " c.oid = a.attrelid JOIN pg_namespace n ON n.oid = c.relnamespace JOIN pg_type t ON t.oid"
        " = a.atttypid LEFT JOIN pg_type bt ON bt.oid = t.typbasetype AND t.typtype = 'd' WHERE"
        " c.relkind IN ('r', 'p') AND NOT c.relispartition AND a.attnum > 0 AND NOT a.attisdropped"
        f" AND {USER_SCHEMAS} AND {NOT_EXTENSION} ORDER BY 1, 2, a.attnum",
        [list(TEXT_TYPES), list(KEY_TYPES)],
    ).fetchall()
    out = []
    for schema, table, column, textual, key_type, fields in cols:
        name = f"{schema}.{table}.{column}"
        if key_type and KEY_NAME.search(column):
            continue
        if PERSONAL_NAME.search(column):
            out.append((name, "name"))
            continue
        personal_fields = [f for f in fields if PERSONAL_NAME.search(f)]
        if personal_fields:
            out.append((name, f"composite with {', '.join(personal_fields)}"))
            continue
        if not textual:
            continue
        q = sql.SQL(
            "SELECT count(*) FILTER (WHERE v ~* %s), count(*) FILTER (WHERE v ~ %s) FROM"
            " (SELECT {}::text AS v FROM {} WHERE {} IS NOT NULL LIMIT %s) s"
        ).format(sql.Identifier(column), sql.Identifier(schema, table), sql.Identifier(column))
        emails, phones = conn.execute(q, [EMAIL_RE, PHONE_RE, sample]).fetchone()
        if emails or phones:
            out.append(
                (name, "content: " + ("email-shaped" if emails else "phone-shaped") + " values")
            )
    return out


def personal_table(cols: list[tuple[str, str]]):
    """The columns that look personal, by name, and why: shown in the report for the team's
    decision (their values are never read into it)."""
    import pandas as pd  # here: spares pandas (~270 ms) at start-up

    return pd.DataFrame(cols, columns=["column", "why it looks personal"])


def sensitive_findings(cols: list[tuple[str, str]]) -> Finding:
    """`cols` from `personal_columns`, as one finding."""
    return Finding(
        "sensitive columns",
        Status.OK,
        (
            f"{len(cols)} columns look personal and are stored as plain text: listed for the team's"
            " decision on application-level encryption"
            if cols
            else "no column looks personal"
        ),
        examples=tuple(f"{c} ({why})" for c, why in cols),
    )


# -- snapshot and drift ---------------------------------------------------------------


def snapshot(conn: psycopg.Connection) -> Finding:
    """The facts drift is measured on, recorded in the report."""
    every = role_facts.roles(conn)
    facts = {
        "superusers": sorted(r.name for r in every if r.superuser),
        "login roles": sorted(r.name for r in every if r.login),
        "grants to PUBLIC": sorted(
            f"{g.table} {p}"
            for g in role_facts.public_grants(conn)
            for p in g.privileges.split(", ")
        ),
        "role attributes": sorted(
            f"{r.name}: {' '.join(r.powers)}" for r in every if not r.superuser and r.powers
        ),
    }
    return Finding(
        Check.SNAPSHOT, Status.OK, ", ".join(f"{len(v)} {k}" for k, v in facts.items()), value=facts
    )


def drift(target: Target, current: Finding, *, enabled: bool = True) -> Finding:
    """What changed since the previous archived security report of the same target."""
    if not enabled:
        return Finding("drift", Status.OK, "not compared (compare_with_previous=False)")
    database = backups.current_identity(target)
    if again := history.starts_again("security", target.name, database):
        return Finding("drift", Status.OK, again)
    run = history.previous(
        "security",
        target.name,
        where=lambda r: r["outcome"] != "FAILED" and history.value(r, Check.SNAPSHOT) is not None,
        database=database,
    )
    if run is not None:
        before = history.value(run, Check.SNAPSHOT)
        now = current.value
        added = [f"+ {k}: {x}" for k in now for x in now[k] if x not in before.get(k, [])]
        removed = [f"- {k}: {x}" for k in now for x in before.get(k, []) if x not in now[k]]
        if added:
            return Finding(
                "drift",
                Status.WARN,
                f"since {run['id']}: {len(added)} added, {len(removed)} removed",
                examples=tuple(added + removed),
            )
        return Finding(
            "drift",
            Status.OK,
            f"since {run['id']}: nothing added" + (f", {len(removed)} removed" if removed else ""),
            examples=tuple(removed),
        )
    return Finding(
        "drift", Status.OK, f"no earlier security report of {target.name!r} to compare with"
    )


def app_roles_for(given: str, target: Target | None = None) -> list[str]:
    """The application's roles: the parameter, else the target's app, else [tool.pgrunbook]
    app_roles."""

    if given.strip():
        return [r.strip() for r in given.split(",") if r.strip()]
    if target is not None and target.app.app_roles:
        return list(target.app.app_roles)
    return list(config.settings().app_roles)

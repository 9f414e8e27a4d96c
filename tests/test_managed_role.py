"""Every runbook as the role a managed host gives (RDS, Cloud SQL, Azure, Railway): not a
superuser, no REPLICATION, a member of pg_monitor, allowed to create databases, owner of the
application's databases. What it may not read is UNKNOWN with what would let it (never OK, never
a traceback); base backups are refused before they start; backups, restores into a new database,
refreshes and drills work."""

from __future__ import annotations

import uuid
from urllib.parse import parse_qs, urlsplit

import psycopg
import pytest
from psycopg import sql

from pgrunbook.archive import runner
from pgrunbook.base import db, migrations
from pgrunbook.base.findings import Status
from pgrunbook.base.targets import Target
from pgrunbook.procedures import drill, pitr, seed

ROLE = "pgrb_managed"


def _url_as(admin_url: str, role: str, database: str) -> str:
    """`admin_url`'s server, logged in as `role`, on `database`."""
    parts = urlsplit(admin_url)
    if "host=" in parts.query:  # a Unix socket (the embedded servers)
        host = parse_qs(parts.query)["host"][0]
        return f"postgresql://{role}@/{database}?host={host}"
    return f"postgresql://{role}@{parts.hostname}:{parts.port or 5432}/{database}"


@pytest.fixture
def managed(server, monkeypatch, tmp_path):
    """production and staging databases owned by the managed role, seeded by it, configured as
    the targets `production` and `staging`."""
    names = [f"pgrb_mh_{uuid.uuid4().hex[:8]}" for _ in range(2)]
    with psycopg.connect(server, autocommit=True) as conn:
        if not conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", [ROLE]).fetchone():
            conn.execute(
                sql.SQL(
                    "CREATE ROLE {} LOGIN CREATEDB NOSUPERUSER NOREPLICATION IN ROLE pg_monitor"
                ).format(sql.Identifier(ROLE))
            )
        for name in names:
            conn.execute(
                sql.SQL("CREATE DATABASE {} OWNER {}").format(
                    sql.Identifier(name), sql.Identifier(ROLE)
                )
            )
    urls = [_url_as(server, ROLE, name) for name in names]
    for url in urls:
        target = Target("fixture", url)
        migrations.upgrade(target, "head")
        with db.connect(target, readonly=False) as conn:
            seed.seed(conn, target, mode="development", users=60)
    monkeypatch.setenv("DATABASE_URL", urls[0])
    monkeypatch.setenv("STAGING_DATABASE_URL", urls[1])
    monkeypatch.setenv("PGRUNBOOK_SANITIZE_SALT", uuid.uuid4().hex * 2)
    monkeypatch.setenv("PGRUNBOOK_BACKUPS_DIR", str(tmp_path / "backups"))
    yield urls
    with psycopg.connect(server, autocommit=True) as conn:
        owned = [
            r[0]
            for r in conn.execute(
                "SELECT datname FROM pg_database d JOIN pg_roles r ON r.oid = d.datdba"
                " WHERE r.rolname = %s",
                [ROLE],
            )
        ]
        for name in owned:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )
        conn.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(ROLE)))
        conn.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(ROLE)))  # the server as it was


def _run(runbook: str, target: str, **given: str):
    result = runner.run(runbook, target, given, progress=False)
    assert result.error is None, (runbook, result.error)  # never a traceback: findings only
    return result, {f.check: f for f in result.findings}


def _honest(findings: dict) -> None:
    """Every UNKNOWN says what would let the role see (a grant, a superuser, the provider)."""
    for f in findings.values():
        if f.status is Status.UNKNOWN:
            assert any(
                w in f.summary for w in ("GRANT", "superuser", "provider", "pg_authid", "grant")
            ), str(f)


def test_amcheck_it_may_not_run_is_unknown_with_the_grant_not_corruption(managed, server):
    """The provider installed amcheck, but its functions are not granted to the role: that is
    not corruption (a false CRIT) but UNKNOWN, naming the grant."""
    with psycopg.connect(db.with_database(server, urlsplit(managed[1]).path[1:])) as conn:
        if not conn.execute(
            "SELECT 1 FROM pg_available_extensions WHERE name = 'amcheck'"
        ).fetchone():
            pytest.skip("this server has no amcheck")
        conn.execute("CREATE EXTENSION IF NOT EXISTS amcheck")
        conn.commit()
    result, found = _run("integrity", "staging")
    assert not [f for f in result.findings if f.status is Status.CRIT], result.findings
    assert found["amcheck"].status is Status.UNKNOWN
    assert "GRANT EXECUTE ON FUNCTION bt_index_check" in found["amcheck"].summary


@pytest.mark.matrix
def test_every_runbook_as_a_managed_host_role(managed):
    for runbook in ("status", "health", "performance", "integrity", "migrate", "seed"):
        _, found = _run(runbook, "staging")
        _honest(found)
    _, security = _run("security", "production")
    _honest(security)
    assert security["password hashes"].status is Status.UNKNOWN  # pg_authid: superusers only

    backup, found = _run("backup", "production")
    assert backup.exit_code in (0, 1, 3) and found["verify"].status is not Status.CRIT, found
    _honest(found)
    restored, found = _run("restore", "production", confirm="production")
    _honest(found)
    assert found["restore"].status is Status.OK and "restored into" in found["restore"].summary
    amcheck = found["amcheck"]  # not a trusted extension: it never ran, and never reads OK
    assert amcheck.status is Status.UNKNOWN or "not available" in amcheck.summary, str(amcheck)

    refreshed, found = _run("staging_refresh", "staging", mode="apply", confirm="staging")
    assert found["swap"].status is Status.OK, [str(f) for f in refreshed.findings]
    drilled, found = _run("dr_drill", "staging")
    assert found["rpo achieved"].status is Status.OK, [str(f) for f in drilled.findings]
    _honest(found)

    for runbook, given in (("pitr", {}), ("dr_drill", {"disaster": drill.PITR})):
        with pytest.raises((pitr.PitrRefused, pitr.PitrUnavailable)) as refused:
            runner.run(runbook, "production" if runbook == "pitr" else "staging", given,
                       progress=False)  # fmt: skip
        assert "\n" not in str(refused.value)
        assert "REPLICATION" in str(refused.value) or "provider" in str(refused.value)

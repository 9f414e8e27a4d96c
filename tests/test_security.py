"""The security review: planted problems are found and named, drift shows exactly what was added."""

import psycopg
import pytest
from psycopg import sql

from pgrunbook.archive import runner
from pgrunbook.base.findings import Status
from tests.conftest import written_files

SECRET = "Sup3r-s3cret-pw"


def _admin(sandbox, *statements, database="production"):
    with psycopg.connect(sandbox.url(database), autocommit=True) as conn:
        for s in statements:
            conn.execute(s)


def _checks(result):
    return {f.check: f for f in result.findings}


@pytest.fixture
def planted(sandbox):
    _admin(
        sandbox,
        "CREATE ROLE admin2 LOGIN SUPERUSER",
        "GRANT SELECT ON users TO PUBLIC",
        "CREATE FUNCTION public.whoami() RETURNS text SECURITY DEFINER LANGUAGE sql AS 'SELECT"
        " current_user'",
        f"CREATE ROLE intruder LOGIN PASSWORD '{SECRET}'",
    )
    intruder = psycopg.connect(sandbox.url("production").replace("postgres:@", "intruder:@"))
    yield intruder
    intruder.close()
    _admin(
        sandbox,
        "DROP FUNCTION IF EXISTS public.whoami()",
        "REVOKE SELECT ON users FROM PUBLIC",
        "DROP ROLE IF EXISTS admin2",
        "DROP ROLE IF EXISTS intruder",
    )


def test_planted_problems_are_found_then_the_run_is_ok_again(
    sandbox, planted, reports_dir, tmp_path, monkeypatch
):
    monkeypatch.setenv("PGRUNBOOK_REPORTS_DIR", str(tmp_path / "reports"))
    baseline = runner.run("security", "production", progress=False)
    assert baseline.exit_code == 2
    page = baseline.html.read_text()  # the personal-looking columns are named in the report itself
    assert "<td>public.users.email</td>" in page and "<td>public.users.phone</td>" in page
    found = _checks(baseline)
    assert found["superusers"].status is Status.CRIT and found["superusers"].examples == ("admin2",)
    assert found["grants to PUBLIC"].status is Status.CRIT and found[
        "grants to PUBLIC"
    ].examples == ("public.users: SELECT",)
    assert found["security definer"].status is Status.CRIT and found[
        "security definer"
    ].examples == ("public.whoami()",)
    assert found["password expiry"].status is Status.WARN and found["password expiry"].examples == (
        "intruder",
    )
    assert found["direct access"].status is Status.WARN
    assert [e for e in found["direct access"].examples if " intruder " in e]
    planted.close()
    _admin(
        sandbox,
        "DROP FUNCTION public.whoami()",
        "REVOKE SELECT ON users FROM PUBLIC",
        "DROP ROLE admin2",
        "DROP ROLE intruder",
    )
    clean = runner.run("security", "production", progress=False)
    assert clean.exit_code == 0, [str(f) for f in clean.findings if f.status is not Status.OK]
    assert "nothing added" in _checks(clean)["drift"].summary
    for f in written_files(tmp_path / "reports"):
        text = f.read_text(errors="replace")
        assert SECRET not in text and "SCRAM-SHA-256$" not in text and "md5" + "0" * 4 not in text


def test_drift_shows_exactly_what_was_added(sandbox, tmp_path, monkeypatch):
    monkeypatch.setenv("PGRUNBOOK_REPORTS_DIR", str(tmp_path / "reports"))
    first = runner.run("security", "sandbox", progress=False)
    assert first.exit_code == 0
    _admin(
        sandbox,
        "CREATE ROLE newcomer LOGIN",
        "GRANT SELECT ON categories TO PUBLIC",
        database="sandbox",
    )
    try:
        second = runner.run("security", "sandbox", progress=False)
    finally:
        _admin(
            sandbox,
            "REVOKE SELECT ON categories FROM PUBLIC",
            "DROP ROLE newcomer",
            database="sandbox",
        )
    drift = _checks(second)["drift"]
    assert drift.status is Status.WARN and second.findings[0].check == "drift"  # shown first
    assert sorted(drift.examples) == [
        "+ grants to PUBLIC: public.categories SELECT",
        "+ login roles: newcomer",
    ]


def test_runs_on_each_server_as_a_role_the_catalog_hides_things_from(server, monkeypatch):
    role = "pgrb_reviewer"
    with psycopg.connect(server, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(role)))
        conn.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(role)))
    try:
        url = psycopg.conninfo.make_conninfo(server, user=role)
        monkeypatch.setenv(
            "STAGING_DATABASE_URL",
            "postgresql://" + role + "@" + server.split("@", 1)[1] if "@" in server else url,
        )
        result = runner.run("security", "staging", progress=False)
        assert result.outcome != "FAILED", result.error
        assert _checks(result)["password hashes"].status is Status.UNKNOWN
    finally:
        with psycopg.connect(server, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(role)))

"""The migrate runbook end to end: staging first, then production, through the runner."""

import psycopg
import pytest
from psycopg import sql

from pgrunbook.archive import runner
from pgrunbook.base import db, migrations
from pgrunbook.base.errors import ConfirmationRequired
from pgrunbook.base.findings import Status
from tests.conftest import assert_charts_drawn


@pytest.fixture
def environments(sandbox, tmp_path, monkeypatch):
    """staging and production as two databases at revision 0002, with an empty archive."""
    admin = sandbox.url("postgres")
    names = {"staging": "pgrb_env_staging", "production": "pgrb_env_production"}
    with psycopg.connect(admin, autocommit=True) as conn:
        for name in names.values():
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    monkeypatch.setenv("STAGING_DATABASE_URL", sandbox.url(names["staging"]))
    monkeypatch.setenv("DATABASE_URL", sandbox.url(names["production"]))
    monkeypatch.setenv("PGRUNBOOK_REPORTS_DIR", str(tmp_path / "reports"))
    monkeypatch.setenv("PGRUNBOOK_BACKUPS_DIR", str(tmp_path / "backups"))
    for env in ("staging", "production"):
        migrations.upgrade(runner.targets.resolve(env), "0002")
    yield names
    with psycopg.connect(admin, autocommit=True) as conn:
        for name in names.values():
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )


def _revision(env: str):
    with db.connect(runner.targets.resolve(env)) as conn:
        return migrations.current(conn)


def _checks(result):
    return {f.check: f for f in result.findings}


def test_staging_then_production(environments):
    plan = runner.run("migrate", "staging", progress=False)
    assert plan.exit_code == 0 and _revision("staging") == ("0002",)
    assert "2 revisions to 0004" in _checks(plan)["plan"].summary

    early = runner.run(
        "migrate", "production", {"mode": "apply", "confirm": "production"}, progress=False
    )
    assert early.exit_code == 2 and _checks(early)["staging first"].status is Status.CRIT
    assert _revision("production") == ("0002",)

    staging = runner.run("migrate", "staging", {"mode": "apply"}, progress=False)
    found = _checks(staging)
    assert staging.exit_code == 0, [str(f) for f in staging.findings]
    assert_charts_drawn(staging.notebook, staging.html)
    assert _revision("staging") == ("0004",) and found["verify"].value == "0004"
    assert found["backup"].status is Status.OK and "pre-migration-0004" in found["backup"].summary
    for step in (
        "revision",
        "drift",
        "plan",
        "lint",
        "sessions",
        "data",
        "staging first",
        "apply",
        "quick checks",
    ):
        assert step in found, step

    with pytest.raises(
        ConfirmationRequired, match="confirm='production'"
    ):  # refused before it starts
        runner.run("migrate", "production", {"mode": "apply"}, progress=False)
    assert _revision("production") == ("0002",)

    prod = runner.run(
        "migrate", "production", {"mode": "apply", "confirm": "production"}, progress=False
    )
    assert prod.exit_code == 0, [str(f) for f in prod.findings]
    assert _checks(prod)["staging first"].summary.startswith("staging applied 0004 in run migrate/")
    assert _revision("production") == ("0004",)


def test_an_override_is_recorded(environments):
    result = runner.run(
        "migrate",
        "production",
        {"mode": "apply", "confirm": "production", "skip_staging_check": "INC-9 hotfix"},
        progress=False,
    )
    gate = _checks(result)["staging first"]
    assert gate.status is Status.WARN and "INC-9 hotfix" in gate.summary
    assert result.exit_code == 1 and _revision("production") == ("0004",)


def test_rehearse_mode_never_touches_the_target(environments):
    result = runner.run("migrate", "staging", {"mode": "rehearse"}, progress=False)
    assert result.exit_code == 0, [str(f) for f in result.findings]
    assert _checks(result)["rehearse downgrade"].status is Status.OK
    assert _revision("staging") == ("0002",)


def test_migrations_cli(environments, capfd):
    from pgrunbook.cli import main

    assert main(["migrations", "status", "-t", "staging"]) == 0
    assert "2 pending: 0003" in capfd.readouterr().out
    assert main(["migrations", "plan", "-t", "staging"]) == 0
    out = capfd.readouterr().out
    assert "-- revision 0003" in out and "CREATE TABLE projects" in out
    assert main(["migrations", "diff", "-t", "staging", "--against", "production"]) == 0
    assert main(["migrations", "deploy", "-t", "staging", "--no-progress"]) == 0
    assert _revision("staging") == ("0004",)
    capfd.readouterr()
    assert main(["migrations", "diff", "-t", "staging", "--against", "production"]) == 1
    assert "extra table public.reviews" in capfd.readouterr().out
    assert (
        main(["migrations", "resolve", "-t", "production", "--applied", "0003", "--no-progress"])
        == 3
    )
    assert _revision("production") == ("0002",)  # protected: needs confirm
    assert (
        main(
            [
                "migrations",
                "resolve",
                "-t",
                "production",
                "--applied",
                "0003",
                "--confirm",
                "production",
                "--no-progress",
            ]
        )
        == 0
    )
    assert _revision("production") == ("0003",)
    assert main(["migrations", "reset", "-t", "production"]) == 3
    assert main(["migrations", "reset", "-t", "staging"]) == 0
    assert _revision("staging") == ("0004",)


def test_migrations_new_autogenerates_against_a_target(environments, tmp_path, monkeypatch):
    import shutil

    from pgrunbook.procedures import migrate

    home = tmp_path / "home"
    shutil.copytree(runner.config.settings().home / "migrations", home / "migrations")
    shutil.copy(runner.config.settings().home / "pyproject.toml", home / "pyproject.toml")
    (home / "runbooks").mkdir()
    monkeypatch.setenv("PGRUNBOOK_HOME", str(home))
    staging = runner.targets.resolve("staging")
    migrations.upgrade(staging, "head")
    with db.connect(staging, readonly=False) as conn:
        conn.execute(
            "DROP INDEX ix_services_price"
        )  # the models have it: autogenerate adds it back
    path = migrate.new_revision(staging, "restore price index")
    text = open(path).read()
    assert path.startswith(str(home / "migrations" / "versions")) and "restore price index" in text
    assert "op.create_index" in text and "ix_services_price" in text

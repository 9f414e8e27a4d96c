"""The status checks, on each server, and the status runbook end to end."""

from datetime import UTC

import psycopg
import pytest

from pgrunbook.archive import runner
from pgrunbook.base import db
from pgrunbook.base.findings import Status
from pgrunbook.checks import status
from pgrunbook.cli import main


def test_checks_on_a_migrated_database(migrated):
    with db.connect(migrated) as conn:
        assert status.connectivity(conn).status is Status.OK
        autovacuum = conn.execute("SHOW autovacuum").fetchone()[0]
        settings_finding = status.settings_check(conn)
        assert settings_finding.status is (Status.OK if autovacuum == "on" else Status.WARN)
        assert status.database_size(conn).value > 1_000_000
        assert status.migration_state(conn, migrated).status is Status.OK
        sizes = status.table_sizes(conn)
        settings = status.settings(conn)
    assert {"users", "services", "reviews"} <= set(sizes["table"])
    assert "max_connections" in set(settings["name"])


def test_inspection_sessions_are_read_only_with_timeouts(migrated):
    with db.connect(migrated, application="pgrunbook/test", lock_timeout="3s") as conn:
        shown = [
            conn.execute(f"SHOW {s}").fetchone()[0]
            for s in (
                "default_transaction_read_only",
                "lock_timeout",
                "statement_timeout",
                "application_name",
            )
        ]
        assert shown == ["on", "3s", "1min", "pgrunbook/test"]
        with pytest.raises(psycopg.errors.ReadOnlySqlTransaction):
            conn.execute("DELETE FROM users")


@pytest.mark.parametrize(
    "held, limit, expected",
    [(0, 20, Status.OK), (3, 5, Status.OK), (4, 5, Status.WARN), (5, 5, Status.CRIT)],
)
def test_connection_use_against_the_pool_limit(migrated, held, limit, expected):
    others = [psycopg.connect(migrated.url) for _ in range(held)]
    try:
        with db.connect(migrated) as conn:
            finding = status.connection_use(conn, pool_limit=limit)
    finally:
        for c in others:
            c.close()
    assert finding.status is expected and finding.value == held


def test_the_settings_shown_are_the_servers_not_pgrunbooks_own_session(migrated):
    """pgrunbook's session sets its own timeouts; the status table shows what the server gives
    everyone else (here: the built-in default), and says where it comes from."""
    with db.connect(migrated) as conn:
        assert conn.execute("SHOW statement_timeout").fetchone()[0] == "1min"  # our session's
        table = status.settings(conn).set_index("name")
    for name in ("statement_timeout", "lock_timeout"):
        assert table.loc[name, "setting"] == "0 (off)" and table.loc[name, "source"] == "default"


def test_backup_age_against_the_rpo(tmp_path, monkeypatch):
    """One judgement of backup age: the newest verified backup against the RPO."""
    import json
    from datetime import datetime, timedelta

    from pgrunbook.checks import recovery
    from pgrunbook.facts import backups

    def made(age_h: float, *, ok: bool | None, target: str = "x"):
        name = f"b{age_h}"
        (tmp_path / target / name).mkdir(parents=True)
        end = datetime.now(UTC) - timedelta(hours=age_h)
        (tmp_path / target / name / "manifest.json").write_text(
            json.dumps({"end": end.isoformat()})
        )
        if ok is not None:
            (tmp_path / target / name / "verify.json").write_text(json.dumps({"ok": ok}))

    monkeypatch.setenv("PGRUNBOOK_BACKUPS_DIR", str(tmp_path))
    assert recovery.rpo_finding(backups.all_backups("x"), rpo_h=24).status is Status.CRIT
    assert (
        recovery.rpo_finding(backups.all_backups("x"), rpo_h=24, required=False).status is Status.OK
    )
    made(30, ok=True)  # a daily backup missed: CRIT after 26 h (the dead man's switch)
    assert recovery.rpo_finding(backups.all_backups("x"), rpo_h=24).status is Status.CRIT
    made(25, ok=True)
    made(2, ok=None)  # newer, never verified: does not count
    assert recovery.rpo_finding(backups.all_backups("x"), rpo_h=24).status is Status.WARN
    made(1, ok=False)  # newer, failed verification: does not count, and is never 'latest'
    made(3, ok=True)
    fresh = recovery.rpo_finding(backups.all_backups("x"), rpo_h=24)
    assert fresh.status is Status.OK and 2.9 < fresh.value < 3.1
    assert backups.find("x").id == "b3"
    made(5, ok=None, target="y")  # never verified, and a newer one that failed verification
    made(1, ok=False, target="y")
    assert backups.find("y").id == "b5"  # latest is never the one that failed
    assert recovery.rpo_finding(backups.all_backups("x"), rpo_h=1).status is Status.CRIT


def test_status_runbook_on_each_server(server, monkeypatch):
    """End to end through the runner: on the external server the database is not migrated (WARN)."""
    monkeypatch.setenv("STAGING_DATABASE_URL", server)
    result = runner.run("status", "staging", progress=False)
    migrations = next(f for f in result.findings if f.check == "migrations")
    assert result.outcome in ("OK", "WARN") and result.exit_code == Status[result.outcome].value
    assert result.outcome == migrations.status.name


def test_demo_runs_status_and_seed(sandbox, capfd):
    assert main(["demo", "--no-progress"]) == 0
    out = capfd.readouterr().out
    assert (
        "status on sandbox: OK" in out and "seed on sandbox: OK" in out and "reports are in" in out
    )
    from pgrunbook.facts import history

    from .conftest import PYTHON_REPRS, shown

    root = history.index_path().parent
    seeded = root / history.select(runbook="seed")[-1]["files"]["ipynb"]["path"]
    outputs = shown(seeded)  # the row counts as a table, not a Python dict
    assert not [r for r in PYTHON_REPRS if r in outputs], outputs[:1500]

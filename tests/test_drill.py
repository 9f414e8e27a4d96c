"""The disaster-recovery drill, end to end through the runner, for each disaster."""

import psycopg
import pytest

from pgrunbook.archive import runner
from pgrunbook.base import db, targets
from pgrunbook.base.errors import BackupNotFound
from pgrunbook.base.findings import Status
from pgrunbook.facts import backups, catalog
from pgrunbook.procedures import drill
from tests.conftest import PYTHON_REPRS, shown


@pytest.fixture(autouse=True)
def own_backups_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("PGRUNBOOK_BACKUPS_DIR", str(tmp_path / "backups"))


def _side_databases(target):
    with psycopg.connect(db.with_database(target.url, "postgres")) as conn:
        return conn.execute(
            "SELECT datname FROM pg_database WHERE datname LIKE 'staging_%'"
        ).fetchall()


def _counts(target):
    with db.connect(target) as conn:
        return catalog.row_counts(conn)


@pytest.mark.parametrize("disaster", drill.DISASTERS)
def test_drill_recovers_and_counts_what_was_lost(sandbox, disaster):
    staging = targets.resolve("staging")
    before, side = _counts(staging), _side_databases(staging)
    result = runner.run(
        "dr_drill", "staging", {"disaster": disaster, "writes_after_backup": "7"}, progress=False
    )
    assert result.exit_code == 0, (result.error, [str(f) for f in result.findings])
    by_check = {f.check: f for f in result.findings}
    # every row written after a dump is lost; none, restored to the moment before the disaster
    assert by_check["rpo achieved"].value == (0 if disaster == drill.PITR else 7)
    assert by_check["rto achieved"].status is Status.OK
    assert _counts(staging) == before  # the data is back as it was, the marker table gone
    assert _side_databases(staging) == side  # no restored or damaged copy left behind
    outputs = shown(result.notebook)  # values as a person writes them, no Python reprs
    assert not [r for r in PYTHON_REPRS if r in outputs], outputs[:2000]
    if disaster != drill.PITR:  # the drill's dump, holding its marker table, is never "latest"
        [made] = backups.all_backups(staging)
        assert made.drill
        with pytest.raises(BackupNotFound, match="1 made by drills, restored only by id"):
            backups.find(staging, "latest")
        assert backups.find(staging, made.id) == made


def test_drill_is_refused_on_production(sandbox):
    before = _counts(targets.resolve("production"))
    with pytest.raises(drill.DrillRefused, match="refused on protected target"):
        runner.run("dr_drill", "production", progress=False)
    assert _counts(targets.resolve("production")) == before


@pytest.fixture
def staging_on(scratch, monkeypatch):
    """A small Fixia database on `server`, configured as the target `staging`."""
    from pgrunbook.base import migrations
    from pgrunbook.procedures import seed

    migrations.upgrade(scratch, "head")
    with db.connect(scratch, readonly=False) as conn:
        seed.seed(conn, scratch, mode="development", users=60)
    monkeypatch.setenv("STAGING_DATABASE_URL", scratch.url)
    return targets.resolve("staging")


@pytest.mark.matrix
@pytest.mark.parametrize("disaster", ["dropped-table", "dropped-database"])
def test_the_drill_on_each_server(staging_on, disaster):
    before, side = _counts(staging_on), _side_databases(staging_on)
    result = runner.run(
        "dr_drill", "staging", {"disaster": disaster, "writes_after_backup": "3"}, progress=False
    )
    by_check = {f.check: f for f in result.findings}
    assert result.exit_code in (0, 1), (result.error, [str(f) for f in result.findings])
    assert by_check["rpo achieved"].value == 3
    assert _counts(staging_on) == before
    assert _side_databases(staging_on) == side

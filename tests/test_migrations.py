"""The Fixia migrations: up, down, up again, and the models match the result."""

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from pgrunbook.base import db, migrations
from pgrunbook.base.findings import Status
from pgrunbook.checks import status
from pgrunbook.facts import schema


def _diff(target):
    engine = migrations.engine(target)
    try:
        with engine.connect() as conn:
            return compare_metadata(MigrationContext.configure(conn), schema.metadata)
    finally:
        engine.dispose()


def _tables(target):
    with db.connect(target) as conn:
        return {
            r[0]
            for r in conn.execute(
                "SELECT tablename FROM pg_tables WHERE schemaname = 'public' ORDER BY 1"
            )
        }


def test_upgrade_downgrade_upgrade_matches_models(scratch):
    migrations.upgrade(scratch, "head")
    assert _diff(scratch) == []
    migrations.downgrade(scratch, "base")
    assert _tables(scratch) == {"alembic_version"}
    migrations.upgrade(scratch, "head")
    assert _diff(scratch) == []
    assert _tables(scratch) == {
        "alembic_version",
        "users",
        "categories",
        "services",
        "projects",
        "reviews",
    }


def test_every_revision_downgrades_to_the_one_before(scratch):
    script = migrations.script_directory()
    order = [r.revision for r in reversed(list(script.walk_revisions()))]
    assert len(order) >= 4
    for rev in order:
        migrations.upgrade(scratch, rev)
    for before in reversed(order[:-1]):
        migrations.downgrade(scratch, before)
        with db.connect(scratch) as conn:
            assert migrations.current(conn) == (before,)


def test_status_lists_pending_revisions_with_messages(scratch):
    migrations.upgrade(scratch, "0002")
    with db.connect(scratch) as conn:
        st = migrations.status(conn)
        finding = status.migration_state(conn, scratch)
    assert st.current == ("0002",)
    assert [r.revision for r in st.pending] == ["0003", "0004"]
    assert "projects" in st.pending[0].message
    assert finding.status is Status.WARN and "2 pending" in finding.summary


def test_status_of_an_unmigrated_database(scratch):
    """Configured for the migrations and not migrated: WARN; not configured (any database): not
    judged."""
    import dataclasses

    from pgrunbook.base.config import App

    fixia = dataclasses.replace(scratch, app=App("fixia", migrations="alembic"))
    with db.connect(scratch) as conn:
        st = migrations.status(conn)
        finding = status.migration_state(conn, fixia)
        elsewhere = status.migration_state(conn, scratch)
    assert not st.managed and len(st.pending) == 4
    assert finding.status is Status.WARN and "not under migrations" in finding.summary
    assert elsewhere.status is Status.OK and "not managed" in elsewhere.summary


def test_unknown_revision_is_crit(migrated):
    with db.connect(migrated, readonly=False) as conn:
        conn.execute("UPDATE alembic_version SET version_num = 'ffff'")
        finding = status.migration_state(conn, migrated)
    assert finding.status is Status.CRIT and "ffff" in finding.summary


def test_each_revision_commits_on_its_own(scratch):
    """A failing revision leaves the database at the last good one (per-revision transactions)."""
    migrations.upgrade(scratch, "0001")
    with db.connect(scratch, readonly=False) as conn:  # make 0002 fail: its table already exists
        conn.execute("CREATE TABLE services (id int)")
    try:
        migrations.upgrade(scratch, "head")
    except Exception as e:
        assert "services" in str(e)
    else:
        raise AssertionError("the upgrade should have failed on 0002")
    with db.connect(scratch) as conn:
        assert migrations.current(conn) == ("0001",)
        assert conn.execute("SELECT to_regclass('categories')").fetchone()[0] is None


def test_constraint_and_index_names_match_the_models(migrated):
    """compare_metadata skips CHECK constraints; the catalog does not."""

    expected = set()
    for table in schema.metadata.sorted_tables:
        expected |= {c.name for c in table.constraints if c.name} | {i.name for i in table.indexes}
    with db.connect(migrated) as conn:
        live = {
            r[0]
            for r in conn.execute(
                "SELECT conname FROM pg_constraint c JOIN pg_namespace n ON n.oid = c.connamespace"
                " WHERE n.nspname = 'public' AND contype IN ('p', 'u', 'f', 'c')"
                " UNION SELECT indexname FROM pg_indexes WHERE schemaname = 'public'"
                " AND indexname NOT IN (SELECT conname FROM pg_constraint)"
            )
        }
    live.discard("alembic_version_pkc")
    assert live == expected

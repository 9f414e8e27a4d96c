"""Backups across server versions, with only the client programs pip installs: a backup made by
the 18 client restores into 16 and 15, a backup goes into the same or a newer major version, and
an older server is refused before anything starts, naming both versions."""

from __future__ import annotations

import uuid

import psycopg
import pytest
from psycopg import sql

from pgrunbook.archive import runner
from pgrunbook.base import db, migrations, pgrestore, pgtools
from pgrunbook.base.findings import Status
from pgrunbook.base.targets import Target
from pgrunbook.facts import backups
from pgrunbook.procedures import admin, dumps, restore, seed
from tests.conftest import EXTERNAL, databases


@pytest.fixture(autouse=True)
def own_backups_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("PGRUNBOOK_BACKUPS_DIR", str(tmp_path / "backups"))


def _database(admin_url: str, name: str) -> Target:
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    return Target("scratch", db.with_database(admin_url, name), sandbox=True, source="test")


def _drop(admin_url: str, *names: str) -> None:
    """Drop the databases named (a name with % is a LIKE pattern)."""
    with psycopg.connect(admin_url, autocommit=True) as conn:
        for pattern in names:
            found = conn.execute(
                "SELECT datname FROM pg_database WHERE datname LIKE %s", [pattern]
            ).fetchall()
            for (name,) in found:
                conn.execute(
                    sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
                )


@pytest.fixture
def on16(pg16_url):
    """A seeded Fixia database on the PostgreSQL 16 from pip."""
    target = _database(pg16_url, f"pgrb_v_{uuid.uuid4().hex[:8]}")
    migrations.upgrade(target, "head")
    with db.connect(target, readonly=False) as conn:
        seed.seed(conn, target, mode="development", users=120)
    yield target
    _drop(pg16_url, target.database)


def _major(target: Target) -> int:
    with psycopg.connect(target.url) as conn:
        return conn.info.server_version // 10000


def test_pip_clients_are_the_embedded_18_and_the_wheels_16(pg16_url):
    found = {t.major for t in pgtools.installed("pg_restore")}
    assert found == {18, 16}  # the suite sees no system client (PGRUNBOOK_PG_CLIENTS)
    assert pgtools.choose("pg_dump", 16).major == 16


def test_a_backup_of_16_by_the_18_client_restores_through_its_script(on16, monkeypatch):
    """An archive pg_dump 18 wrote (as every backup of a 16 server did before a 16 client was
    used): pg_restore 16 cannot read it, pg_restore 18 cannot connect to 16; its script is
    streamed through psql with `SET transaction_timeout` left out."""
    monkeypatch.setenv("PGRUNBOOK_PG_CLIENTS", "embedded")
    backup = dumps.create(on16)
    assert backup.manifest["pg_dump_version"].startswith("18.")
    monkeypatch.setenv("PGRUNBOOK_PG_CLIENTS", "embedded,pgserver")
    verdict, _ = restore.verify(on16, backup)
    assert verdict.status is Status.WARN, verdict.summary  # the wheel's 16 has no amcheck
    assert "amcheck is not available on this server" in verdict.summary
    record = backups.load(backup.path).verification
    assert record["psql_version"].startswith("18.") and record["server_major"] == 16
    assert record["left_out_settings"] == ["transaction_timeout"]
    before = databases(on16.url)
    result = restore.restore(on16, backups.find("scratch", backup.id), mode="swap")
    assert result.verified and result.kept_as in databases(on16.url)
    with db.connect(on16) as conn:
        assert conn.execute("SELECT count(*) FROM users").fetchone()[0] == 120
        conn.execute("SELECT 1")  # the swapped-in copy takes new rows (sequences repaired)
    assert databases(on16.url) == before | {result.kept_as}
    admin.drop_database(on16, result.kept_as)


def test_a_streamed_restore_that_fails_says_why(on16, monkeypatch):
    monkeypatch.setenv("PGRUNBOOK_PG_CLIENTS", "embedded")
    backup = dumps.create(on16)
    admin_url = db.with_database(on16.url, "postgres")
    target = _database(admin_url, "pgrb_v_fail")
    try:
        way = pgrestore.restorer(16, made_by=18, server_settings=frozenset({"lock_timeout"}))
        assert way.streamed
        way.run(backup.dump_path, target.url)
        with pytest.raises(pgtools.ToolFailed, match=r"^psql exited 3: .*ERROR: .*already exists"):
            way.run(backup.dump_path, target.url)  # twice: every table is already there
    finally:
        _drop(admin_url, "pgrb_v_fail")


def _same_name_on(admin_url: str, source: Target) -> Target:
    """An empty database of `source`'s name on the server of `admin_url` (another server)."""
    _drop(admin_url, source.database)
    return _database(admin_url, source.database)


def test_a_backup_restores_into_a_newer_server(on16, sandbox):
    """The upgrade path: a backup of 16 (pg_dump 16) restored by id into an 18 server."""
    backup = dumps.create(on16)
    assert backup.manifest["pg_dump_version"].startswith("16.")
    newer = _same_name_on(sandbox.url("postgres"), on16)
    try:
        result = restore.restore(newer, backups.find("scratch", backup.id))
        assert result.verified, result.findings
        assert _major(Target("x", db.with_database(newer.url, result.database))) == 18
        admin.drop_database(newer, result.database)
    finally:
        _drop(sandbox.url("postgres"), newer.database)


LOOKS_LIKE_DDL = "ALTER TABLE ONLY public.users ALTER COLUMN email SET (pg_attver=1);"


@pytest.mark.skipif(not EXTERNAL, reason="PGRUNBOOK_TEST_EXTERNAL_URL is not set")
@pytest.mark.external_server
def test_a_backup_of_15_restores_into_16_and_18(sandbox, pg16_url):
    """pip has no 15 client: pg_dump 18 makes the backup. Column options of the source's build
    that the newer servers reject (one Debian 15 build puts pg_attver on every column) are left
    out and named; data that looks like such a line is restored as it was."""
    source = _database(EXTERNAL, f"pgrb_v_{uuid.uuid4().hex[:8]}")
    try:
        migrations.upgrade(source, "head")
        with db.connect(source, readonly=False) as conn:
            seed.seed(conn, source, mode="development", users=50)
            conn.execute("CREATE TABLE notes (body text)")  # one column: a COPY line is the text
            conn.execute("INSERT INTO notes VALUES (%s)", [LOOKS_LIKE_DDL])
            foreign = {
                name.split("=")[0]
                for (options,) in conn.execute(
                    "SELECT attoptions FROM pg_attribute WHERE attoptions IS NOT NULL"
                    " AND attrelid = 'public.users'::regclass"
                )
                for name in options
            } - {"n_distinct", "n_distinct_inherited"}
        backup = dumps.create(source)
        assert backup.manifest["pg_dump_version"].startswith("18.")
        for admin_url in (pg16_url, sandbox.url("postgres")):
            newer = _same_name_on(admin_url, source)
            try:
                result = restore.restore(newer, backups.find("scratch", backup.id))
                assert result.verified, result.findings
                left = [f for f in result.findings if f.check == "left out"]
                assert [f.status for f in left] == ([Status.WARN] if foreign else [])
                assert all(name in left[0].summary for name in foreign)
                copy = Target("copy", db.with_database(newer.url, result.database))
                with db.connect(copy) as conn:
                    texts = [r[0] for r in conn.execute("SELECT body FROM notes")]
                assert texts == [LOOKS_LIKE_DDL]
            finally:
                _drop(admin_url, newer.database, f"{newer.database}_restored_%")
    finally:
        _drop(EXTERNAL, source.database)


def test_a_backup_into_an_older_server_is_refused_naming_both_versions(on16, sandbox):
    source = _same_name_on(sandbox.url("postgres"), on16)
    try:
        migrations.upgrade(source, "head")
        backup = dumps.create(source)
        before = databases(on16.url)
        with pytest.raises(restore.RestoreRefused) as refused:
            restore.restore(on16, backups.find("scratch", backup.id))
        message = str(refused.value)
        assert "\n" not in message
        assert f"PostgreSQL {backup.manifest['server_version']}" in message
        assert "PostgreSQL 16" in message
        assert databases(on16.url) == before
    finally:
        _drop(sandbox.url("postgres"), source.database)


def test_a_refresh_into_an_older_server_is_refused_before_it_starts(
    on16, sandbox, monkeypatch, reports_dir
):
    """The runner's guard: exit 3, one line with both versions, nothing written."""
    production = _same_name_on(sandbox.url("postgres"), on16)
    try:
        monkeypatch.setenv("DATABASE_URL", production.url)
        monkeypatch.setenv("STAGING_DATABASE_URL", on16.url)
        written = set(reports_dir.rglob("*")) if reports_dir.exists() else set()
        with pytest.raises(restore.RestoreRefused, match=r"PostgreSQL 18.* PostgreSQL 16"):
            runner.run(
                "staging_refresh",
                "staging",
                {"mode": "apply", "confirm": "staging"},
                progress=False,
            )
        assert (set(reports_dir.rglob("*")) if reports_dir.exists() else set()) == written
        assert backups.all_backups("production") == []
    finally:
        _drop(sandbox.url("postgres"), production.database)


def test_doctor_names_the_client_programs_for_each_server(on16, capsys, monkeypatch):
    from pgrunbook.cli import main

    monkeypatch.setenv("STAGING_DATABASE_URL", on16.url)
    assert main(["doctor", "-t", "staging"]) == 0
    out = capsys.readouterr().out
    assert "staging: PostgreSQL 16." in out and "backups by pg_dump 16." in out
    monkeypatch.setenv("PGRUNBOOK_PG_CLIENTS", "embedded")  # no 16 client: a warning, the way
    assert main(["doctor", "-t", "staging"]) == 1
    out = capsys.readouterr().out
    assert "WARN" in out and "no PostgreSQL 16 client is installed" in out
    assert "as a script through psql 18." in out

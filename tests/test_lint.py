"""The migration lint, statement by statement, on PostgreSQL's own parser and the live server.

Each case: a statement (or a short script), written from PostgreSQL's documentation of ALTER
TABLE, CREATE INDEX and friends, run against a populated or an empty table, with the rule and
verdict expected of every action. The table runs against both servers; where the verdict rests on
whether PostgreSQL rewrites a table, the test also runs the statement and watches the table's
file node, so the lint's answer is checked against what the server really does."""

from __future__ import annotations

import re
import uuid

import psycopg
import pytest
from psycopg import sql

from pgrunbook.checks import lint
from pgrunbook.checks.lint import parse

from .conftest import EXTERNAL

SETUP = """
CREATE SCHEMA other;
CREATE SCHEMA app;
CREATE TABLE full_t (id int PRIMARY KEY, a varchar(20), n numeric(10,2), b text,
                     ts timestamp(3), c int, ref int);
INSERT INTO full_t SELECT g, 'x', 1, 'y', now(), g, g FROM generate_series(1, 100) g;
CREATE TABLE empty_t (id int PRIMARY KEY, a varchar(20), b text, c int);
CREATE TABLE other.far (id int PRIMARY KEY, v text);
INSERT INTO other.far SELECT g, 'v' FROM generate_series(1, 10) g;
CREATE TABLE app.orders (id int PRIMARY KEY, total int);
INSERT INTO app.orders SELECT g, g FROM generate_series(1, 10) g;
CREATE INDEX full_t_c ON full_t (c);
CREATE UNIQUE INDEX full_t_c_u ON full_t (c);
CREATE TABLE parent (id int, k int) PARTITION BY RANGE (k);
CREATE TABLE part0 PARTITION OF parent FOR VALUES FROM (100) TO (200);
INSERT INTO parent VALUES (1, 150);
CREATE TABLE part1 (id int, k int);
INSERT INTO part1 VALUES (1, 5);
CREATE TYPE mood AS ENUM ('ok');
CREATE VIEW v AS SELECT 1 AS one;
CREATE TABLE proven (id int PRIMARY KEY, c int, CONSTRAINT c_nn CHECK (c IS NOT NULL));
INSERT INTO proven VALUES (1, 1);
ANALYZE;
"""

TX = True  # inside the revision's transaction, as alembic runs it
CASES = [
    # (id, SQL, in a transaction, {(rule, verdict)} expected among its actions)
    ("serial pk", "ALTER TABLE full_t ADD COLUMN sid SERIAL PRIMARY KEY", TX,
     {("serial-column", "unsafe"), ("column-with-index", "unsafe")}),
    ("bigserial", "ALTER TABLE full_t ADD COLUMN big bigserial", TX, {("serial-column", "unsafe")}),
    ("bigserial on empty", "ALTER TABLE empty_t ADD COLUMN big bigserial", TX,
     {("serial-column", "safe")}),
    ("identity", "ALTER TABLE full_t ADD COLUMN idn bigint GENERATED ALWAYS AS IDENTITY", TX,
     {("identity-column", "unsafe")}),
    ("stored generated", "ALTER TABLE full_t ADD COLUMN g int GENERATED ALWAYS AS (c * 2) STORED",
     TX, {("stored-generated-column", "unsafe")}),
    ("multi-action alter",
     "ALTER TABLE full_t ALTER COLUMN b DROP DEFAULT, ADD COLUMN u uuid DEFAULT gen_random_uuid()",
     TX, {("alter-table", "safe"), ("volatile-default", "unsafe")}),
    ("constant default", "ALTER TABLE full_t ADD COLUMN k int DEFAULT 0", TX,
     {("add-column", "safe")}),
    ("required column", "ALTER TABLE full_t ADD COLUMN r int NOT NULL", TX,
     {("required-column-without-default", "unsafe")}),
    ("concurrently in a transaction", "CREATE INDEX CONCURRENTLY i1 ON full_t (b)", TX,
     {("index-concurrently", "safe"), ("not-in-a-transaction", "unsafe")}),
    ("concurrently outside", "CREATE INDEX CONCURRENTLY i1 ON full_t (b)", False,
     {("index-concurrently", "safe")}),
    ("index", "CREATE INDEX i2 ON full_t (b)", TX, {("index-without-concurrently", "unsafe")}),
    ("index on empty", "CREATE INDEX i3 ON empty_t (b)", TX,
     {("index-without-concurrently", "safe")}),
    ("not valid then validate",
     "ALTER TABLE full_t ADD CONSTRAINT ck CHECK (c > 0) NOT VALID;"
     " ALTER TABLE full_t VALIDATE CONSTRAINT ck", TX,
     {("check-not-valid", "safe"), ("validate-in-the-same-transaction", "unsafe")}),
    ("validate later", "ALTER TABLE full_t VALIDATE CONSTRAINT ck", TX,
     {("validate-constraint", "safe")}),
    ("drop index", "DROP INDEX full_t_c", TX, {("drop-index", "unsafe")}),
    ("drop index concurrently", "DROP INDEX CONCURRENTLY full_t_c", False,
     {("drop-index-concurrently", "safe")}),
    ("reindex", "REINDEX TABLE full_t", TX, {("reindex", "unsafe")}),
    ("truncate cascade", "TRUNCATE empty_t CASCADE", TX, {("truncate-cascade", "unsafe")}),
    ("truncate", "TRUNCATE full_t", TX, {("truncate", "unsafe")}),
    ("off the search_path", "ALTER TABLE other.far ADD COLUMN z int NOT NULL", TX,
     {("required-column-without-default", "unsafe")}),
    ("the target's search_path", "ALTER TABLE orders ADD COLUMN z int NOT NULL", TX,
     {("required-column-without-default", "unsafe")}),
    ("varchar widened", "ALTER TABLE full_t ALTER COLUMN a TYPE varchar(40)", TX,
     {("type-change-without-rewrite", "safe")}),
    ("varchar to text", "ALTER TABLE full_t ALTER COLUMN a TYPE text", TX,
     {("type-change-without-rewrite", "safe")}),
    ("numeric widened", "ALTER TABLE full_t ALTER COLUMN n TYPE numeric(12,2)", TX,
     {("type-change-without-rewrite", "safe")}),
    ("timestamp precision up", "ALTER TABLE full_t ALTER COLUMN ts TYPE timestamp(6)", TX,
     {("type-change-without-rewrite", "safe")}),
    ("varchar narrowed", "ALTER TABLE full_t ALTER COLUMN a TYPE varchar(10)", TX,
     {("type-change-rewrites", "unsafe")}),
    ("numeric scale changed", "ALTER TABLE full_t ALTER COLUMN n TYPE numeric(12,3)", TX,
     {("type-change-rewrites", "unsafe")}),
    ("int to bigint", "ALTER TABLE full_t ALTER COLUMN c TYPE bigint", TX,
     {("type-change-rewrites", "unsafe")}),
    ("exclusion", "ALTER TABLE full_t ADD CONSTRAINT ex EXCLUDE USING btree (c WITH =)", TX,
     {("exclusion-constraint", "unsafe")}),
    ("unique", "ALTER TABLE full_t ADD CONSTRAINT uq2 UNIQUE (c)", TX,
     {("unique-or-primary-key", "unsafe")}),
    ("unique using index", "ALTER TABLE full_t ADD CONSTRAINT uq UNIQUE USING INDEX full_t_c_u",
     TX, {("constraint-using-index", "safe")}),
    ("foreign key", "ALTER TABLE full_t ADD CONSTRAINT fk FOREIGN KEY (ref) REFERENCES full_t (id)",
     TX, {("foreign-key", "unsafe")}),
    ("foreign key not valid",
     "ALTER TABLE full_t ADD CONSTRAINT fk FOREIGN KEY (ref) REFERENCES full_t (id) NOT VALID",
     TX, {("foreign-key-not-valid", "safe")}),
    ("set not null", "ALTER TABLE full_t ALTER COLUMN c SET NOT NULL", TX,
     {("set-not-null", "unsafe")}),
    ("set not null proven", "ALTER TABLE proven ALTER COLUMN c SET NOT NULL", TX,
     {("set-not-null-proven", "safe")}),
    ("attach", "ALTER TABLE parent ATTACH PARTITION part1 FOR VALUES FROM (0) TO (10)", TX,
     {("attach-partition", "unsafe")}),
    ("detach", "ALTER TABLE parent DETACH PARTITION part0", TX, {("detach-partition", "unsafe")}),
    ("detach concurrently", "ALTER TABLE parent DETACH PARTITION part0 CONCURRENTLY", False,
     {("detach-partition-concurrently", "safe")}),
    ("cluster", "CLUSTER full_t USING full_t_pkey", TX, {("cluster", "unsafe")}),
    ("vacuum full", "VACUUM FULL full_t", False, {("vacuum-full", "unsafe")}),
    ("vacuum in a transaction", "VACUUM full_t", TX,
     {("vacuum", "safe"), ("not-in-a-transaction", "unsafe")}),
    ("lock", "LOCK TABLE full_t IN ACCESS EXCLUSIVE MODE", TX, {("lock-table", "unsafe")}),
    ("enum value", "ALTER TYPE mood ADD VALUE 'sad'", TX, {("enum-add-value", "safe")}),
    ("trigger", "CREATE TRIGGER trg BEFORE UPDATE ON full_t FOR EACH ROW EXECUTE FUNCTION"
     " suppress_redundant_updates_trigger()", TX, {("create-trigger", "caution")}),
    ("drop view", "DROP VIEW v", TX, {("drop-object", "unsafe")}),
    ("drop table", "DROP TABLE empty_t", TX, {("drop-table", "unsafe")}),
    ("drop column", "ALTER TABLE full_t DROP COLUMN b", TX, {("drop-column", "unsafe")}),
    ("rename column", "ALTER TABLE full_t RENAME COLUMN b TO bb", TX, {("rename", "unsafe")}),
    ("create table", "CREATE TABLE t3 (id int PRIMARY KEY, f int REFERENCES full_t (id));"
     " CREATE INDEX ON t3 (f); ALTER TABLE t3 ADD COLUMN q int NOT NULL", TX,
     {("create-table", "safe"), ("index-without-concurrently", "safe"),
      ("required-column-without-default", "safe")}),
]  # fmt: skip


@pytest.fixture(scope="module", params=["embedded", "external"])
def zoo(request, sandbox):
    """A database with populated and empty tables, a schema off the search_path and one on the
    database's own search_path, partitions, an enum, a view; on each server."""
    if request.param == "external" and not EXTERNAL:
        pytest.skip("PGRUNBOOK_TEST_EXTERNAL_URL is not set")
    admin = EXTERNAL if request.param == "external" else sandbox.url("postgres")
    name = f"pgrb_lint_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        conn.execute(
            sql.SQL("ALTER DATABASE {} SET search_path = public, app").format(sql.Identifier(name))
        )
    url = psycopg.conninfo.make_conninfo(admin, dbname=name)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(SETUP)
    yield url
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(name)))


def rule_of(finding) -> str:
    return re.match(r"[\w-]+", finding.summary)[0]


def _lint(url: str, script: str, in_transaction: bool) -> lint.LintResult:
    with psycopg.connect(url, autocommit=True) as conn:
        return lint.lint_revision(conn, "r1", script, in_transaction=in_transaction)


@pytest.mark.parametrize(("case", "script", "in_tx", "expected"), CASES, ids=[c[0] for c in CASES])
def test_each_statement_gets_its_rule_and_verdict(zoo, case, script, in_tx, expected):
    result = _lint(zoo, script, in_tx)
    got = {(s["rule"], s["verdict"]) for s in result.statements}
    assert expected <= got, (case, got)
    unsafe = {rule for rule, verdict in expected if verdict == "unsafe"}
    flagged = {rule_of(f) for f in result.findings if f.status.name == "CRIT"}
    assert unsafe <= flagged, (case, [f.summary for f in result.findings])
    caution = {rule for rule, verdict in expected if verdict == "caution"}
    assert caution <= {rule_of(f) for f in result.findings if f.status.name == "WARN"}
    if not unsafe and not caution:
        assert not [f for f in result.findings if rule_of(f) in {r for r, _ in got}]


def _relfilenode(conn, table: str) -> int:
    return conn.execute(
        "SELECT relfilenode FROM pg_class WHERE oid = %s::regclass", [table]
    ).fetchone()[0]


@pytest.mark.parametrize(
    "case",
    [
        c
        for c in CASES
        if {r for r, _ in c[3]} & {"type-change-rewrites", "type-change-without-rewrite"}
    ],
    ids=lambda c: c[0],
)
def test_rewrite_verdicts_match_what_the_server_does(zoo, case):
    """The lint says a type change rewrites exactly when PostgreSQL gives the table a new file."""
    _, script, in_tx, _ = case
    said = {s["rule"] for s in _lint(zoo, script, in_tx).statements}
    rewrites = "type-change-rewrites" in said
    with psycopg.connect(zoo) as conn:  # in a transaction, rolled back
        before = _relfilenode(conn, "full_t")
        conn.execute(script)
        after = _relfilenode(conn, "full_t")
        conn.rollback()
    assert (before != after) is rewrites


def test_an_unsafe_statement_is_excused_only_with_the_rule_and_a_reason(zoo):
    named = (
        "-- pgrunbook:ignore index-without-concurrently the table is read by a nightly job only\n"
    )
    result = _lint(zoo, named + "CREATE INDEX i4 ON full_t (b)", True)
    assert not result.findings
    assert result.statements[0]["verdict"] == ("excused: the table is read by a nightly job only")
    for comment in (
        "-- pgrunbook:ignore index-without-concurrently\n",  # no reason
        "-- pgrunbook:ignore drop-index because\n",  # another rule
    ):
        result = _lint(zoo, comment + "CREATE INDEX i4 ON full_t (b)", True)
        assert [rule_of(f) for f in result.findings] == ["index-without-concurrently"]


def test_squawk_counts_only_where_the_suite_is_silent_and_tables_hold_rows(zoo):
    """Squawk's `ban-drop-not-null` has no rule of the suite's: on a table with rows it raises
    the outcome, on an empty one it stays a note."""
    result = _lint(zoo, "ALTER TABLE full_t ALTER COLUMN a DROP NOT NULL", True)
    squawked = {n["rule"]: n["verdict"] for n in result.squawk}
    assert squawked.get("ban-drop-not-null") == "unsafe"
    assert any(f.summary.startswith("Squawk ban-drop-not-null") for f in result.findings)
    result = _lint(zoo, "ALTER TABLE empty_t ALTER COLUMN a DROP NOT NULL", True)
    assert not result.findings
    assert {n["rule"]: n["verdict"] for n in result.squawk}.get("ban-drop-not-null", "").startswith(
        "safe"
    )
    result = _lint(zoo, "CREATE INDEX i5 ON full_t (b)", True)
    notes = {n["rule"]: n["verdict"] for n in result.squawk}
    assert notes["require-concurrent-index-creation"].startswith("covered")
    assert len(result.findings) == 1  # one statement, one finding


def test_parse_follows_transactions_and_refuses_what_postgresql_refuses():
    script = "BEGIN;\nCREATE TABLE a (id int);\nCOMMIT;\nCREATE INDEX CONCURRENTLY i ON a (id);\n"
    a, b = parse(script)
    assert (a.in_transaction, b.in_transaction) == (True, False)
    assert (a.line, b.line) == (2, 4) and b.text == "CREATE INDEX CONCURRENTLY i ON a (id)"
    with pytest.raises(lint.LintParseError, match="line 2"):
        parse("SELECT 1;\nALTER TABLE t ADD COLUMN;")
    assert [s.text for s in parse("SELECT ';', $$a;b$$; -- x;\nSELECT 2")] == [
        "SELECT ';', $$a;b$$",
        "SELECT 2",
    ]


@pytest.mark.parametrize(
    "statement",
    [
        "ALTER TABLE full_t ALTER COLUMN n TYPE numeric(12,2)",
        "ALTER TABLE full_t ALTER COLUMN a TYPE varchar(40)",
        "ALTER TABLE full_t ALTER COLUMN a TYPE text",
        "ALTER TABLE full_t ALTER COLUMN id SET NOT NULL",  # a primary key: NOT NULL already
    ],
)
def test_what_postgresql_does_in_the_catalog_only_is_not_crit(zoo, statement):
    """Squawk, reading only the SQL, calls these a rewrite or a scan; on the live table they are
    catalog-only (measured: no new relfilenode, no scan), so the plan is not CRIT."""
    result = _lint(zoo, statement, True)
    assert not result.findings, [str(f) for f in result.findings]
    assert result.statements and all(r["verdict"] == "safe" for r in result.statements)
    assert not any(n["verdict"] == "unsafe" for n in result.squawk), result.squawk


PLAN = [  # a history's migrations, in order: each makes or changes what the ones before made
    """CREATE TYPE "Status" AS ENUM ('draft', 'sent');
    CREATE TABLE "Doc" (id int PRIMARY KEY, title text, old_col int, status "Status");
    CREATE FUNCTION touch() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RETURN NEW; END $$;
    CREATE TRIGGER doc_touch BEFORE UPDATE ON "Doc" FOR EACH ROW EXECUTE FUNCTION touch();
    CREATE INDEX "Doc_title_idx" ON "Doc" (title);
    CREATE VIEW doc_titles AS SELECT title FROM "Doc";""",
    """ALTER TABLE "Doc" DROP COLUMN old_col;
    ALTER TABLE "Doc" RENAME COLUMN title TO name;
    ALTER TYPE "Status" RENAME VALUE 'sent' TO 'delivered';
    DROP VIEW doc_titles;
    DROP INDEX "Doc_title_idx";
    DROP TRIGGER doc_touch ON "Doc";
    DROP FUNCTION touch();
    ALTER TABLE "Doc" RENAME TO "Document";
    CREATE TEMP TABLE scratch (id int);
    DROP TABLE scratch;
    DROP TABLE IF EXISTS never_made;
    DROP TYPE IF EXISTS "NeverMade";
    DROP FUNCTION IF EXISTS never_made();""",
    """ALTER TABLE "Document" ALTER COLUMN name SET NOT NULL;
    TRUNCATE "Document" CASCADE;
    DROP TABLE "Document";
    DROP TYPE "Status";""",
]


def test_a_plan_is_judged_as_a_sequence_what_it_made_is_new(zoo):
    """Dropping, renaming or altering what an earlier migration of the same plan made (or an
    earlier statement of the same file) is no risk to a running app, and IF EXISTS on what does
    not exist is nothing: no finding. The same statements on live objects stay CRIT."""
    created: set[str] = set()
    with psycopg.connect(zoo, autocommit=True) as conn:
        results = [
            lint.lint_revision(conn, f"r{n}", script, created=created, in_transaction=True)
            for n, script in enumerate(PLAN)
        ]
        found = [f.summary for r in results for f in r.findings]
        assert found == [], found
        live = lint.lint_revision(
            conn,
            "live",
            "ALTER TABLE full_t DROP COLUMN b; ALTER TABLE full_t RENAME COLUMN a TO a2;"
            " ALTER TYPE mood RENAME VALUE 'ok' TO 'fine'; DROP VIEW v; DROP TABLE empty_t;"
            " DROP FUNCTION IF EXISTS pg_catalog.now();",
            in_transaction=True,
        )
    flagged = {rule_of(f) for f in live.findings if f.status.name == "CRIT"}
    assert {"drop-column", "rename", "rename-enum-value", "drop-object", "drop-table"} <= flagged

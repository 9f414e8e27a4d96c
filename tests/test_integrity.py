"""Integrity checks on real databases with planted faults: each found, named and counted exactly."""

import dataclasses

import psycopg
import pytest

from pgrunbook.archive import runner
from pgrunbook.base import db
from pgrunbook.base.errors import ConfirmationRequired, UnknownParameter
from pgrunbook.base.findings import Status
from pgrunbook.base.targets import Target
from pgrunbook.checks import compare, integrity
from pgrunbook.procedures import seed
from pgrunbook.procedures.sandbox import Sandbox


@pytest.fixture
def fixia(migrated):
    with db.connect(migrated, readonly=False) as conn:
        seed.seed(conn, migrated, mode="development", users=300)
    return migrated


def _run(target, check, **options):
    with db.connect(target) as conn:
        return check(conn, **options)


def _write(target, *statements):
    with psycopg.connect(target.url, autocommit=True) as conn:
        for s in statements:
            conn.execute(s)


@pytest.mark.matrix
def test_a_clean_database_is_all_ok(fixia):
    from pgrunbook.base.config import project_path

    for check in (
        integrity.foreign_keys,
        integrity.unique_keys,
        integrity.unvalidated,
        integrity.sequences,
        integrity.wraparound,
    ):
        assert {f.status for f in _run(fixia, check)} == {Status.OK}, check
    assert {
        f.status for f in _run(fixia, integrity.assertions, folders=[project_path("checks/fixia")])
    } == {Status.OK}
    idx = _run(fixia, integrity.indexes, amcheck="btree")
    assert {f.status for f in idx} <= {
        Status.OK,
        Status.WARN,
    }  # WARN where amcheck is not installed


def test_orphans_under_a_not_valid_foreign_key(fixia):
    _write(
        fixia,
        "ALTER TABLE reviews DROP CONSTRAINT fk_reviews_client_id_users",
        "UPDATE reviews SET client_id = 900000 + id WHERE id IN (3, 5, 8)",
        "ALTER TABLE reviews ADD CONSTRAINT fk_reviews_client_id_users FOREIGN KEY (client_id)"
        " REFERENCES users (id) NOT VALID",
    )
    found = [f for f in _run(fixia, integrity.foreign_keys) if f.status is Status.CRIT]
    assert len(found) == 1 and found[0].check == "foreign key fk_reviews_client_id_users"
    assert found[0].value == 3 and "(NOT VALID)" in found[0].summary
    assert found[0].summary.startswith("3 orphans in ")
    # each orphan by its key and its reference, and the query that lists them all
    assert found[0].examples == (
        "id=3, client_id=900003",
        "id=5, client_id=900005",
        "id=8, client_id=900008",
    )
    with psycopg.connect(fixia.url) as conn:
        assert conn.execute(found[0].query).fetchall() == [(3, 900003), (5, 900005), (8, 900008)]


def test_orphans_under_a_composite_foreign_key(fixia):
    _write(
        fixia,
        "CREATE TABLE parent (a int, b int, PRIMARY KEY (a, b))",
        "CREATE TABLE child (id int PRIMARY KEY, a int, b int)",
        "INSERT INTO parent VALUES (1, 1), (1, 2)",
        "INSERT INTO child VALUES (1, 1, 1), (2, 1, 3), (3, NULL, 9)",
        "ALTER TABLE child ADD FOREIGN KEY (a, b) REFERENCES parent NOT VALID",
    )
    found = [
        f for f in _run(fixia, integrity.foreign_keys, tables="child") if f.status is Status.CRIT
    ]
    assert (
        len(found) == 1 and found[0].value == 1 and found[0].examples == ("id=2, a=1, b=3",)
    )  # (NULL, 9) is exempt
    assert found[0].summary.startswith("1 orphan in "), found[0].summary  # one, not "1 orphans"


def test_sample_reads_part_of_larger_tables_and_says_so(scratch):
    """60,000 rows, every tenth an orphan under a NOT VALID foreign key and breaking a NOT VALID
    check."""
    _write(
        scratch,
        "CREATE TABLE parent (id int PRIMARY KEY)",
        "INSERT INTO parent SELECT generate_series(1, 10)",
        "CREATE TABLE child (id int PRIMARY KEY, parent_id int, n int)",
        "INSERT INTO child SELECT g, CASE WHEN g % 10 = 0 THEN 99 ELSE 1 END, CASE WHEN g % 10 = 0"
        " THEN -1 ELSE 1 END FROM generate_series(1, 60000) g",
        "ALTER TABLE child ADD FOREIGN KEY (parent_id) REFERENCES parent NOT VALID",
        "ALTER TABLE child ADD CONSTRAINT ck_n CHECK (n > 0) NOT VALID",
        "VACUUM ANALYZE child",
    )
    for check in (integrity.foreign_keys, integrity.unvalidated):
        every = [f for f in _run(scratch, check, tables="child") if f.status is Status.CRIT]
        assert len(every) == 1 and every[0].value == 6000 and "sample" not in every[0].summary
        part = [
            f for f in _run(scratch, check, tables="child", sample=6000) if f.status is Status.CRIT
        ]
        # about 10 % of the pages: some orphans, far from all of them (each page holds some)
        assert len(part) == 1 and 0 < part[0].value < 3000, part
        assert "in a sample of about 6,000 of 60,000 rows" in part[0].summary
        whole = [
            f
            for f in _run(scratch, check, tables="child", sample=100_000)
            if f.status is Status.CRIT
        ]
        assert (
            whole[0].value == 6000 and "sample" not in whole[0].summary
        )  # a table under the sample: read whole
    with pytest.raises(ValueError, match="sample must be 0"):
        integrity.Selection("all", sample=-1)


def test_duplicates_under_an_invalid_unique_index_and_the_index_itself(fixia):
    with psycopg.connect(fixia.url, autocommit=True) as conn:
        with pytest.raises(psycopg.errors.UniqueViolation):
            conn.execute("CREATE UNIQUE INDEX CONCURRENTLY ux_users_last_name ON users (last_name)")
        expected = conn.execute(
            "SELECT count(*) FROM (SELECT last_name FROM users GROUP BY 1 HAVING count(*) > 1) d"
        ).fetchone()[0]
    dup = [f for f in _run(fixia, integrity.unique_keys) if f.status is Status.CRIT]
    assert len(dup) == 1 and dup[0].value == expected and "ux_users_last_name" in dup[0].summary
    idx = [f for f in _run(fixia, integrity.indexes, amcheck="off") if f.status is not Status.OK]
    assert [(f.check, f.status) for f in idx] == [("index ux_users_last_name", Status.WARN)]
    assert "invalid" in idx[0].summary and "pg_dump leaves it out" in idx[0].summary


def test_not_valid_check_re_evaluated(fixia):
    _write(
        fixia,
        "UPDATE projects SET budget_min = budget_max + 1 WHERE id IN (1, 2)",
        "ALTER TABLE projects ADD CONSTRAINT ck_budget CHECK (budget_min <= budget_max) NOT VALID",
    )
    found = [f for f in _run(fixia, integrity.unvalidated) if f.status is Status.CRIT]
    assert len(found) == 1 and found[0].value == 2 and "ck_budget" in found[0].check
    assert (
        found[0].examples == ("id=1", "id=2") and "rows by id" in found[0].summary
    )  # by key, not ctid
    with psycopg.connect(fixia.url) as conn:
        assert conn.execute(found[0].query).fetchall() == [(1,), (2,)]
    from pgrunbook.base.config import project_path

    broken = [
        f
        for f in _run(fixia, integrity.assertions, folders=[project_path("checks/fixia")])
        if f.status is Status.CRIT
    ]
    assert [f.check for f in broken] == ["assert budget_order"] and broken[0].value == 2


def test_a_sequence_behind_its_column(fixia):
    _write(fixia, "SELECT setval(pg_get_serial_sequence('users', 'id'), 5)")
    found = [f for f in _run(fixia, integrity.sequences) if f.status is Status.CRIT]
    assert len(found) == 1 and found[0].check == "sequence public.users_id_seq"
    assert found[0].value == 0 and "next value 6 is taken" in found[0].summary


def test_a_sequence_never_called_far_below_its_column_is_not_a_collision(scratch):
    """Keys 10001-10100 (a sample database's employee numbers) and a sequence from 1 never
    called: its first collision is 10,000 inserts away, not the next insert."""
    _write(
        scratch,
        "CREATE SEQUENCE emp_seq",
        "CREATE TABLE employees (emp_no int PRIMARY KEY DEFAULT nextval('emp_seq'), name text)",
        "INSERT INTO employees (emp_no) SELECT g FROM generate_series(10001, 10100) g",
        "CREATE SEQUENCE step_seq START 1 INCREMENT 5",
        "CREATE TABLE stepped (id int DEFAULT nextval('step_seq'))",
        "INSERT INTO stepped VALUES (3), (4), (21), (100)",  # 1, 6, 11, 16, 21: the 5th collides
    )
    found = {f.check: f for f in _run(scratch, integrity.sequences)}
    far = found["sequence public.emp_seq"]
    assert far.status is Status.WARN and far.value == 10000
    assert "next value 1" in far.summary and "10,000 inserts away" in far.summary
    stepped = found["sequence public.step_seq"]
    assert stepped.status is Status.WARN and stepped.value == 4 and "taken is 21" in stepped.summary


def test_a_corrupted_btree_page_is_found(tmp_path):
    """Garbage written into an index file of a stopped scratch cluster."""
    box = Sandbox(tmp_path / "scratch")
    box.ensure(demo_users=300)
    try:
        target = Target("scratch", box.url("production"), sandbox=True)
        with db.connect(target) as conn:
            path = conn.execute("SELECT pg_relation_filepath('ix_users_location')").fetchone()[0]
        box.down()
        index_file = box.data_dir / path
        with index_file.open("r+b") as f:  # block 1: the first page after the metapage
            f.seek(8192 + 512)
            f.write(b"\xde\xad\xbe\xef" * 512)
        box.ensure()
        found = _run(target, integrity.indexes, amcheck="btree")
        crit = [f for f in found if f.status is Status.CRIT]
        assert len(crit) == 1 and crit[0].check == "amcheck btree"
        assert "ix_users_location" in crit[0].summary and crit[0].examples[0].startswith(
            "ix_users_location"
        )
    finally:
        if box.running:
            box.down()


TYPES_TABLE = """
CREATE TABLE typed (id bigint PRIMARY KEY, i int, s smallint, t text, v varchar(20),
  n numeric(12, 3), f float8, b bool, d date, ts timestamptz, u uuid, j jsonb, by bytea);
INSERT INTO typed SELECT g, g * 7, (g % 100)::smallint, 'text ' || g, 'v' || g, g / 7.0, g / 3.0,
  g % 2 = 0, date '2024-01-01' + g % 400,
  timestamptz '2024-01-01 00:00+00' + g * interval '1 minute',
  md5(g::text)::uuid, jsonb_build_object('g', g, 'even', g % 2 = 0), decode(md5(g::text), 'hex')
FROM generate_series(1, 20000) g;
UPDATE typed SET t = NULL WHERE id % 97 = 0;
"""


@pytest.mark.matrix
def test_compare_finds_changed_added_and_deleted_rows_across_servers(scratch, sandbox):
    """One side on the server under test, the other on the embedded 18: hashes agree across
    versions."""
    other_name = f"{scratch.database}_b"
    with psycopg.connect(sandbox.url("postgres"), autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{other_name}"')
        conn.execute(f'CREATE DATABASE "{other_name}"')
    other = Target("other", sandbox.url(other_name), sandbox=True)
    try:
        for t in (scratch, other):
            _write(t, *[s for s in TYPES_TABLE.split(";\n") if s.strip()])
        same = compare.compare(scratch, other)
        assert [r.same for r in same.results] == [True] and same.results[0].rows_a == 20000
        _write(other, "UPDATE typed SET f = f + 1 WHERE id = 3")
        one = compare.compare(scratch, other).results[0]
        assert (one.changed, one.only_a, one.only_b, one.columns) == ([3], [], [], ["f"])
        _write(
            other,
            "UPDATE typed SET n = n + 1 WHERE id = 17",
            "UPDATE typed SET t = NULL WHERE id = 1234",
            "DELETE FROM typed WHERE id = 19999",
            "INSERT INTO typed (id, i) VALUES (50000, 1)",
            # values moved, not changed: between two rows, and between two text columns of one row
            "UPDATE typed SET i = CASE id WHEN 5 THEN 42 ELSE 35 END WHERE id IN (5, 6)",
            "UPDATE typed SET t = v, v = t WHERE id = 9",
            "UPDATE typed SET n = n + 1 WHERE id = 97",
        )  # a row that holds a NULL
        diff = compare.compare(scratch, other)
        r = diff.results[0]
        assert (r.changed, r.only_a, r.only_b) == ([3, 5, 6, 9, 17, 97, 1234], [19999], [50000])
        side = diff.side_by_side["public.typed"]
        assert list(side.index) == [3, 5, 6, 9, 17, 97, 1234, 19999, 50000]
        assert side.loc[17, ("t", "scratch")] == side.loc[17, ("t", "other")]
        assert side.loc[17, ("n", "scratch")] != side.loc[17, ("n", "other")]
        finding = diff.findings("scratch", "other")[0]
        assert finding.status is Status.CRIT and finding.value == 9
    finally:
        with psycopg.connect(sandbox.url("postgres"), autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{other_name}" WITH (FORCE)')


OTHER_KEYS = """
CREATE TABLE tagged (code text PRIMARY KEY, label text, n int);
INSERT INTO tagged SELECT 'c' || g, 'label ' || g, g FROM generate_series(1, 3000) g;
CREATE TABLE pairs (a int, b int, v text, PRIMARY KEY (a, b));
INSERT INTO pairs SELECT g / 50, g % 50, 'v' || g FROM generate_series(1, 3000) g;
CREATE TABLE loose (x int, y text);
INSERT INTO loose SELECT g, 'y' || g FROM generate_series(1, 3000) g;
"""


@pytest.fixture
def other(scratch):
    """A second, empty database beside `scratch` on the same server, as target 'other'."""
    name = f"{scratch.database}_b"
    admin = db.with_database(scratch.url, "postgres")
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    yield Target("other", db.with_database(scratch.url, name), sandbox=True)
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def test_compare_text_composite_and_missing_keys(scratch, other):
    for t in (scratch, other):
        _write(t, *[s for s in OTHER_KEYS.split(";\n") if s.strip()])
    assert all(r.same for r in compare.compare(scratch, other).results)
    _write(
        other,
        "UPDATE tagged SET n = -1 WHERE code = 'c42'",
        "DELETE FROM tagged WHERE code = 'c7'",
        "UPDATE pairs SET v = 'moved' WHERE (a, b) = (3, 14)",
        "UPDATE loose SET y = 'z' WHERE x = 5",
    )
    diff = compare.compare(scratch, other)
    results = {r.table: r for r in diff.results}
    tagged, pairs, loose = (
        results["public.tagged"],
        results["public.pairs"],
        results["public.loose"],
    )
    assert (tagged.changed, tagged.only_a, tagged.only_b) == (["c42"], ["c7"], [])
    assert (pairs.changed, pairs.only_a, pairs.columns) == ([(3, 14)], [], ["v"])
    assert not loose.same and "no primary key" in loose.note
    side = diff.side_by_side["public.pairs"]
    assert list(side.index) == [(3, 14)] and side.loc[(3, 14), ("v", "other")] == "moved"
    assert list(diff.side_by_side["public.tagged"].index) == ["c42", "c7"]


def test_integrity_runbook_exit_codes(sandbox, monkeypatch):
    clean = runner.run("integrity", "staging", progress=False)
    assert clean.exit_code == 0, [str(f) for f in clean.findings if f.status is not Status.OK]
    staging = runner.targets.resolve("staging")
    _write(staging, "SELECT setval(pg_get_serial_sequence('categories', 'id'), 1)")
    try:
        bad = runner.run("integrity", "staging", {"checks": "sequences,fk"}, progress=False)
        assert bad.exit_code == 2 and [
            f.check for f in bad.findings if f.status is Status.CRIT
        ] == ["sequence public.categories_id_seq"]
    finally:
        _write(
            staging,
            "SELECT setval(pg_get_serial_sequence('categories', 'id'), (SELECT max(id) FROM"
            " categories))",
        )


PEOPLE = """
CREATE TABLE people (id int PRIMARY KEY, email text, note text, n int);
INSERT INTO people SELECT g, 'person' || g || '@example.org', 'note ' || g, g
  FROM generate_series(1, 500) g;
"""


def test_compare_shows_personal_values_as_tokens_unless_asked(scratch, other):
    """Differing rows keep what differs visible, not the personal values themselves."""
    for t in (scratch, other):
        _write(t, *[s for s in PEOPLE.split(";\n") if s.strip()])
    _write(
        other,
        "UPDATE people SET email = 'changed@example.org' WHERE id = 7",
        "UPDATE people SET note = 'call +44 20 7946 0958' WHERE id = 8",
        "UPDATE people SET n = -1 WHERE id = 9",
    )
    diff = compare.compare(scratch, other)
    side = diff.side_by_side["public.people"]
    shown = side.to_string() + " ".join(
        f.summary + " ".join(f.examples) for f in diff.findings("a", "b")
    )
    for secret in ("person7@example.org", "changed@example.org", "7946", "person9@example.org"):
        assert secret not in shown, secret
    assert (
        side.loc[7, ("email", "scratch")] != side.loc[7, ("email", "other")]
    )  # what differs shows
    assert side.loc[9, ("email", "scratch")] == side.loc[9, ("email", "other")]
    assert side.loc[9, ("n", "other")] == -1 and side.loc[8, ("note", "scratch")] == "note 8"
    plain = compare.compare(scratch, other, show_values=True).side_by_side["public.people"]
    assert plain.loc[7, ("email", "other")] == "changed@example.org"
    with pytest.raises(ConfirmationRequired, match="show_values is refused with protected"):
        compare.compare(scratch, dataclasses.replace(other, protected=True), show_values=True)


def test_a_compare_with_production_writes_none_of_its_personal_values(sandbox):
    """Staging against production, users differing row by row: the archive keeps no address."""
    with psycopg.connect(sandbox.url("production")) as conn:
        emails = [r[0] for r in conn.execute("SELECT email FROM users ORDER BY id LIMIT 40")]
        phones = [
            r[0] for r in conn.execute("SELECT phone FROM users WHERE phone IS NOT NULL LIMIT 40")
        ]
    result = runner.run(
        "integrity",
        "staging",
        {"compare_to": "production", "tables": "users", "checks": "fk,compare"},
        progress=False,
    )
    assert any(f.check == "compare public.users" for f in result.findings)
    for path in (result.notebook, result.html):
        text = path.read_text()
        assert not [e for e in emails + phones if e in text], path
    with pytest.raises(ConfirmationRequired, match="show_values is refused"):
        runner.run(
            "integrity",
            "staging",
            {"compare_to": "production", "show_values": "true"},
            progress=False,
        )


def test_a_partitioned_table_whose_partitions_have_keys_is_not_without_one(scratch):
    """A rental sample's payments: partitions with a primary key each, none on the parent (it
    would have to hold the partition key). What is true, at OK; a partition without one, WARN."""
    _write(
        scratch,
        "CREATE TABLE payment (payment_id int NOT NULL, paid date NOT NULL) PARTITION BY RANGE"
        " (paid)",
        "CREATE TABLE payment_a PARTITION OF payment FOR VALUES FROM ('2022-01-01') TO"
        " ('2022-07-01')",
        "CREATE TABLE payment_b PARTITION OF payment FOR VALUES FROM ('2022-07-01') TO"
        " ('2023-01-01')",
        "ALTER TABLE payment_a ADD PRIMARY KEY (payment_id)",
        "ALTER TABLE payment_b ADD PRIMARY KEY (payment_id)",
    )
    found = {f.check: f for f in _run(scratch, integrity.unique_keys)}
    assert "primary keys" not in found, found["primary keys"]
    assert found["partition keys"].status is Status.OK
    assert found["partition keys"].examples == ("public.payment (2 partitions)",)
    _write(scratch, "ALTER TABLE payment_b DROP CONSTRAINT payment_b_pkey")
    found = {f.check: f for f in _run(scratch, integrity.unique_keys)}
    assert found["primary keys"].status is Status.WARN
    assert found["primary keys"].examples == ("public.payment (1 of 2 partitions too)",)


def test_compare_names_keys_as_postgresql_writes_them(scratch, other):
    """An employee-history table keyed by (number, date): a differing row is named
    `(10001, 1986-06-26)`, never `datetime.date(1986, 6, 26)`."""
    for t in (scratch, other):
        _write(
            t,
            "CREATE TABLE salaries (emp_no int, from_date date, salary int,"
            " PRIMARY KEY (emp_no, from_date))",
            "INSERT INTO salaries VALUES (10001, '1986-06-26', 60117),"
            " (10001, '1987-06-26', 62102)",
            "CREATE TABLE titles (since date PRIMARY KEY, title text)",
            "INSERT INTO titles VALUES ('1986-06-26', 'Engineer')",
        )
    _write(
        other,
        "UPDATE salaries SET salary = 1 WHERE from_date = '1986-06-26'",
        "UPDATE titles SET title = 'Staff'",
    )
    found = {f.check: f for f in compare.compare(scratch, other).findings("a", "b")}
    assert found["compare public.salaries"].examples == ("changed (10001, 1986-06-26)",)
    assert found["compare public.titles"].examples == ("changed 1986-06-26",)


def test_the_comparison_alone(sandbox):
    """`-p checks compare`: the cross-database comparison and nothing else; asked without a
    second target, or a second target with the comparison left out: refused before starting."""
    alone = runner.run(
        "integrity", "staging", {"checks": "compare", "compare_to": "sandbox"}, progress=False
    )
    ran = {f.check for f in alone.findings}  # a check not selected did not run: no OK of its own
    assert ran and all(c.startswith("compare") or c == "tables" for c in ran), ran
    scope = next(f for f in alone.findings if f.check == "tables")
    assert "checks skipped (not selected): assertions, fk, indexes" in scope.summary, scope
    assert any(c.startswith("compare public.") for c in ran)  # the sandboxes' data differ
    for given in ({"checks": "compare"}, {"checks": "fk", "compare_to": "sandbox"}):
        with pytest.raises(UnknownParameter, match="compare"):
            runner.run("integrity", "staging", given, progress=False)

"""Every runbook on the schema zoo, on both servers: the documented verdicts, planted faults named
by key.

The zoo (tests/fixtures/zoo.sql) uses what real schemas use and nothing of
Fixia's: partitions (range, list, hash, two levels, defaults), inheritance,
domains (one CHECK NOT VALID), enums, composites, sequences not owned and
shared, identity and serial columns, exclusion constraints, deferrable and
composite foreign keys, text keys, a table without a primary key, an
unlogged table, TOAST-sized rows, views, a materialized view, a trigger, a
procedure, a SECURITY DEFINER function, an extension, and identifiers that
need quoting. It is configured as target `zoo` with no app profile.
"""

from __future__ import annotations

import json
from pathlib import Path

import psycopg
import pytest

from pgrunbook.archive import runner
from pgrunbook.base import db, targets
from pgrunbook.base.findings import Status
from pgrunbook.checks import compare, health, perf, security
from pgrunbook.cli import main
from pgrunbook.facts import backups, catalog, statements
from pgrunbook.procedures import dumps, restore, sanitize

from . import zoo as zoofix
from .conftest import assert_charts_drawn, databases, written_files

# What each runbook documents on a clean zoo (README, "What the runbooks assume of a database").
VERDICTS = {
    "backup": "OK",
    "status": (
        "OK"
        # WARN on a server with autovacuum or fsync off (the external test server has autovacuum
        # off)
    ),
    "integrity": "WARN",  # ledger.audit_log has no primary key
    "security": (
        "OK"
    ),  # on a server whose roles and settings pass (cluster-wide facts: see SERVER_WIDE)
    "performance": "WARN",  # pg_stat_statements is not created in the zoo database
}


# the security review's cluster-wide findings: about the server the zoo is on, not about the zoo
SERVER_WIDE = {
    "superusers",
    "ssl",
    "ssl setting",
    "connection logging",
    "log_statement",
    "password_encryption",
    "password hashes",
    "password expiry",
    "role attributes",
}


@pytest.fixture
def zoo(server, tmp_path, monkeypatch):
    """A fresh zoo on `server`, as target `zoo` (and `zoo_copy`, unset), through
    $PGRUNBOOK_CONFIG."""
    url = zoofix.create(server)
    config = tmp_path / "zoo.toml"
    config.write_text(
        '[targets.zoo]\nurl_env = "ZOO_DATABASE_URL"\n\n'
        '[targets.zoo_copy]\nurl_env = "ZOO_COPY_URL"\n'
    )
    monkeypatch.setenv("PGRUNBOOK_CONFIG", str(config))
    monkeypatch.setenv("ZOO_DATABASE_URL", url)
    monkeypatch.setenv("PGRUNBOOK_BACKUPS_DIR", str(tmp_path / "backups"))
    monkeypatch.setenv("PGRUNBOOK_REPORTS_DIR", str(tmp_path / "reports"))
    yield url
    from urllib.parse import urlsplit

    for name in databases(server):
        if name.startswith(urlsplit(url).path.lstrip("/")):
            zoofix.drop(server, db.with_database(server, name))


def _worst(result) -> set[str]:
    return {f.status.name for f in result.findings}


def test_every_runbook_on_a_clean_zoo(zoo):
    """Backup first (the zoo is then a target with a verified backup), then every read-only
    runbook."""
    with psycopg.connect(zoo) as conn:
        risky = conn.execute(
            "SELECT count(*) FROM pg_settings WHERE name IN ('autovacuum', 'fsync')"
            " AND setting = 'off'"
        ).fetchone()[0]
    embedded = "host=/" in zoo
    for runbook, expected in {**VERDICTS, **({"status": "WARN"} if risky else {})}.items():
        result = runner.run(runbook, "zoo", progress=False)
        about_zoo = [
            f for f in result.findings if runbook != "security" or f.check not in SERVER_WIDE
        ]
        if embedded or runbook != "security":
            assert result.outcome == expected, (
                runbook,
                [str(f) for f in result.findings if f.status.name != "OK"],
            )
        assert not {f.status.name for f in about_zoo} & {"CRIT", "UNKNOWN"}, (
            runbook,
            [str(f) for f in about_zoo],
        )
    health_run = runner.run("health", "zoo", progress=False)
    assert not _worst(health_run) & {"CRIT", "UNKNOWN"}, [str(f) for f in health_run.findings]
    checks = {f.check: f for f in health_run.findings}
    assert (
        checks["migrations"].status is Status.OK and "not managed" in checks["migrations"].summary
    )
    assert checks["backup"].status is Status.OK
    findings = {f.check: f for f in runner.run("integrity", "zoo", progress=False).findings}
    assert (
        findings["assertions"].status is Status.OK
        and "no assertions" in findings["assertions"].summary
    )
    assert findings["primary keys"].examples == ("ledger.audit_log",)
    assert (
        "4 sequences in use" in findings["sequences"].summary
    )  # identity, serial, not owned, shared
    assert findings["amcheck heap"].status is Status.OK  # partitioned parents are not heaps


def test_faults_planted_in_the_zoo_are_found_by_key(zoo):
    for plant in (
        zoofix.plant_orphan,
        zoofix.plant_sequence_behind,
        zoofix.plant_domain_violation,
        zoofix.plant_invalid_index,
    ):
        plant(zoo)
    result = runner.run("integrity", "zoo", progress=False)
    by_check = {f.check: f for f in result.findings}
    assert result.outcome == "CRIT"
    orphan = by_check["foreign key order_lines_sku_fkey"]
    assert (
        orphan.value == 1
        and "(NOT VALID)" in orphan.summary
        and orphan.examples[0].endswith(", sku=SKU-GONE")
    )
    behind = by_check["sequence public.legacy_id_seq"]
    assert behind.status is Status.CRIT and "public.order.id" in behind.summary
    assert behind.value == 0 and "next value 6 is taken" in behind.summary  # 0 inserts left
    domain = by_check["constraint short_code_form"]
    assert (
        domain.status is Status.CRIT
        and domain.examples == ("id=42",)
        and "domain public.short_code" in domain.summary
    )
    index = by_check['index ledger."ix_Invoice_amount"']
    assert index.status is Status.WARN and "invalid" in index.summary
    assert (
        by_check["amcheck heap"].status is Status.OK
        and by_check["amcheck btree"].status is Status.OK
    )


def test_restore_repairs_a_sequence_named_only_by_a_default(zoo):
    zoofix.plant_sequence_behind(zoo)
    t = targets.resolve("zoo")
    backup = dumps.create(t)
    result = restore.restore(t, backup, mode="new-database")
    seq = next(f for f in result.findings if f.check == "sequences")
    assert seq.status is Status.WARN and "public.legacy_id_seq" in seq.examples[0]
    copy = db.with_database(zoo, result.database)
    with psycopg.connect(copy) as conn:
        assert conn.execute("SELECT last_value FROM public.legacy_id_seq").fetchone()[0] == 400


def test_backup_and_swap_keep_every_row_and_the_schema(zoo):
    zoofix.plant_invalid_index(zoo)
    t = targets.resolve("zoo")
    with db.connect(t) as conn:
        before_counts = catalog.row_counts(conn)
    backed = runner.run("backup", "zoo", progress=False)
    left_out = next(f for f in backed.findings if f.check == "left out")
    verified = next(f for f in backed.findings if f.check == "verify")
    assert verified.status is Status.OK, (
        verified
    )  # like with like: the invalid index is not "missing"
    assert left_out.status is Status.WARN and "ix_Invoice_amount" in left_out.summary
    swapped = runner.run("restore", "zoo", {"mode": "swap"}, progress=False)
    assert swapped.outcome == "OK", [str(f) for f in swapped.findings]
    assert_charts_drawn(swapped.notebook, swapped.html)

    with db.connect(t) as conn:
        assert catalog.row_counts(conn) == before_counts
        facts = catalog.schema_facts(conn)
    assert catalog.fingerprint(facts) == backups.find(t, "latest").manifest["schema_fingerprint"]


def test_compare_the_zoo_with_its_restored_copy(zoo, monkeypatch):
    t = targets.resolve("zoo")
    backup = dumps.create(t)
    copy_db = restore.restore(t, backup, mode="new-database").database
    copy_url = db.with_database(zoo, copy_db)
    monkeypatch.setenv("ZOO_COPY_URL", copy_url)
    same = compare.compare(t, targets.resolve("zoo_copy"))
    tables = {r.table: r for r in same.results}
    assert all(r.same for r in tables.values()), [n for n, r in tables.items() if not r.same]
    assert "public.order" not in tables and "public.order_2025_eu" in tables  # rows where stored
    assert not [f for f in same.findings("zoo", "zoo_copy") if f.status is not Status.OK]
    changed = zoofix.change_rows(copy_url, 3)
    differ = compare.compare(t, targets.resolve("zoo_copy"))
    bad = {r.table: r for r in differ.results if not r.same}
    assert list(bad) == ["public.order_2025_eu"] and bad["public.order_2025_eu"].columns == [
        "total"
    ]
    named = sorted(
        str(k[0]) if isinstance(k, tuple) else str(k) for k in bad["public.order_2025_eu"].changed
    )
    assert named == changed


def test_a_backup_belongs_to_the_database_it_copied(zoo, sandbox, monkeypatch):
    """The sandbox's backups of `production` are not those of a new server that `production` points
    at."""
    monkeypatch.delenv("DATABASE_URL", raising=False)
    sandboxed = targets.resolve("production")
    made = dumps.create(sandboxed)
    assert [b.id for b in backups.all_backups(sandboxed)] == [made.id]
    monkeypatch.setenv("DATABASE_URL", zoo)
    elsewhere = targets.resolve("production")
    assert backups.all_backups(elsewhere) == []
    with db.connect(elsewhere) as conn:
        from pgrunbook.checks import status

        finding = status.latest_backup(elsewhere, conn)
    assert finding.status is Status.CRIT and "no verified backup" in finding.summary


def test_a_swap_that_fails_verification_says_not_swapped(zoo):
    t = targets.resolve("zoo")
    backup = dumps.create(t)
    manifest = json.loads((backup.path / "manifest.json").read_text())
    manifest["row_counts"]["public.products"] += (
        1  # the dump no longer holds what the manifest claims
    )
    dumps._write_manifest(backup.path, manifest)
    result = restore.restore(t, backups.find(t, backup.id), mode="swap")
    said = next(f for f in result.findings if f.check == "restore")
    assert (
        said.status is Status.CRIT
        and said.summary.startswith("not swapped")
        and result.database in said.summary
    )
    assert result.database in databases(zoo) and not result.verified
    rto = restore.rto_finding(result.timeline, result=result)
    assert rto.status is Status.CRIT and "nothing recovered" in rto.summary


@pytest.mark.parametrize(
    "argv, words",
    [
        (["run", "migrate", "-t", "zoo", "-p", "mode", "aply"], "did you mean 'apply'"),
        (["run", "status", "-t", "zoo", "-p", "pool_limit", "-5"], "takes a number from 0"),
        (["run", "backup", "-t", "zoo", "-p", "retention_days", "nan"], "finite"),
        (["run", "integrity", "-t", "zoo", "-p", "checks", "fk,bogus"], "comma-separated set"),
        (["run", "restore", "-t", "zoo", "-p", "format", "x"], "no parameter 'format'"),
        (["run", "migrate", "-t", "zoo", "-p", "mode", "apply"], "not managed by the migrations"),
        (["run", "seed", "-t", "zoo"], "no app whose schema the seed fits"),
        (["run", "dr_drill", "-t", "zoo"], "table 'reviews' does not exist"),
        (["run", "integrity", "-t", "zoo", "-p", "checks_dir", "nowhere"], "is not a folder"),
    ],
)
def test_bad_input_on_the_zoo_is_refused_before_anything(zoo, argv, words, capfd, tmp_path):
    before = set(written_files(tmp_path))
    assert main(argv) == 3
    err = capfd.readouterr().err.strip().splitlines()
    assert len(err) == 1 and words in err[0], err
    assert set(written_files(tmp_path)) == before


@pytest.mark.parametrize(
    "argv",
    [
        ["run", "migrate", "-t", "production", "-p", "mode", "apply"],
        ["run", "migrate", "-t", "production", "-p", "mode", "resolve", "-p", "stamp", "0004"],
        ["run", "restore", "-t", "production", "-p", "mode", "swap"],
        ["run", "restore", "-t", "production"],
        ["run", "seed", "-t", "production", "-p", "mode", "development"],
        ["migrations", "deploy", "-t", "production"],
        ["migrations", "reset", "-t", "production"],
    ],
)
def test_a_missing_confirm_is_one_refusal(sandbox, argv, capfd, reports_dir, tmp_path, monkeypatch):
    """Refused before anything starts, one line, exit 3, nothing written: and health is not CRIT
    after it."""
    monkeypatch.setenv("PGRUNBOOK_REPORTS_DIR", str(tmp_path / "reports"))
    dumps.create(targets.resolve("production"))
    before = set(written_files(tmp_path)), databases(sandbox.url("postgres"))
    assert main(argv) == 3
    err = capfd.readouterr().err.strip().splitlines()
    assert len(err) == 1 and ("confirm" in err[0] or "refused on protected" in err[0]), err
    assert (set(written_files(tmp_path)), databases(sandbox.url("postgres"))) == before
    with db.connect(targets.resolve("production")) as conn:
        assert health.migrations(conn, targets.resolve("production")).status is not Status.CRIT


def test_a_filter_that_matches_nothing_is_warn(zoo):
    result = runner.run("integrity", "zoo", {"tables": "reveiws"}, progress=False)
    scope = next(f for f in result.findings if f.check == "tables")
    assert (
        result.outcome == "WARN" and scope.status is Status.WARN and "matches none" in scope.summary
    )


def test_pool_limit_comes_from_the_target_configuration(zoo, tmp_path, monkeypatch):
    config = Path(tmp_path / "zoo.toml")
    config.write_text(
        config.read_text().replace(
            'url_env = "ZOO_DATABASE_URL"', 'url_env = "ZOO_DATABASE_URL"\npool_limit = 1'
        )
    )
    with psycopg.connect(zoo):
        result = runner.run("status", "zoo", progress=False)
    conns = next(f for f in result.findings if f.check == "connections")
    assert conns.status is Status.CRIT and "of the pool's 1" in conns.summary
    assert (
        "of the pool's 20"
        in next(
            f
            for f in runner.run("status", "zoo", {"pool_limit": "20"}, progress=False).findings
            if f.check == "connections"
        ).summary
    )


def test_security_names_app_roles_that_do_not_exist(zoo):
    with db.connect(targets.resolve("zoo")) as conn:
        found = {
            f.check: f
            for f in security.access_findings(conn, app_roles=["api", "worker"], protected=True)
        }
    assert found["app roles"].status is Status.WARN and found["app roles"].examples == (
        "api",
        "worker",
    )
    assert found["direct access"].summary == "no other session is connected"


def test_personal_columns_of_the_zoo(zoo):
    with psycopg.connect(zoo, autocommit=True) as conn:
        conn.execute(
            "CREATE TABLE public.accounts (id int PRIMARY KEY, address_id int, city_id bigint,"
            " password_hash text, postal_code text, title text)"
        )
        conn.execute(
            "INSERT INTO public.accounts VALUES (1, 2, 3, 'x', '12345', 'Best of 1980-1990')"
        )
    with db.connect(targets.resolve("zoo")) as conn:
        found = dict(security.personal_columns(conn))
    for column in (
        "public.customers.email",
        "public.customers.full_name",
        "public.customers.phone",
        "public.accounts.password_hash",
        "public.accounts.postal_code",
    ):
        assert column in found, column
    assert found["public.customers.home"].startswith("composite with street, city, postal_code")
    for column in (
        "public.accounts.address_id",
        "public.accounts.city_id",
        "public.accounts.title",
        "public.products.title",
    ):
        assert column not in found, column


def test_contact_proof_ignores_shapes_in_kept_data_and_finds_real_contacts(zoo, tmp_path):
    rules_file = tmp_path / "zoo_rules.toml"
    rules_file.write_text(
        '[columns.customers]\nemail = "email"\nphone = "phone"\nfull_name = "name"\n'
        '[columns.products]\ntitle = "keep"\nnotes = "keep"\n'
    )
    rules = sanitize.load(str(rules_file))
    from urllib.parse import urlsplit

    from psycopg import sql

    source = urlsplit(zoo).path.lstrip("/")
    with psycopg.connect(db.with_database(zoo, "postgres"), autocommit=True) as conn:
        conn.execute(
            sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(
                sql.Identifier(source + "_copy"), sql.Identifier(source)
            )
        )
    copy_url = db.with_database(zoo, source + "_copy")
    src, dst = targets.resolve("zoo"), targets.Target("copy", copy_url)
    with db.connect(src) as s, db.connect(dst, readonly=False) as d:
        kept = sanitize.contact_leaks(s, d, rules)
        assert kept.status is Status.OK, kept  # "1980-1990" in kept titles is nobody's phone
        d.execute(
            "UPDATE public.products SET notes = 'call customer7@example.org' WHERE sku = 'SKU-3'"
        )
        leak = sanitize.contact_leaks(s, d, rules)
    assert leak.status is Status.CRIT and "public.products.notes" in leak.summary


def test_performance_leaves_its_own_work_out(sandbox):
    t = targets.resolve("sandbox")
    with psycopg.connect(t.url, autocommit=True) as conn:  # as the application, tracked
        conn.execute("SELECT pg_stat_statements_reset()")
        conn.execute("SELECT bit_xor(hashint8extended(id, 0)) FROM users")
        conn.execute(
            "SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
        )
        with conn.cursor().copy("COPY (SELECT 1) TO STDOUT") as out:
            list(out)
        conn.execute("SELECT count(*) FROM users WHERE email LIKE 'zz%'")
        frame = statements.statements(conn)
        queries = " ".join(frame["query"])
        assert "LIKE" in queries and "hashint8extended" not in queries and "pg_class" not in queries
        assert "COPY" not in queries and frame.attrs["excluded"]["statements"] >= 3
        advice = perf.index_advice(conn, [])
    unused = advice[advice["kind"].str.startswith("unused")]
    assert (
        not unused.empty and (unused["kind"] == "unused (too early)").all()
    )  # a new cluster: days of data
    assert not unused["ddl"].str.startswith("DROP").any()


def test_slow_statements_read_once(sandbox):
    t = targets.resolve("sandbox")
    with psycopg.connect(t.url, autocommit=True) as conn:  # as the application, tracked
        conn.execute("SELECT pg_stat_statements_reset()")
        conn.execute("SELECT pg_sleep(0.12)")
        with conn.cursor().copy("COPY (SELECT pg_sleep(0.12)) TO STDOUT") as out:  # a tool's work
            list(out)
        conn.execute(
            "CREATE TEMP TABLE pgrb_slow AS SELECT 1 AS n FROM pg_sleep(0.12)"
        )  # utility: no plan to improve
        frame = statements.statements(conn)
        assert len(perf.slow(frame, 100)) == health.slow_queries(conn, slow_ms=100).value == 1


def test_assertions_belong_to_the_targets_configured_for_them(zoo, tmp_path):
    """Fixia's assertions are not run on the zoo; an empty folder of assertions has nothing to
    break."""
    empty = tmp_path / "no_rules"
    empty.mkdir()
    for given in ({}, {"checks_dir": str(empty)}):
        result = runner.run("integrity", "zoo", {"checks": "assertions", **given}, progress=False)
        found = next(f for f in result.findings if f.check == "assertions")
        assert (
            result.outcome == "OK"
            and found.status is Status.OK
            and "no assertions" in found.summary
        )
    fixia = runner.run("integrity", "sandbox", {"checks": "assertions"}, progress=False)
    assert fixia.outcome == "OK" and any(f.check.startswith("assert ") for f in fixia.findings)


def _proposal(notebook: Path) -> str:
    """The TOML the refresh plan proposed, from the proposal cell's own output."""
    for cell in json.loads(notebook.read_text())["cells"]:
        if "".join(cell["source"]).startswith("plan.proposal"):
            text = "".join(
                "".join(o["data"]["text/markdown"]) for o in cell["outputs"] if "data" in o
            )
            return text.split("```toml\n", 1)[1].split("```", 1)[0]
    raise AssertionError("no proposal cell")


def test_drill_and_refresh_plan_on_the_zoo(zoo, tmp_path, monkeypatch):
    """The drill on one of the zoo's own tables; the refresh plan with and without rules for its
    columns."""
    drilled = runner.run("dr_drill", "zoo", {"table": "ledger.entries"}, progress=False)
    assert drilled.outcome == "OK", [str(f) for f in drilled.findings if f.status is not Status.OK]
    assert_charts_drawn(drilled.notebook, drilled.html)
    with psycopg.connect(zoo) as conn:
        assert conn.execute("SELECT count(*) FROM ledger.entries").fetchone()[0] == 200
    monkeypatch.setenv(
        "ZOO_COPY_URL", db.with_database(zoo, "postgres")
    )  # plan mode writes nothing there
    unruled = runner.run("staging_refresh", "zoo_copy", {"source": "zoo"}, progress=False)
    crit = {f.check for f in unruled.findings if f.status is Status.CRIT}
    # no app, so no rules: never another app's (Fixia's would be "rule errors" here)
    assert unruled.outcome == "CRIT" and crit == {"rules", "unruled personal columns", "plan"}
    proposed = _proposal(unruled.notebook)
    assert '[columns."public.customers"]' in proposed and 'email = "email"' in proposed
    with pytest.raises(sanitize.NoRules, match="write them first"):
        given = {"source": "zoo", "mode": "apply", "confirm": "zoo_copy"}
        runner.run("staging_refresh", "zoo_copy", given, progress=False)
    rules = tmp_path / "zoo_rules.toml"
    rules.write_text(proposed)  # the proposal, as a team would save it after checking it
    ruled = runner.run(
        "staging_refresh", "zoo_copy", {"source": "zoo", "rules": str(rules)}, progress=False
    )
    assert ruled.outcome in ("OK", "WARN"), [
        str(f) for f in ruled.findings if f.status is not Status.OK
    ]

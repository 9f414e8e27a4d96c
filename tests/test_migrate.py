"""The migration runbook's library: fixture migrations that each step must catch, and faults."""

import threading
import time
from pathlib import Path

import psycopg
import pytest

from pgrunbook.base import db, migrations
from pgrunbook.base.findings import Status
from pgrunbook.facts import catalog
from pgrunbook.procedures import migrate, seed

FIXTURES = Path(__file__).parent / "fixtures" / "migrations"


@pytest.fixture
def scenario(monkeypatch):
    def use(name: str):
        monkeypatch.setenv("PGRUNBOOK_EXTRA_VERSIONS", str(FIXTURES / name))

    return use


@pytest.fixture
def fixia(migrated):
    """A migrated database with 200 demo users."""
    with db.connect(migrated, readonly=False) as conn:
        seed.seed(conn, migrated, mode="development", users=200)
    return migrated


def _plan(target, to="heads"):
    with db.connect(target) as conn:
        st = migrations.status(conn)
        return st, migrate.plan(st, to)


def _state(target):
    with db.connect(target) as conn:
        return migrations.current(conn), catalog.schema_facts(conn)


def test_plan_renders_each_revisions_sql(scratch):
    migrations.upgrade(scratch, "0002")
    _, p = _plan(scratch, "head")
    assert [r.revision for r in p.pending] == ["0003", "0004"]
    assert (
        "CREATE TABLE projects" in p.scripts["0003"] and "CREATE TABLE reviews" in p.scripts["0004"]
    )
    assert "CREATE TABLE projects" not in p.scripts["0004"]


def test_lint_and_preflight_catch_a_required_column(fixia, scenario):
    scenario("required_column")
    _, p = _plan(fixia)
    with db.connect(fixia) as conn:
        lint = migrate.lint_plan(conn, p)
        pre = migrate.preflight(conn, p)
        relaxed = migrate.lint_plan(conn, p, allow_unsafe=True)
    crit = [f for f in lint.findings if f.status is Status.CRIT]
    assert len(crit) == 1 and "required-column-without-default on public.users" in crit[0].summary
    assert "backfill" in crit[0].summary
    assert {f.status for f in relaxed.findings if f.check.startswith("lint f")} == {Status.WARN}
    data = [f for f in pre if f.check.startswith("data")]
    assert data[0].status is Status.CRIT and data[0].value == 101  # counted up to the sample limit
    assert any(s["rule"] == "adding-required-field" for s in lint.squawk)


def test_lint_catches_an_index_without_concurrently_on_a_million_rows(migrated, scenario):
    with db.connect(migrated, readonly=False, statement_timeout="10min") as conn:
        conn.execute(
            "INSERT INTO users (email, user_type, first_name, last_name)"
            " SELECT 'u' || g || '@example.com', 'client', 'F' || g % 1000, 'L'"
            " FROM generate_series(1, 1000000) g"
        )
        conn.execute("ANALYZE users")
    scenario("index_no_concurrently")
    _, p = _plan(migrated)
    with db.connect(migrated) as conn:
        lint = migrate.lint_plan(conn, p)
    crit = [f for f in lint.findings if f.status is Status.CRIT]
    assert len(crit) == 1 and "index-without-concurrently on public.users" in crit[0].summary
    assert "SHARE" in crit[0].summary and "CONCURRENTLY" in crit[0].summary
    row = next(s for s in lint.statements if s["rule"] == "index-without-concurrently")
    assert 900_000 < row["rows_estimate"] < 1_100_000 and row["lock"].startswith("SHARE ")


def test_preflight_and_rehearse_catch_a_foreign_key_existing_rows_violate(fixia, scenario):
    scenario("fk_violated")
    migrations.upgrade(fixia, "f401")
    with db.connect(fixia, readonly=False) as conn:
        conn.execute("UPDATE users SET referrer_id = id + 1000000 WHERE id % 50 = 0")  # 4 orphans
    _, p = _plan(fixia)
    with db.connect(fixia) as conn:
        pre = migrate.preflight(conn, p)
        lint = migrate.lint_plan(conn, p)
    data = next(f for f in pre if f.check.startswith("data"))
    assert (
        data.status is Status.CRIT
        and data.value == 4
        and "fk_users_referrer_id_users" in data.summary
    )
    assert any(
        "foreign-key on public.users" in f.summary for f in lint.findings if f.status is Status.CRIT
    )
    rehearsal = migrate.rehearse(fixia, p, mode="rehearse")
    assert rehearsal[0].check == "rehearse upgrade" and rehearsal[0].status is Status.CRIT
    assert "upgrade fails" in rehearsal[0].summary
    assert _state(fixia)[0] == ("f401",)  # the target itself was not touched


def test_rehearse_catches_a_broken_downgrade(fixia, scenario):
    scenario("broken_downgrade")
    before = _state(fixia)
    _, p = _plan(fixia)
    found = {f.check: f for f in migrate.rehearse(fixia, p, mode="rehearse")}
    assert found["rehearse downgrade"].status is Status.CRIT
    assert "extra column public.users.bio" in found["rehearse downgrade"].summary
    assert found["rehearse upgrade again"].status is Status.CRIT  # and so upgrading again fails
    assert _state(fixia) == before


@pytest.mark.matrix
def test_rehearse_passes_a_sound_plan(scratch):
    migrations.upgrade(scratch, "0002")
    _, p = _plan(scratch, "head")
    assert {f.status for f in migrate.rehearse(scratch, p, mode="rehearse")} == {Status.OK}


def test_drift_names_objects_changed_by_hand(migrated):
    with db.connect(migrated, readonly=False) as conn:
        conn.execute("CREATE INDEX ix_by_hand ON users (last_name)")
        conn.execute("ALTER TABLE services ADD COLUMN notes text")
    d = migrate.drift(migrated, ("0004",))
    assert d.finding.status is Status.WARN
    assert set(d.differences) == {
        "extra index public.ix_by_hand",
        "extra column public.services.notes",
    }


def _hold_lock(
    url: str, table: str, release_after: float | None, ready: threading.Event, done: threading.Event
):
    with psycopg.connect(url) as conn:
        conn.execute(f"SELECT count(*) FROM {table}")  # AccessShareLock until the transaction ends
        ready.set()
        done.wait(release_after)
        conn.rollback()


def test_lock_conflict_retries_then_stops_with_nothing_changed(fixia, scenario):
    scenario("safe_column")
    before = _state(fixia)
    _, p = _plan(fixia)
    ready, done = threading.Event(), threading.Event()
    holder = threading.Thread(target=_hold_lock, args=(fixia.url, "users", None, ready, done))
    holder.start()
    ready.wait(10)
    try:
        t0 = time.perf_counter()
        applied = migrate.apply(
            fixia, p, mode="apply", blockers=[], lock_timeout="200ms", max_retries=2, backoff_s=0.05
        )
        elapsed = time.perf_counter() - t0
    finally:
        done.set()
        holder.join()
    assert applied.findings[0].status is Status.CRIT
    assert (
        "lock timeout after 3 attempts" in applied.findings[0].summary
        and "stays at 0004" in applied.findings[0].summary
    )
    assert elapsed < 5
    assert _state(fixia) == before


def test_lock_conflict_resolved_during_retries_applies(fixia, scenario):
    scenario("safe_column")
    _, p = _plan(fixia)
    ready, done = threading.Event(), threading.Event()
    holder = threading.Thread(target=_hold_lock, args=(fixia.url, "users", 0.5, ready, done))
    holder.start()
    ready.wait(10)
    try:
        applied = migrate.apply(
            fixia, p, mode="apply", blockers=[], lock_timeout="200ms", max_retries=5, backoff_s=0.2
        )
    finally:
        holder.join()
    assert applied.findings[-1].status is Status.OK
    assert (
        applied.times[0][0] == "f501" and applied.times[0][2] > 1
    )  # it took more than one attempt
    assert _state(fixia)[0] == ("f501",)


def test_a_connection_killed_mid_revision_leaves_the_previous_revision(fixia, scenario):
    scenario("slow_revision")
    before = _state(fixia)
    _, p = _plan(fixia)

    def kill():
        with psycopg.connect(fixia.url, autocommit=True) as conn:
            for _ in range(200):
                pids = conn.execute(
                    "SELECT pid FROM pg_stat_activity WHERE query LIKE 'SELECT pg_sleep(30)%%'"
                    " AND pid <> pg_backend_pid()"
                ).fetchall()
                if pids:
                    conn.execute("SELECT pg_terminate_backend(%s)", [pids[0][0]])
                    return
                time.sleep(0.05)

    killer = threading.Thread(target=kill)
    killer.start()
    applied = migrate.apply(fixia, p, mode="apply", blockers=[], max_retries=0)
    killer.join()
    assert (
        applied.findings[0].status is Status.CRIT and "stays at 0004" in applied.findings[0].summary
    )
    assert _state(fixia) == before  # no nickname column: nothing half-applied


def test_apply_refuses_blocked_or_unconfirmed_plans(fixia, scenario):
    from pgrunbook.base.findings import Finding
    from pgrunbook.base.targets import Target

    scenario("safe_column")
    _, p = _plan(fixia)
    blocked = migrate.apply(
        fixia, p, mode="apply", blockers=[Finding("lint x", Status.CRIT, "unsafe")]
    )
    assert (
        blocked.findings[0].status is Status.CRIT and "not applied" in blocked.findings[0].summary
    )
    protected = Target("production", fixia.url, protected=True)
    refused = migrate.apply(protected, p, mode="apply", blockers=[])
    assert (
        refused.findings[0].status is Status.CRIT
        and "confirm='production'" in refused.findings[0].summary
    )
    assert _state(fixia)[0] == ("0004",)


def test_a_failed_concurrent_index_is_named_as_left_behind(fixia, scenario):
    scenario("concurrent_index_fails")
    _, p = _plan(fixia)
    with db.connect(fixia) as conn:
        lint = migrate.lint_plan(conn, p)
    assert not [
        f for f in lint.findings if f.status is Status.CRIT
    ]  # concurrently: lint has no objection
    applied = migrate.apply(fixia, p, mode="apply", blockers=[])
    finding = applied.findings[0]
    assert finding.status is Status.CRIT and "stays at 0004" in finding.summary
    assert (
        "public.ux_users_last_name" in finding.summary or "ux_users_last_name" in finding.examples
    )


def test_a_deadlock_with_app_traffic_is_retried(fixia, scenario):
    """The app's transaction locks users then services; the revision the other way round."""
    scenario("wrong_lock_order")
    _, p = _plan(fixia)
    app_done = []

    def app():
        with psycopg.connect(fixia.url) as conn:
            conn.execute("UPDATE users SET location = location WHERE id = 1")
            time.sleep(
                0.8
            )  # by now the revision holds services and has waited for users since 0.5 s
            conn.execute("UPDATE services SET price = price WHERE professional_id = 1")
            conn.commit()
            app_done.append(True)

    def start_app_when_migration_locks_services():
        with psycopg.connect(fixia.url, autocommit=True) as conn:
            for _ in range(400):
                if conn.execute(
                    "SELECT 1 FROM pg_stat_activity WHERE query LIKE 'SELECT pg_sleep(0.5)%%'"
                ).fetchone():
                    return
                time.sleep(0.01)

    # the app takes users first, so the revision's second LOCK waits, and the app then needs
    # services
    holder = threading.Thread(target=app)
    waiter = threading.Thread(target=start_app_when_migration_locks_services)
    waiter.start()
    migration = threading.Thread(
        target=lambda: app_done.append(
            migrate.apply(
                fixia,
                p,
                mode="apply",
                blockers=[],
                lock_timeout="10s",
                max_retries=3,
                backoff_s=0.1,
            )
        )
    )
    migration.start()
    waiter.join()
    holder.start()
    holder.join()
    migration.join()
    applied = next(x for x in app_done if x is not True)
    assert True in app_done  # the app's transaction committed
    assert applied.findings[-1].status is Status.OK, applied.findings
    assert applied.times[0][2] >= 2  # the revision was the deadlock's victim, and retried
    assert _state(fixia)[0] == ("f801",)


def test_words_at_any_length_each_migration_once_the_slowest_charted():
    """A plan stopped by 45 findings of one migration names it once, with the count; the time
    chart of 820 migrations shows the slowest few, not 820 bars."""
    from pgrunbook.base.findings import Finding
    from pgrunbook.procedures.migrate import applying

    crit = [Finding("lint 0042_big", Status.CRIT, f"rule {n}") for n in range(45)]
    crit.append(Finding("extensions", Status.CRIT, "vector is not available"))
    line = applying._counted(crit)
    assert line == "lint 0042_big (45 CRIT); extensions", line
    times = [(f"{n:04d}_m", n / 1000, 1) for n in range(820)]
    fig = applying.plot_times(applying.Applied([], times=times))
    [ax] = fig.axes
    assert len(ax.patches) == applying.SLOWEST
    assert [t.get_text() for t in ax.get_yticklabels()][0] == "0819_m"
    assert ax.get_title() == f"The {applying.SLOWEST} slowest of 820 revisions"


def test_the_staging_gate_names_the_staging_this_configuration_has(tmp_path, monkeypatch):
    """A protected target whose configuration names no staging is told how to name one; one that
    names it is sent there, never to a `staging` it does not have."""
    from pgrunbook.base import targets
    from pgrunbook.procedures.migrate import gates

    config = tmp_path / "prod-only.toml"
    config.write_text(
        '[targets.eu_prod]\nurl_env = "EU_PROD_URL"\nprotected = true\n'
        '[targets.eu_stage]\nurl_env = "EU_STAGE_URL"\n'
    )
    monkeypatch.setenv("PGRUNBOOK_CONFIG", str(config))
    monkeypatch.setenv("EU_PROD_URL", "postgresql://app@db.internal/eu")
    monkeypatch.delenv("STAGING_DATABASE_URL", raising=False)
    prod = targets.resolve("eu_prod")
    plan = migrate.Plan((), "0004")
    gate = gates.staging_first(prod, plan, mode="apply")
    assert (
        gate.status is Status.CRIT and 'set staging = "NAME" in [targets.eu_prod]' in gate.summary
    )
    named = tmp_path / "prod-named.toml"
    named.write_text(
        config.read_text().replace("protected = true\n", 'protected = true\nstaging = "eu_stage"\n')
    )
    monkeypatch.setenv("PGRUNBOOK_CONFIG", str(named))
    gate = gates.staging_first(prod, plan, mode="apply")
    assert gate.status is Status.CRIT and "--target eu_stage -p mode apply" in gate.summary

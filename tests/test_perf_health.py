"""Performance review and health under real load: pgbench, slow queries, held connections, open
transactions."""

import contextlib
import json
import os
import re
import subprocess
import time
from pathlib import Path

import psycopg
import pytest

from pgrunbook.archive import runner
from pgrunbook.base import db
from pgrunbook.base.cluster import bin_dir
from pgrunbook.base.findings import Check, Status
from pgrunbook.base.targets import Target
from pgrunbook.checks import health, perf
from pgrunbook.cli import main
from pgrunbook.facts import activity, statements
from pgrunbook.procedures import seed
from tests.conftest import assert_charts_drawn

SLOW = """\\set n random(1, 60000)
SELECT id, email FROM users WHERE phone = :n::text;
SELECT count(*) FROM reviews r JOIN users u ON u.id = r.client_id WHERE u.id = :n;
"""


@pytest.fixture(autouse=True)
def own_reports(tmp_path, monkeypatch):
    monkeypatch.setenv("PGRUNBOOK_REPORTS_DIR", str(tmp_path / "reports"))


@pytest.fixture
def loaded(migrated, monkeypatch, tmp_path):
    """A Fixia database with 60,000 users under a pgbench workload and two deliberately slow
    queries."""
    with db.connect(migrated, readonly=False, statement_timeout="0") as conn:
        seed.seed(conn, migrated, mode="development", users=60_000)
        conn.execute("ANALYZE")
        if (
            conn.execute(
                "SELECT 1 FROM pg_extension WHERE extname = 'pg_stat_statements'"
            ).fetchone()
            is None
        ):
            preloaded = (
                "pg_stat_statements" in conn.execute("SHOW shared_preload_libraries").fetchone()[0]
            )
            if preloaded:
                conn.execute("CREATE EXTENSION pg_stat_statements")
    pgbench = str(bin_dir() / "pgbench")
    subprocess.run(
        [pgbench, "-i", "-q", "-s", "1", "-d", migrated.url], check=True, capture_output=True
    )
    script = tmp_path / "slow.sql"
    script.write_text(SLOW)
    subprocess.run(
        [pgbench, "-n", "-S", "-c", "2", "-t", "200", "-d", migrated.url],
        check=True,
        capture_output=True,
    )
    subprocess.run(
        [
            pgbench,
            "-n",
            "-M",
            "extended",
            "-f",
            str(script),
            "-c",
            "2",
            "-t",
            "15",
            "-d",
            migrated.url,
        ],
        check=True,
        capture_output=True,
    )
    monkeypatch.setenv("STAGING_DATABASE_URL", migrated.url)
    return migrated


def _has_statements(target: Target) -> bool:
    with db.connect(target) as conn:
        return (
            conn.execute(
                "SELECT 1 FROM pg_extension WHERE extname = 'pg_stat_statements'"
            ).fetchone()
            is not None
        )


def test_performance_names_the_slow_queries_and_the_right_indexes(loaded, sandbox):
    result = runner.run("performance", "staging", {"slow_ms": "1"}, progress=False)
    assert result.exit_code in (0, 1), result.error
    found = {f.check: f for f in result.findings}
    if not _has_statements(
        loaded
    ):  # the external server does not preload it: said, and the review goes on
        assert found["pg_stat_statements"].status is Status.WARN
        assert "shared_preload_libraries" in found["pg_stat_statements"].summary
        assert (
            found["slow queries"].status is Status.OK
            and "no query" in found["slow queries"].summary
        )
        assert "cache hit ratio" in found and "lock waits" in found
        return
    slow = found["slow queries"]
    assert slow.status is Status.WARN
    assert any("WHERE phone" in q for q in slow.examples) and any(
        "r.client_id" in q for q in slow.examples
    )
    assert not any(
        "pgbench_accounts" in q for q in slow.examples
    )  # the fast pgbench reads are not slow
    ddl = found["index advice"].examples
    assert 'CREATE INDEX CONCURRENTLY "ix_users_phone" ON "public"."users" ("phone");' in ddl
    assert (
        'CREATE INDEX CONCURRENTLY "ix_reviews_client_id" ON "public"."reviews" ("client_id");'
        in ddl
    )
    html = result.html.read_text()
    assert html.count("data:image/png") >= 1 and "sequential scan on users" in html


def test_plans_use_generic_plans_and_never_analyze_a_write(loaded):
    with db.connect(loaded) as conn:
        generic = conn.info.server_version >= 160000
        read = perf.explain(conn, "SELECT * FROM users WHERE phone = $1", analyze=True)
        write = perf.explain(conn, "UPDATE users SET phone = $1 WHERE id = $2", analyze=True)
        plain = perf.explain(conn, "SELECT count(*) FROM reviews WHERE client_id = 3", analyze=True)
        utility = perf.explain(conn, "VACUUM users")
    if generic:
        assert read.plan and "sequential scan on users" in read.note and "filtering" in read.note
        assert write.plan and "Actual Rows" not in write.plan  # planned, not run
    else:
        assert read.plan is None and "GENERIC_PLAN" in read.note
    assert "Actual Rows" in plain.plan  # a read without parameters, analyzed as asked
    assert utility.plan is None and "utility" in utility.note
    with db.connect(loaded) as conn:
        assert conn.execute("SELECT count(*) FROM users WHERE phone IS NULL").fetchone()[0] == 0


def test_index_advice_finds_unused_and_redundant_indexes(migrated):
    with db.connect(migrated, readonly=False) as conn:
        conn.execute("CREATE INDEX extra_users_type_location ON users (user_type, location)")
        conn.execute("CREATE INDEX same_as_type ON users (user_type)")
        early = perf.index_advice(
            conn, []
        )  # statistics of a new database: too early to call any unused
        advice = perf.index_advice(conn, [], unused_min_days=0)
    assert ("unused (too early)", "extra_users_type_location") in set(
        zip(early["kind"], early["index"], strict=True)
    )
    assert not early[early["kind"] == "unused (too early)"]["ddl"].str.startswith("DROP").any()
    rows = {(k, i) for k, i in zip(advice["kind"], advice["index"], strict=True)}
    assert ("redundant", "ix_users_user_type") in rows or ("duplicate", "same_as_type") in rows
    assert ("unused", "extra_users_type_location") in rows
    fk = advice[advice["index"] == "ix_projects_client_id"]
    assert "foreign key" in fk["why"].iloc[0] and fk["ddl"].iloc[0].startswith("-- keep unless")
    assert not any(
        i.startswith(("pk_", "uq_")) for i in advice["index"]
    )  # constraints are never advised away


def test_trend_shows_what_changed_since_the_previous_review(loaded, sandbox):
    first = runner.run(
        "performance", "staging", {"slow_ms": "1", "explain": "false"}, progress=False
    )
    assert first.exit_code in (0, 1), first.error
    with db.connect(loaded, readonly=False) as conn:
        conn.execute(
            "INSERT INTO categories (slug, name, description) SELECT 'c' || g, 'n', repeat('x',"
            " 500) FROM generate_series(1, 5000) g"
        )
        conn.execute("ANALYZE categories")
    second = runner.run(
        "performance", "staging", {"slow_ms": "1", "explain": "false"}, progress=False
    )
    trend = next(f for f in second.findings if f.check == "trend")
    assert first.notebook.stem.split("_")[0] in trend.summary or "since" in trend.summary
    assert any("public.categories" in e for e in trend.examples), trend


# -- health ----------------------------------------------------------------------------------------


def _hold(target: Target, n: int) -> list[psycopg.Connection]:
    return [psycopg.connect(target.url, autocommit=True, application_name="app") for _ in range(n)]


@pytest.mark.parametrize("held, expected, code", [(19, Status.WARN, 1), (21, Status.CRIT, 2)])
def test_health_follows_the_pool_limit(migrated, monkeypatch, sandbox, held, expected, code):
    monkeypatch.setenv("STAGING_DATABASE_URL", migrated.url)
    conns = _hold(migrated, held)
    try:
        result = runner.run(
            "health", "staging", {"pool_limit": "20", "backup_max_age_h": "24"}, progress=False
        )
    finally:
        for c in conns:
            c.close()
    found = {f.check: f for f in result.findings}
    assert found["connections"].status is expected and found["connections"].value == held
    assert (
        result.exit_code >= code
    )  # the run's code follows the worst check (no backup here is CRIT too)


def test_health_sees_a_long_and_an_idle_transaction(migrated):
    holder = psycopg.connect(migrated.url)
    holder.execute("SELECT 1")  # a transaction left open, idle
    try:
        time.sleep(1.2)
        with db.connect(migrated) as conn:
            long_tx = health.long_transactions(conn, warn_s=1, crit_s=60)
            idle = health.idle_in_transaction(conn, warn_s=1, crit_s=60)
            crit = health.long_transactions(conn, warn_s=0.2, crit_s=1)
    finally:
        holder.close()
    assert long_tx.status is Status.WARN and long_tx.value >= 1
    assert idle.status is Status.WARN and "1 sessions" in idle.summary
    assert crit.status is Status.CRIT
    with db.connect(migrated) as conn:
        assert health.idle_in_transaction(conn, warn_s=1).status is Status.OK


def test_health_writes_prometheus_and_json_and_exits_with_the_worst(
    migrated, monkeypatch, sandbox, tmp_path
):
    monkeypatch.setenv("DATABASE_URL", migrated.url)  # protected: a verified backup is required
    prom, summary = tmp_path / "textfile" / "pgrunbook.prom", tmp_path / "health.json"
    result = runner.run(
        "health",
        "production",
        {"prometheus_file": str(prom), "json_file": str(summary)},
        progress=False,
    )
    data = json.loads(summary.read_text())
    assert data["status"] == max(result.findings, key=lambda f: f.status.severity).status.name
    assert result.exit_code == int(
        max((f.status for f in result.findings), key=lambda s: s.severity)
    )
    lines = prom.read_text().splitlines()
    assert (
        'pgrunbook_health_status{target="production",check="backup"} 2' in lines
    )  # no verified backup
    # the labels are one fixed set: a dashboard's series never change name
    assert {f.check for f in result.findings} <= {c.value for c in Check}
    assert 'pgrunbook_up{target="production"} 1' in lines
    assert f'pgrunbook_run_status{{target="production"}} {result.exit_code}' in lines
    for line in lines:
        assert (
            line.startswith("#")
            or re.fullmatch(
                r'pgrunbook_health_(status|value)\{target="production",'
                r'check="[a-z ]+"\} -?[0-9.]+',
                line,
            )
            or re.fullmatch(
                r"pgrunbook_(up|last_run_timestamp_seconds|run_status)"
                r'\{target="production"\} [0-9.]+',
                line,
            )
        ), line
    assert os.listdir(prom.parent) == [
        "pgrunbook.prom"
    ]  # written beside and renamed: no temp file left
    assert_charts_drawn(result.notebook, result.html)  # the status chart, an image
    # each step shows all of its findings, not only its last line's
    cells = json.loads(result.notebook.read_text())["cells"]
    step = next(c for c in cells if "health.long_transactions(" in "".join(c["source"]))
    shown = "".join("".join(o.get("data", {}).get("text/html", "")) for o in step["outputs"])
    for check in ("connections", "long transactions", "idle in transaction"):
        assert f"<td>{check}</td>" in shown, check


def test_health_against_a_stopped_server_writes_up_0_over_the_last_good_files(
    sandbox, monkeypatch, tmp_path, capsys
):
    """The server down: the run is refused (exit 3), and the monitoring files say so, instead of
    the last good run's "all OK" staying in place for Prometheus and Nagios to read."""
    monkeypatch.setenv("DATABASE_URL", "postgresql://app@127.0.0.1:1/gone?connect_timeout=2")
    prom, summary = tmp_path / "pgrunbook.prom", tmp_path / "health.json"
    prom.write_text('pgrunbook_up{target="production"} 1\n')
    summary.write_text('{"target": "production", "up": true, "status": "OK"}')
    os.utime(prom, (0, 0))
    os.utime(summary, (0, 0))
    code = main(["run", "health", "-t", "production", "-p", "prometheus_file", str(prom),
                 "-p", "json_file", str(summary)])  # fmt: skip
    assert code == 3
    lines = prom.read_text().splitlines()
    assert 'pgrunbook_up{target="production"} 0' in lines
    assert 'pgrunbook_run_status{target="production"} 3' in lines
    stamp = next(x for x in lines if x.startswith("pgrunbook_last_run_timestamp_seconds"))
    assert abs(float(stamp.split()[-1]) - time.time()) < 60
    data = json.loads(summary.read_text())
    assert data["up"] is False and data["status"] == "UNKNOWN" and "127.0.0.1" in data["reason"]


def test_what_cannot_be_seen_is_unknown_never_made_up(sandbox):
    remote = Target("remote", "postgresql://app@db.internal.example:5432/fixia")
    assert [f.status for f in health.host(remote)] == [Status.UNKNOWN, Status.UNKNOWN]
    cpu, memory = health.host(remote)  # the guide's alerts: CPU above 80 %, memory above 90 %
    assert cpu.threshold == "WARN >= 80%" and memory.threshold.startswith("WARN >= 90%")
    with db.connect(Target("s", sandbox.url("production"))) as conn:
        assert health.storage(conn, remote).status is Status.UNKNOWN
        local = health.storage(conn, Target("s", sandbox.url("production"), sandbox=True))
        assert local.status in (Status.OK, Status.WARN, Status.CRIT) and 0 < local.value < 100
        assert health.replication(conn).summary == "no replicas attached"


def test_health_and_performance_run_under_plain_papermill(sandbox, tmp_path):
    import papermill

    root = Path(__file__).resolve().parents[1]
    for name in ("health", "performance"):
        papermill.execute_notebook(
            str(root / "runbooks" / f"{name}.ipynb"),
            str(tmp_path / f"{name}.ipynb"),
            parameters={"target": "sandbox"},
            progress_bar=False,
        )


def test_health_is_crit_after_a_failed_migration_and_warns_of_pending_ones(
    migrated, monkeypatch, sandbox
):
    monkeypatch.setenv("STAGING_DATABASE_URL", migrated.url)
    monkeypatch.setenv(
        "PGRUNBOOK_EXTRA_VERSIONS",
        str(Path(__file__).parent / "fixtures" / "migrations" / "concurrent_index_fails"),
    )
    with db.connect(migrated, readonly=False) as conn:
        seed.seed(
            conn, migrated, mode="development", users=300
        )  # last names repeat: the unique index fails
        pending = health.migrations(conn, runner.targets.resolve("staging"))
    assert pending.status is Status.WARN and "1 pending" in pending.summary
    failed = runner.run("migrate", "staging", {"mode": "apply"}, progress=False)
    assert failed.exit_code == 2, failed.findings
    with db.connect(migrated) as conn:
        verdict = health.migrations(conn, runner.targets.resolve("staging"))
    assert (
        verdict.status is Status.CRIT
        and failed.notebook.stem in str(verdict.value) + verdict.summary
    )


def test_a_migration_stopped_before_applying_is_not_a_failed_one(migrated, monkeypatch, sandbox):
    """Lint stops an unsafe revision on a populated table: the run is CRIT, nothing was applied, and
    health says the revision is pending, not that a migration failed."""
    monkeypatch.setenv("STAGING_DATABASE_URL", migrated.url)
    monkeypatch.setenv(
        "PGRUNBOOK_EXTRA_VERSIONS",
        str(Path(__file__).parent / "fixtures" / "migrations" / "index_no_concurrently"),
    )
    with db.connect(migrated, readonly=False) as conn:
        seed.seed(conn, migrated, mode="development", users=300)
    blocked = runner.run("migrate", "staging", {"mode": "apply"}, progress=False)
    apply = next(f for f in blocked.findings if f.check == "apply")
    assert blocked.exit_code == 2 and apply.summary.startswith("not applied")
    with db.connect(migrated) as conn:
        verdict = health.migrations(conn, runner.targets.resolve("staging"))
    assert verdict.status is Status.WARN and "1 pending" in verdict.summary


def test_lock_waits_show_who_blocks_whom(migrated):
    import threading

    holder = psycopg.connect(migrated.url)
    holder.execute("LOCK TABLE categories IN ACCESS EXCLUSIVE MODE")
    waiter = psycopg.connect(migrated.url, autocommit=True)
    holder_pid, waiter_pid = holder.info.backend_pid, waiter.info.backend_pid
    blocked = threading.Thread(target=lambda: waiter.execute("SELECT count(*) FROM categories"))
    blocked.start()
    try:
        with db.connect(migrated) as conn:
            for _ in range(50):
                waits = activity.lock_waits(conn)
                if not waits.empty:
                    break
                time.sleep(0.1)
            finding = perf.locks_finding(waits)
    finally:
        holder.close()
        blocked.join()
        waiter.close()
    assert list(waits["waiting_pid"]) == [waiter_pid] and list(waits["blocking_pid"]) == [
        holder_pid
    ]
    assert finding.status is Status.WARN and str(holder_pid) in finding.summary


@pytest.fixture
def standby(sandbox):
    """A streaming replica of the sandbox (pg_basebackup -R), on its own socket; stopped and removed
    afterwards."""
    import pwd
    import shutil
    import tempfile

    runas = (
        "embedded_postgres" if os.geteuid() == 0 else None
    )  # the sandbox's own server user, as root
    root = Path(tempfile.mkdtemp(prefix="pgrb-standby-"))
    if runas:
        os.chown(root, pwd.getpwnam(runas).pw_uid, pwd.getpwnam(runas).pw_gid)
    data = root / "data"
    subprocess.run(
        [
            str(bin_dir() / "pg_basebackup"),
            "-D",
            str(data),
            "-R",
            "-X",
            "stream",
            "-c",
            "fast",
            "-d",
            f"host={sandbox.data_dir} user=postgres",
        ],
        check=True,
        capture_output=True,
        user=runas,
    )
    options = f"-c port=5499 -c unix_socket_directories={root} -c listen_addresses=''"
    subprocess.run(
        [
            str(bin_dir() / "pg_ctl"),
            "-D",
            str(data),
            "-o",
            options,
            "-l",
            str(root / "log"),
            "-w",
            "start",
        ],
        check=True,
        capture_output=True,
        user=runas,
    )
    yield Target("standby", f"postgresql://postgres@/postgres?host={root}&port=5499")
    subprocess.run(
        [str(bin_dir() / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"],
        capture_output=True,
        user=runas,
    )
    shutil.rmtree(root, ignore_errors=True)


def test_replication_lag_is_read_on_the_primary_and_on_a_real_standby(sandbox, standby):
    primary = Target("primary", sandbox.url("postgres"))
    with psycopg.connect(primary.url, autocommit=True) as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS pgrb_heartbeat (at timestamptz)")
        conn.execute("INSERT INTO pgrb_heartbeat VALUES (now())")
    with psycopg.connect(standby.url, autocommit=True) as s:
        for _ in range(100):  # until the standby has replayed that write
            if s.execute("SELECT pg_last_xact_replay_timestamp() IS NOT NULL").fetchone()[0]:
                break
            time.sleep(0.1)
        with db.connect(primary) as conn:
            on_primary = health.replication(conn, warn_s=30, crit_s=300)
        s.execute("SELECT pg_wal_replay_pause()")
        with psycopg.connect(primary.url, autocommit=True) as conn:
            conn.execute("INSERT INTO pgrb_heartbeat VALUES (now())")
        time.sleep(1.5)
        behind = health.replication(s, warn_s=1, crit_s=60)
        s.execute("SELECT pg_wal_replay_resume()")
    assert on_primary.status is Status.OK and on_primary.summary.startswith("1 replicas")
    assert (
        behind.status is Status.WARN and behind.value >= 1 and "this standby is" in behind.summary
    )
    with psycopg.connect(primary.url, autocommit=True) as conn:
        conn.execute("DROP TABLE pgrb_heartbeat")


@pytest.mark.parametrize(
    "query, own",
    [
        ("COPY public.users (id, email) TO stdout;", True),  # pg_dump
        ("COPY public.users (id, email) FROM stdin;", True),  # pg_restore, the seed
        ("SELECT bit_xor(hashint8extended(id, $1)) FROM ONLY public.users", True),  # compare
        ("SELECT bt_index_check($1::regclass, $2)", True),
        (
            (
                "SELECT c.relname FROM pg_catalog.pg_class c JOIN pg_namespace n ON n.oid ="
                " c.relnamespace"
            ),
            True,
        ),
        (
            "SELECT * FROM users u JOIN pg_class c ON c.relname = u.first_name",
            False,
        ),  # touches an app table
        (
            "CREATE TABLE t AS SELECT 1 AS n FROM pg_sleep($1)",
            False,
        ),  # a function, not a catalog table
        ("SELECT * FROM reviews WHERE rating < $1", False),
    ],
)
def test_own_work_is_told_from_the_application_s(query, own):
    assert statements.own_work(query) is own


def test_a_database_dropped_and_re_created_starts_its_history_again(migrated, monkeypatch):
    """The same name, another database: the review says so instead of comparing with a database
    that is gone."""
    from pgrunbook.base import migrations
    from pgrunbook.procedures import admin

    monkeypatch.setenv("STAGING_DATABASE_URL", migrated.url)
    runner.run("security", "staging", progress=False)
    second = {f.check: f for f in runner.run("security", "staging", progress=False).findings}
    assert second["drift"].summary.startswith("since security/")
    admin.drop_database(migrated, migrated.database)
    with admin.connect(migrated) as conn:
        admin.create(conn, migrated.database)
    migrations.upgrade(migrated, "head")
    third = {f.check: f for f in runner.run("security", "staging", progress=False).findings}
    assert "its history starts again" in third["drift"].summary, third["drift"]
    assert "database oid" in third["drift"].summary
    fourth = {f.check: f for f in runner.run("security", "staging", progress=False).findings}
    assert fourth["drift"].summary.startswith("since security/")  # its own history from there


def test_the_review_ranks_the_applications_statements_not_pgrunbooks_own(sandbox, monkeypatch):
    """pgrunbook's sessions are not tracked where the role may say so (a superuser); where it may
    not (a monitoring role), its statements carry its tag and are kept out of the rankings."""
    from pgrunbook.base.db import TAG
    from pgrunbook.facts import statements

    staging = runner.targets.resolve("staging")
    role = "pgrb_watcher"
    with psycopg.connect(sandbox.url("postgres"), autocommit=True) as conn:
        if not conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", [role]).fetchone():
            conn.execute(f"CREATE ROLE {role} LOGIN IN ROLE pg_monitor, pg_read_all_data")
    admin = psycopg.connect(staging.url, autocommit=True)
    admin.execute("SELECT pg_stat_statements_reset()")

    def ours() -> int:
        return admin.execute(
            "SELECT count(*) FROM pg_stat_statements WHERE query LIKE %s"
            " AND query NOT LIKE 'SET pg_stat_statements.track%%'"  # stopping it, and asking
            " AND query NOT LIKE 'SELECT has_parameter_privilege%%'"  # whether it may (tagged)
            " AND query NOT LIKE 'SELECT current_setting(%%'",
            ["%" + TAG],
        ).fetchone()[0]

    runner.run("integrity", "staging", {"checks": "fk,unique"}, progress=False)  # as postgres
    assert ours() == 0  # a superuser's session is not tracked at all
    watcher = staging.url.replace("postgres:@", f"{role}:@").replace("postgres@", f"{role}@")
    monkeypatch.setenv("STAGING_DATABASE_URL", watcher)
    runner.run("integrity", "staging", {"checks": "fk,unique"}, progress=False)
    assert ours() > 0  # tracked, and tagged
    admin.execute("SELECT count(*) FROM users WHERE email LIKE 'a%'")  # the application's
    ranked = statements.statements(admin)
    assert not [q for q in ranked["query"] if q.rstrip().endswith(TAG)]
    assert any("FROM users" in q for q in ranked["query"])
    admin.close()
    with psycopg.connect(sandbox.url("postgres"), autocommit=True) as conn:
        conn.execute(f"DROP ROLE {role}")  # the sandbox as it was (security reviews count roles)


def test_the_statement_chart_labels_each_bar_with_its_statement_and_draws_no_pie():
    """The bars say which statement they are (not `#3` and a legend to look up), and the share
    of time is a column of the table below, not a pie whose labels overlap."""
    import pandas as pd

    frame = pd.DataFrame(
        {
            "query": [
                f"SELECT * FROM orders WHERE customer_id = $1 AND n = {i}" for i in range(20)
            ],
            "calls": range(1, 21),
            "total_ms": [1000.0 - 40 * i for i in range(20)],
            "mean_ms": [50.0 - i for i in range(20)],
            "share_pct": [5.0] * 20,
        }
    )
    figure = perf.plot_statements(frame, 100)
    bars, scatter = figure.axes  # two charts: no pie
    labels = [t.get_text() for t in bars.get_yticklabels()]
    assert labels[::-1] == [
        f"SELECT * FROM orders WHERE customer_id = $1 AND n = {i}" for i in range(15)
    ]
    assert bars.get_xlabel() == "total time (s)" and scatter.get_ylabel() == "mean time (ms)"
    assert [line.get_label() for line in scatter.get_lines()] == ["slow: 100 ms"]


BURN = "import time\nt = time.time() + 4\nwhile time.time() < t:\n    pass"


def test_host_cpu_says_whose_it_is_and_warns_only_when_sustained(sandbox):
    """Measured over a window: two backends busy count as PostgreSQL's, two programs of this
    host as others'; a busy minute without a busy five minutes is a burst, not a WARN."""
    import subprocess
    import sys
    import threading

    def burn_in_postgres() -> None:
        with psycopg.connect(sandbox.url("sandbox")) as conn:
            conn.execute("SET statement_timeout = '6s'")
            with contextlib.suppress(psycopg.errors.QueryCanceled):
                conn.execute("SELECT count(*) FROM generate_series(1, 10000000000)")

    workers = [threading.Thread(target=burn_in_postgres) for _ in range(2)]
    for w in workers:
        w.start()
    time.sleep(0.5)
    in_postgres = health.cpu_use(2.0)
    for w in workers:
        w.join()
    burners = [subprocess.Popen([sys.executable, "-c", BURN]) for _ in range(2)]
    time.sleep(0.3)
    elsewhere = health.cpu_use(2.0)
    for b in burners:
        b.wait()
    assert in_postgres.postgres_pct > 25 and in_postgres.postgres_pct > elsewhere.postgres_pct
    assert elsewhere.others_pct > 25 and elsewhere.others_pct > elsewhere.postgres_pct

    burst = health.cpu_finding(health.CpuUse(95, 5, 90), 0.4, 2, 80, 2.0)
    assert burst.status is Status.OK and "a burst, not sustained" in burst.summary
    assert "the load is not the database's" in burst.summary
    held = health.cpu_finding(health.CpuUse(95, 90, 5), 1.9, 2, 80, 2.0)
    assert held.status is Status.WARN and "PostgreSQL's processes 90%" in held.summary

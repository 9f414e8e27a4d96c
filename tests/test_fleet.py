"""Fleets: one runbook across many databases, and one archive written by many processes."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from pgrunbook.archive import reports
from pgrunbook.facts import history

from .conftest import EXTERNAL, unreadable
from .receivers import Webhook

APPENDER = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from pgrunbook.archive import reports
    from pgrunbook.base import config

    worker, count = int(sys.argv[1]), int(sys.argv[2])
    root = config.settings().reports_dir / "fleet-test"
    root.mkdir(parents=True, exist_ok=True)
    for n in range(count):
        nb, html = root / f"w{worker}-{n}.ipynb", root / f"w{worker}-{n}.html"
        nb.write_text(f"notebook {worker} {n}")
        html.write_text(f"html {worker} {n}")
        meta = dict(runbook="health", target=f"db{worker}", outcome="OK", exit_code=0,
                    incident=None, operator="test", host=f"worker{worker}",
                    start=f"2026-01-01T00:{worker:02d}:{n:02d}+00:00",
                    end=f"2026-01-01T00:{worker:02d}:{n:02d}+00:00", duration_s=1.0)
        reports.append_index(meta, nb, html)
    """
)


def test_sixteen_processes_append_to_one_archive_and_it_verifies(tmp_path, monkeypatch):
    """Workers on several machines share one archive folder: 16 processes append at once; every
    line is there once, the chain holds, and `reports verify` is OK."""
    env = dict(os.environ, PGRUNBOOK_REPORTS_DIR=str(tmp_path / "reports"))
    env["PGRUNBOOK_STATE_DIR"] = str(tmp_path / "state")
    script = tmp_path / "append.py"
    script.write_text(APPENDER)
    workers = [
        subprocess.Popen([sys.executable, str(script), str(w), "10"], env=env) for w in range(16)
    ]
    assert [w.wait(timeout=300) for w in workers] == [0] * 16
    monkeypatch.setenv("PGRUNBOOK_REPORTS_DIR", env["PGRUNBOOK_REPORTS_DIR"])
    monkeypatch.setenv("PGRUNBOOK_STATE_DIR", env["PGRUNBOOK_STATE_DIR"])
    entries = history.entries()
    assert len(entries) == 160 and len({e["id"] for e in entries}) == 160
    check = reports.verify()
    assert check.ok and check.checked == 320, check.lines()


@pytest.fixture
def fleet_of_21(sandbox, tmp_path, monkeypatch):
    """21 targets from a fleet file: 14 databases on the embedded server, 6 on the external one
    (or all 20 embedded without it), one that cannot be reached. One database carries a planted
    fault: an orphan under a NOT VALID foreign key (integrity CRIT) and an alembic revision this
    checkout does not know (health CRIT)."""
    servers = [sandbox.url("postgres")] * 14 + [EXTERNAL or sandbox.url("postgres")] * 6
    made, rows = [], ["name,url_env,service,tags,protected,app"]
    for n, admin in enumerate(servers):
        name = f"pgrb_fleet_{uuid.uuid4().hex[:6]}_{n:02d}"
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        url = psycopg.conninfo.make_conninfo(admin, dbname=name)
        made.append((admin, name))
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("CREATE EXTENSION IF NOT EXISTS amcheck")  # else integrity WARNs
            conn.execute("CREATE TABLE parent (id int PRIMARY KEY)")
            conn.execute("CREATE TABLE child (id int PRIMARY KEY, parent_id int)")
            conn.execute("INSERT INTO parent VALUES (1); INSERT INTO child VALUES (1, 1)")
            if n == 7:  # the planted fault
                conn.execute("INSERT INTO child VALUES (2, 99)")
                conn.execute(
                    "ALTER TABLE child ADD CONSTRAINT fk FOREIGN KEY (parent_id)"
                    " REFERENCES parent (id) NOT VALID"
                )
                conn.execute("CREATE TABLE alembic_version (version_num varchar(32) PRIMARY KEY)")
                conn.execute("INSERT INTO alembic_version VALUES ('zzzz_unknown')")
        monkeypatch.setenv(f"FLEET_DB_{n:02d}", url)
        app = "fixia" if n == 7 else ""
        rows.append(f"tenant{n:02d},FLEET_DB_{n:02d},,tenant eu,false,{app}")
    monkeypatch.setenv("FLEET_DB_GONE", "postgresql://nobody@127.0.0.1:1/gone?connect_timeout=2")
    rows.append("tenant99,FLEET_DB_GONE,,tenant,false,")
    (tmp_path / "tenants.csv").write_text("\n".join(rows) + "\n")
    config = tmp_path / "fleet.toml"
    config.write_text(
        f'[fleets.tenants]\nfile = "{tmp_path / "tenants.csv"}"\n\n'
        '[fleets.eu]\ntags = ["eu"]\n\n[fleets.none]\ntargets = ["nothing*"]\n'
    )
    monkeypatch.setenv("PGRUNBOOK_CONFIG", str(config))
    monkeypatch.setenv("PGRUNBOOK_REPORTS_DIR", str(tmp_path / "reports"))
    yield made
    for admin, name in made:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )


@pytest.mark.external_server
def test_a_fleet_of_21_targets_on_this_machine(fleet_of_21, capsys, monkeypatch):
    from pgrunbook.archive import fleet
    from pgrunbook.cli import main

    assert main(["fleet", "list", "eu"]) == 0
    listed = capsys.readouterr().out
    assert "20 targets in fleet 'eu'" in listed and "tenant99" not in listed
    assert main(["fleet", "list", "none"]) == 3  # selects nothing: refused
    assert main(["fleet", "run", "health", "--fleet", "tenants", "-p", "slow_ms", "x"]) == 3
    assert not (Path(os.environ["PGRUNBOOK_REPORTS_DIR"]) / "index.jsonl").exists()
    capsys.readouterr()

    config = Path(os.environ["PGRUNBOOK_CONFIG"])
    alerting = config.with_name("fleet-alerts.toml")  # a file of its own: settings are cached
    channel = '[notify.channels.ops]\nurl_env = "FLEET_HOOK"\nmin_status = "CRIT"\n'
    alerting.write_text(config.read_text() + "\n" + channel)
    monkeypatch.setenv("PGRUNBOOK_CONFIG", str(alerting))
    with Webhook() as hook:
        monkeypatch.setenv("FLEET_HOOK", hook.url("ops"))
        result = fleet.run("integrity", "tenants", parallel=2, retry_delay_s=0.2)
        digests = list(hook.posts)
    # one digest for the fleet, not one message per target: the two CRITs, worst first
    assert len(digests) == 1, digests
    assert digests[0]["title"] == "[CRIT] integrity on fleet-tenants: 2 alerting"
    assert (
        "CRIT tenant07:" in digests[0]["message"]
        and "CRIT tenant99: not checked" in (digests[0]["message"])
    )
    by = {r.target: r for r in result.runs}
    assert len(by) == 21 and result.exit_code == 2
    assert by["tenant07"].outcome == "CRIT" and result.runs[0].target == "tenant07"  # worst first
    assert by["tenant99"].outcome == "UNKNOWN" and by["tenant99"].attempts == 3  # retried twice
    assert "cannot reach the server" in by["tenant99"].error
    assert all(by[f"tenant{n:02d}"].outcome == "OK" for n in range(20) if n != 7), {
        t: r.outcome for t, r in by.items()
    }
    root = Path(os.environ["PGRUNBOOK_REPORTS_DIR"])
    assert all((root / r.html).is_file() for r in result.runs if r.target != "tenant99")
    report = result.report
    assert report.outcome == "CRIT" and report.exit_code == 2
    page = report.html.read_text()
    links = re.findall(r"<a href=['\"]\.\./(integrity/[^'\"]+)['\"]", page)
    assert len(links) == 20 and all((root / link).is_file() for link in links)
    assert page.index("tenant07") < page.index("tenant99") < page.index("tenant00")

    assert main(["fleet", "run", "health", "--fleet", "tenants", "--parallel", "2"]) == 2
    out = capsys.readouterr().out
    assert "CRIT    tenant07" in out and "UNKNOWN tenant99" in out and "fleet report:" in out
    assert main(["reports", "verify"]) == 0


AIRFLOW_RUN = textwrap.dedent(
    """
    import json, sys
    from datetime import timedelta
    from pgrunbook.airflow import fleet_dag

    dag = fleet_dag("integrity", "tenants", retry_delay=timedelta(seconds=1))
    if __name__ == "__main__":
        run = dag.test()
        tasks = [
            {"task": ti.task_id, "map_index": ti.map_index, "state": str(ti.state),
             "try_number": ti.try_number}
            for ti in run.get_task_instances()
        ]
        print("RESULT " + json.dumps({"state": str(run.state), "tasks": tasks}))
    """
)


def _airflow_env(tmp_path: Path, dags: Path, pool: int) -> dict[str, str]:
    """Airflow's home of its own, its database made, the pgrunbook pool of `pool` slots (a
    skip, or in CI a failure, where Airflow is not installed)."""
    if importlib.util.find_spec("airflow") is None:  # not imported here: it configures logging
        if os.environ.get("PGRUNBOOK_TEST_AIRFLOW") == "required":  # CI: never a silent skip
            pytest.fail("Airflow is not installed: pip install -e '.[test,airflow]'")
        pytest.skip("pip install 'pgrunbook[airflow]'")
    env = dict(
        os.environ,
        AIRFLOW_HOME=str(tmp_path / "airflow"),
        AIRFLOW__CORE__DAGS_FOLDER=str(dags),
        AIRFLOW__CORE__LOAD_EXAMPLES="False",
        AIRFLOW__CORE__UNIT_TEST_MODE="False",
    )
    airflow = str(Path(sys.executable).parent / "airflow")
    for command in (["db", "migrate"], ["pools", "set", "pgrunbook", str(pool), "pgrunbook runs"]):
        done = subprocess.run([airflow, *command], env=env, capture_output=True, text=True)
        assert done.returncode == 0, done.stderr[-2000:]
    return env


@pytest.mark.external_server
def test_the_same_fleet_on_airflow(fleet_of_21, tmp_path):
    """The DAG `pgrunbook.airflow.fleet_dag` builds, run by Airflow's own `dag.test()` in a
    process of its own: one mapped task per target in a pool, the unreachable one retried by
    Airflow, the planted CRIT failed without retry, the fleet report last and the run failed."""
    dags = tmp_path / "dags"
    dags.mkdir()
    (dags / "fleet_integrity.py").write_text(AIRFLOW_RUN)
    env = _airflow_env(tmp_path, dags, pool=2)
    config = Path(os.environ["PGRUNBOOK_CONFIG"])  # alerts, as on the single machine
    alerting = config.with_name("airflow-alerts.toml")
    alerting.write_text(config.read_text() + '\n[notify.channels.ops]\nurl_env = "FLEET_HOOK"\n')
    with Webhook() as hook:
        env |= {"PGRUNBOOK_CONFIG": str(alerting), "FLEET_HOOK": hook.url("ops")}
        done = subprocess.run(
            [sys.executable, str(dags / "fleet_integrity.py")], env=env, capture_output=True,
            text=True, timeout=900,
        )  # fmt: skip
    # the report task sends the fleet's one digest, as `pgrunbook fleet run` does
    assert [p["title"] for p in hook.posts] == ["[CRIT] integrity on fleet-tenants: 2 alerting"]
    line = next((x for x in done.stdout.splitlines() if x.startswith("RESULT ")), None)
    assert line, (done.stdout[-3000:], done.stderr[-3000:])
    result = json.loads(line.removeprefix("RESULT "))
    assert result["state"].endswith("failed")  # the worst target is CRIT
    mapped = {t["map_index"]: t for t in result["tasks"] if t["task"] == "run_target"}
    targets = sorted(f"tenant{n:02d}" for n in [*range(20), 99])
    assert sorted(mapped) == list(range(21))
    state = {targets[i]: t for i, t in mapped.items()}
    assert state["tenant07"]["state"].endswith("failed") and state["tenant07"]["try_number"] == 1
    assert state["tenant99"]["state"].endswith("failed") and state["tenant99"]["try_number"] == 3
    assert all(
        state[t]["state"].endswith("success") for t in targets if t not in ("tenant07", "tenant99")
    )
    [report] = [t for t in result["tasks"] if t["task"] == "report"]
    assert report["state"].endswith("failed")
    entries = history.entries()
    fleet_runs = {e["fleet"] for e in entries if e.get("fleet")}
    assert len(fleet_runs) == 1
    archived = [e for e in entries if e.get("fleet")]
    assert sorted(e["target"] for e in archived) == [t for t in targets if t != "tenant99"]
    reported = [e for e in entries if e["runbook"] == "fleet_report"]
    assert len(reported) == 1 and reported[0]["outcome"] == "CRIT"
    assert reports.verify().ok
    from pgrunbook.base.config import settings

    root = settings().reports_dir
    assert unreadable(root / reported[0]["files"]["html"]["path"]) == []


def test_a_target_that_could_not_be_checked_ranks_with_the_crits_not_below_a_warn():
    """An unreachable server in a fleet of warnings: the fleet exits 3 (not 1), and its report
    heads CRIT with the target named as not checked (not WARN)."""
    from dataclasses import asdict

    from pgrunbook.archive import fleet
    from pgrunbook.base.findings import Status, worst

    runs = [
        fleet.TargetRun("tenant01", "WARN", 1, 1, 0.5),
        fleet.TargetRun("tenant99", "UNKNOWN", 3, 3, 2.0, error="cannot reach the server"),
    ]
    assert fleet.FleetResult("f", "run", "health", runs, None).exit_code == 3
    runs.append(fleet.TargetRun("tenant07", "CRIT", 2, 1, 0.5))
    assert fleet.FleetResult("f", "run", "health", runs, None).exit_code == 2
    found = fleet.findings(
        {"runbook": "health", "fleet": "f", "runs": [asdict(r) for r in runs[:2]]}
    )
    assert worst(f.status for f in found) is Status.CRIT
    gone = next(f for f in found if f.check == "tenant99")
    assert gone.status is Status.CRIT and gone.summary.startswith("not checked (UNKNOWN)")


@pytest.fixture
def trio(sandbox, tmp_path, monkeypatch):
    """Three tenant databases on one server (the embedded one), and one target that cannot be
    reached, as fleets `trio` and `trio_gone`."""
    admin = sandbox.url("postgres")
    made, rows = [], ["name,url_env,service,tags,protected,app"]
    for n in range(3):
        name = f"pgrb_trio_{uuid.uuid4().hex[:6]}_{n}"
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        url = psycopg.conninfo.make_conninfo(admin, dbname=name)
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("CREATE EXTENSION IF NOT EXISTS amcheck")
            conn.execute("CREATE TABLE item (id int PRIMARY KEY, note text)")
            conn.execute("INSERT INTO item SELECT g, md5(g::text) FROM generate_series(1, 500) g")
        made.append(name)
        monkeypatch.setenv(f"TRIO_DB_{n}", url)
        rows.append(f"trio{n},TRIO_DB_{n},,trio,false,")
    monkeypatch.setenv("TRIO_GONE", "postgresql://nobody@127.0.0.1:1/gone?connect_timeout=2")
    (tmp_path / "trio.csv").write_text("\n".join(rows) + "\n")
    config = tmp_path / f"trio-{uuid.uuid4().hex[:6]}.toml"
    config.write_text(
        f'[fleets.trio]\nfile = "{tmp_path / "trio.csv"}"\n\n'
        '[fleets.trio_gone]\ntargets = ["trio0", "trio_gone"]\n\n'
        '[targets.trio_gone]\nurl_env = "TRIO_GONE"\n'
    )
    monkeypatch.setenv("PGRUNBOOK_CONFIG", str(config))
    monkeypatch.setenv("PGRUNBOOK_REPORTS_DIR", str(tmp_path / "reports"))
    monkeypatch.setenv("PGRUNBOOK_BACKUPS_DIR", str(tmp_path / "backups"))
    monkeypatch.setenv("PGRUNBOOK_STATE_DIR", str(tmp_path / "state"))
    yield made
    with psycopg.connect(admin, autocommit=True) as conn:
        for name in made:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )


def _scratch(admin: str) -> list[str]:
    with psycopg.connect(admin) as conn:
        return [
            r[0]
            for r in conn.execute("SELECT datname FROM pg_database WHERE datname LIKE 'pgrb_ver%'")
        ]


def test_three_tenants_of_one_server_back_up_at_once(trio, sandbox, capsys):
    """Backed up in the same second, each verified in a scratch database of its own."""
    from pgrunbook.cli import main

    before = _scratch(sandbox.url("postgres"))
    assert main(["fleet", "run", "backup", "--fleet", "trio", "--parallel", "3"]) == 0, (
        capsys.readouterr()
    )
    out = capsys.readouterr().out
    assert all(f"OK      trio{n}" in out for n in range(3)), out
    for n in range(3):
        [entry] = [e for e in history.entries() if e["target"] == f"trio{n}"]
        assert entry["outcome"] == "OK"
    assert _scratch(sandbox.url("postgres")) == before  # every scratch database dropped


def test_a_target_run_again_is_a_new_run_and_a_killed_one_is_not_run_again(trio, tmp_path):
    """As Airflow calls run_target: a task cleared and run again replaces its result (not 'after
    2 attempts'); a try whose process was killed mid-run leaves no empty report, and the next
    try fails it without running it again; the report names it."""
    import signal
    import time
    from dataclasses import asdict

    from pgrunbook.archive import fleet

    plan = fleet.prepare("performance", "trio")
    first = fleet.run_target(plan, "trio0")
    again = fleet.run_target(plan, "trio0")
    assert first.outcome == again.outcome != "FAILED" and again.attempts == 1
    assert again.duration_s < first.duration_s + again.duration_s - 0.001

    code = (
        "import json, sys\nfrom pgrunbook.archive import fleet\n"
        "fleet.run_target(fleet.Prepared(**json.loads(sys.argv[1])), 'trio1')\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code, json.dumps(asdict(plan))])
    running = tmp_path / "state" / "running"
    deadline = time.monotonic() + 120
    while not (running.is_dir() and [p for p in running.iterdir() if p.stat().st_size]):
        assert time.monotonic() < deadline and proc.poll() is None, "the run never started"
        time.sleep(0.1)
    proc.send_signal(signal.SIGKILL)  # as the OOM killer does
    proc.wait()
    reports_dir = tmp_path / "reports"
    assert not [p for p in reports_dir.rglob("*.ipynb") if p.stat().st_size == 0]
    runs = len(history.entries())
    killed = fleet.run_target(plan, "trio1")  # Airflow's next try
    assert killed.outcome == "FAILED" and "killed mid-run" in killed.error
    assert len(history.entries()) == runs  # not run again
    result = fleet.finish(plan)
    by = {r.target: r for r in result.runs}
    assert by["trio1"].outcome == "FAILED" and result.exit_code in (2, 3)
    assert "killed mid-run" in result.report.html.read_text()


def test_a_report_in_another_state_folder_finds_no_result_and_says_why(trio, monkeypatch, tmp_path):
    from pgrunbook.archive import fleet

    plan = fleet.prepare("status", "trio")
    fleet.run_target(plan, "trio0")
    assert fleet.missing(plan) == ["trio1", "trio2"]
    monkeypatch.setenv("PGRUNBOOK_STATE_DIR", str(tmp_path / "elsewhere"))
    assert fleet.missing(plan) == plan.targets


AIRFLOW_TRIO = textwrap.dedent(
    """
    import json, os, sys
    from datetime import timedelta
    from pgrunbook.airflow import fleet_dag

    dags = [
        fleet_dag("backup", "trio", retries=0),
        fleet_dag("status", "trio_gone", retries=0),
        fleet_dag("status", "no_such_fleet", retries=0),
    ]
    if __name__ == "__main__":
        for dag in dags:
            run = dag.test()
            tasks = {f"{ti.task_id}{'' if ti.map_index < 0 else ti.map_index}": str(ti.state)
                     for ti in run.get_task_instances()}
            print("RESULT " + json.dumps({"dag": dag.dag_id, "state": str(run.state),
                                          "tasks": tasks}))
    """
)


def test_three_tenants_on_airflow_and_the_report_task_fails_what_was_not_checked(
    trio, sandbox, tmp_path
):
    """dag.test(): the backup of three tenants of one server succeeds; a fleet with a target
    that cannot be reached fails at its report (exit 3 is not green); a fleet that does not
    exist fails at prepare and its report says so (no TypeError); no deprecation warning."""
    dags = tmp_path / "dags"
    dags.mkdir()
    (dags / "trio.py").write_text(AIRFLOW_TRIO)
    env = _airflow_env(tmp_path, dags, pool=3)
    before = _scratch(sandbox.url("postgres"))
    done = subprocess.run(
        [sys.executable, str(dags / "trio.py")], env=env, capture_output=True, text=True,
        timeout=900,
    )  # fmt: skip
    results = {
        r["dag"]: r
        for r in (
            json.loads(x.removeprefix("RESULT "))
            for x in done.stdout.splitlines()
            if x.startswith("RESULT ")
        )
    }
    assert len(results) == 3, (done.stdout[-3000:], done.stderr[-3000:])
    backup = results["pgrunbook_backup_trio"]
    assert backup["state"].endswith("success"), backup
    assert all(backup["tasks"][f"run_target{n}"].endswith("success") for n in range(3))
    assert _scratch(sandbox.url("postgres")) == before
    gone = results["pgrunbook_status_trio_gone"]
    assert gone["state"].endswith("failed") and gone["tasks"]["report"].endswith("failed"), gone
    missing = results["pgrunbook_status_no_such_fleet"]
    assert missing["state"].endswith("failed"), missing
    logs = done.stdout + done.stderr
    assert "TypeError" not in logs and "AirflowFailException is deprecated" not in logs
    entries = history.entries()
    assert sorted(e["target"] for e in entries if e["runbook"] == "backup") == [
        "trio0", "trio1", "trio2"
    ]  # fmt: skip
    assert all(e["outcome"] == "OK" for e in entries if e["runbook"] == "backup")

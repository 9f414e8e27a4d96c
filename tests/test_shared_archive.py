"""The audit archive in a bucket (a real S3 server, SeaweedFS): many runners, each with a disk of
its own, append to one chain; any machine verifies it whole and builds the site from it; a
changed report, a removed entry and the bucket out of reach are named."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path

import pytest

from pgrunbook.cli import main

KEY = "shared archive key 8812"

APPENDER = textwrap.dedent(
    """
    import sys
    from pgrunbook.archive import shared
    from pgrunbook.base import config

    worker, count = int(sys.argv[1]), int(sys.argv[2])
    root = config.settings().reports_dir / "health"
    root.mkdir(parents=True, exist_ok=True)
    for n in range(count):
        nb, html = root / f"w{worker}-{n}.ipynb", root / f"w{worker}-{n}.html"
        nb.write_text(f"notebook {worker} {n}")
        html.write_text(f"html {worker} {n}")
        meta = dict(runbook="health", target=f"db{worker}", outcome="OK", exit_code=0,
                    incident=None, operator="test", host=f"worker{worker}",
                    start=f"2026-01-01T00:{worker:02d}:{n:02d}+00:00",
                    end=f"2026-01-01T00:{worker:02d}:{n:02d}+00:00", duration_s=1.0)
        shared.archive_run(meta, nb, html)
    """
)


@pytest.fixture
def shared(s3server, tmp_path, monkeypatch):
    """A bucket as the shared archive; each "machine" is a folder of its own."""
    name = s3server.bucket(f"pgrb-audit-{uuid.uuid4().hex[:8]}")
    env = {**s3server.env(), "PGRUNBOOK_REPORTS": f"s3://{name}/audit",
           "PGRUNBOOK_REPOSITORY_KEY": KEY}  # fmt: skip
    for k, v in env.items():
        monkeypatch.setenv(k, v)

    def machine(n: str) -> dict[str, str]:  # its own disk for reports (the sandbox is shared)
        return {**os.environ, "PGRUNBOOK_REPORTS_DIR": str(tmp_path / n / "reports")}

    return name, machine


def _on(machine: dict[str, str], monkeypatch) -> None:
    monkeypatch.setenv("PGRUNBOOK_REPORTS_DIR", machine["PGRUNBOOK_REPORTS_DIR"])


def test_eight_runners_append_to_one_chain_and_any_machine_verifies_it(
    shared, s3server, tmp_path, monkeypatch, capsys
):
    bucket, machine = shared
    script = tmp_path / "append.py"
    script.write_text(APPENDER)
    workers = [
        subprocess.Popen([sys.executable, str(script), str(w), "6"], env=machine(f"m{w}"))
        for w in range(8)
    ]
    assert [w.wait(timeout=300) for w in workers] == [0] * 8
    objects = s3server.objects(bucket)
    chain = sorted(k for k in objects if "/chain/" in k)
    assert [int(k.rsplit("/", 1)[1]) for k in chain] == list(range(1, 49))  # none lost, no fork
    assert not [k for k, v in objects.items() if b"notebook 3" in v or b"html 3" in v]  # sealed

    _on(machine("auditor"), monkeypatch)  # a machine that wrote nothing
    assert main(["reports", "verify"]) == 0
    out = capsys.readouterr().out
    assert f"OK: 96 files checked against the chain in s3://{bucket}/audit" in out
    assert main(["reports", "list"]) == 0
    assert len([x for x in capsys.readouterr().out.splitlines() if "health" in x]) == 48

    # a report changed in the bucket, and an entry removed: each named
    client = s3server.client()
    victim = next(k for k in objects if k.endswith("/files/health/w2-3.html"))
    client.put_object(Bucket=bucket, Key=victim, Body=objects[victim][:-1] + b"\0")
    client.delete_object(Bucket=bucket, Key=chain[20])
    assert main(["reports", "verify"]) == 2
    out = capsys.readouterr().out
    assert "changed: health/w2-3.html" in out
    assert "chain entries 21 are missing" in out and "FAILED" in out


def test_two_fleet_workers_write_one_archive_and_the_site_is_built_from_the_bucket(
    sandbox, shared, s3server, monkeypatch, tmp_path, capsys
):
    """Two workers, each with a disk of its own, each running a fleet (the health runbook and
    the fleet's report) at the same time into one bucket; a third machine verifies the archive
    and builds the site from it."""
    bucket, machine = shared
    config = tmp_path / "fleets.toml"
    config.write_text(
        '[fleets.one]\ntargets = ["staging"]\n\n[fleets.two]\ntargets = ["production"]\n'
    )
    monkeypatch.setenv("PGRUNBOOK_CONFIG", str(config))
    workers = [
        subprocess.Popen(
            [sys.executable, "-m", "pgrunbook", "fleet", "run", "health", "--fleet", fleet],
            env=machine(f"worker-{fleet}"),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )  # fmt: skip
        for fleet in ("one", "two")
    ]
    done = [(w.wait(timeout=600), w.stderr.read().decode()) for w in workers]
    assert all(code in (0, 1) for code, _ in done), done
    _on(machine("laptop"), monkeypatch)
    assert main(["reports", "verify"]) == 0
    out = capsys.readouterr().out
    root = Path(machine("laptop")["PGRUNBOOK_REPORTS_DIR"])
    assert main(["reports", "site"]) == 0
    lines = [json.loads(x) for x in (root / "index.jsonl").read_text().splitlines()]
    assert f"OK: {2 * len(lines)} files checked" in out
    assert f"{2 * len(lines)} reports fetched from s3://" in capsys.readouterr().err
    health = sorted(e["target"] for e in lines if e["runbook"] == "health")
    assert health == ["production", "staging"]
    assert len({e["fleet"] for e in lines if e["runbook"] == "health"}) == 2  # one run each
    page = (root / "index.html").read_text()
    assert all(e["id"] in page for e in lines)  # every worker's run listed
    assert main(["reports", "site"]) == 0  # again: nothing to fetch
    assert "0 reports fetched" in capsys.readouterr().err
    for key, blob in s3server.objects(bucket).items():
        assert KEY.encode() not in blob and b"<html" not in blob.lower(), key


def test_the_bucket_out_of_reach_refuses_the_run_before_it_starts(
    sandbox, shared, monkeypatch, tmp_path, capsys
):
    _, machine = shared
    _on(machine("cut-off"), monkeypatch)
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:1")
    assert main(["run", "health", "-t", "staging", "--quiet"]) == 3
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "127.0.0.1:1" in err[0] and "is the object store up" in err[0]
    assert not list(Path(machine("cut-off")["PGRUNBOOK_REPORTS_DIR"]).rglob("*.ipynb"))


def test_runners_thrown_away_after_each_job_share_what_was_alerted(
    sandbox, shared, s3server, monkeypatch, tmp_path
):
    """Alert state lives with the shared archive: a CRIT alerted by one runner is not sent again
    by the next runner on a fresh disk, and that runner's OK resolves it."""
    import psycopg

    from pgrunbook.archive import runner

    from .receivers import Webhook

    bucket, machine = shared
    with Webhook() as hook:
        config = tmp_path / "alerts.toml"
        config.write_text('[notify.channels.ops]\nurl_env = "OPS_HOOK"\n')
        monkeypatch.setenv("PGRUNBOOK_CONFIG", str(config))
        monkeypatch.setenv("OPS_HOOK", hook.url("ops"))
        with psycopg.connect(sandbox.url("staging")):  # the app's session fills a pool of one
            for n in (1, 2):
                _on(machine(f"job-{n}"), monkeypatch)  # each job a new runner, a new disk
                runner.run("health", "staging", {"pool_limit": "1"}, progress=False)
        assert len(hook.posts) == 1 and hook.posts[0]["title"].startswith("[CRIT] health")
        _on(machine("job-3"), monkeypatch)
        runner.run("health", "staging", {"pool_limit": "1"}, progress=False)
        assert len(hook.posts) == 2 and "RESOLVED connections" in hook.posts[1]["message"]
    assert any("/alerts/state/" in k for k in s3server.objects(bucket))


def test_a_report_the_store_could_not_take_goes_up_later_and_verify_names_it_meanwhile(
    sandbox, shared, s3server, monkeypatch, capsys
):
    """The store killed while a run goes (before its report goes up): the run says its report
    is kept here; verify against the bucket is FAILED naming it; once the store is back the
    next run (or `reports push`) sends it, and verify is OK."""
    import threading
    import time

    from pgrunbook.archive import runner
    from pgrunbook.base import config
    from pgrunbook.base.errors import ArchiveFailed

    _, machine = shared
    _on(machine("flaky"), monkeypatch)
    out: dict = {}

    def run() -> None:
        try:
            out["result"] = runner.run("status", "staging", progress=False)
        except BaseException as e:  # noqa: BLE001 - what the run raised is the subject
            out["error"] = e

    worker = threading.Thread(target=run)
    running = config.settings().state_dir / "running"
    before = set(running.glob("*")) if running.is_dir() else set()
    worker.start()
    deadline = time.monotonic() + 120
    while not (set(running.glob("*status*")) - before):
        assert time.monotonic() < deadline, "the run never started"
        time.sleep(0.05)
    s3server.kill()
    worker.join(300)
    s3server.start()
    assert isinstance(out.get("error"), ArchiveFailed), out
    assert "reports push" in str(out["error"])
    capsys.readouterr()
    assert _once_up(lambda: main(["reports", "verify"])) == 2
    said = capsys.readouterr().out
    assert "not in the shared archive yet: status/" in said, said
    assert main(["reports", "push"]) == 0
    assert main(["reports", "verify"]) == 0
    assert "OK: 2 files checked" in capsys.readouterr().out


def test_reports_indexed_before_the_archive_was_shared_go_up_with_the_first_shared_run(
    sandbox, shared, monkeypatch, tmp_path, capsys
):
    """Turning the bucket archive on keeps this host's earlier runs: they join the chain (none
    is left 'unindexed' in the local folder), and both verifies are OK."""
    _, machine = shared
    here = machine("before")
    script = tmp_path / "append.py"
    script.write_text(APPENDER)
    local = {k: v for k, v in here.items() if k != "PGRUNBOOK_REPORTS"}  # not shared yet
    done = subprocess.run([sys.executable, str(script), "1", "3"], env=local)
    assert done.returncode == 0
    _on(here, monkeypatch)
    from pgrunbook.archive import runner

    result = runner.run("status", "staging", progress=False)
    assert result.exit_code in (0, 1)
    assert main(["reports", "verify"]) == 0
    assert "OK: 8 files checked against the chain" in capsys.readouterr().out
    monkeypatch.delenv("PGRUNBOOK_REPORTS")  # the local folder, verified on its own
    assert main(["reports", "verify"]) == 0, capsys.readouterr().out


def _once_up(call, seconds: float = 60):
    import time

    deadline = time.monotonic() + seconds
    while True:
        try:
            code = call()
        except Exception:  # noqa: BLE001 - the restarted store comes back a little later
            code = 3
        if code != 3 or time.monotonic() > deadline:
            return code
        time.sleep(0.5)

"""Reliability under faults: concurrent runs, crashes at chosen moments, private files, atomic
records."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from tests.conftest import assert_charts_drawn, databases, fill, written_files

ROOT = Path(__file__).resolve().parents[1]
PGRUNBOOK = str(Path(sys.executable).with_name("pgrunbook"))


def _private_env(tmp_path: Path, tmp: Path | None = None) -> dict[str, str]:
    return {
        **os.environ,
        "PGRUNBOOK_REPORTS_DIR": str(tmp_path / "reports"),
        "PGRUNBOOK_BACKUPS_DIR": str(tmp_path / "backups"),
        "TMPDIR": str(tmp or tmp_path / "tmp"),
    }


@pytest.fixture
def short_tmp():
    """A temp folder short enough to hold the kernels' Unix sockets itself (pytest's tmp_path
    under a worker is not), so that what the runs leave in it can be checked."""
    import shutil
    import tempfile

    folder = Path(tempfile.mkdtemp(prefix="pgrb-t-", dir="/tmp"))
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


def test_a_temp_folder_too_long_for_a_socket_still_runs(sandbox, tmp_path):
    """ZeroMQ refuses a Unix socket whose path passes ~107 bytes: with TMPDIR that long, the
    run's sockets go to a private folder of /tmp, and it is removed afterwards."""
    from pgrunbook.base import fileio

    deep = tmp_path / ("d" * 60) / ("e" * 40)
    deep.mkdir(parents=True)
    env = _private_env(tmp_path, deep)
    done = subprocess.run(
        [PGRUNBOOK, "run", "health", "--target", "sandbox", "--no-progress"],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode in (0, 1), done.stdout[-2000:] + done.stderr[-2000:]
    assert "FAILED" not in done.stdout
    assert not list(deep.iterdir())
    import tempfile

    old = tempfile.tempdir
    tempfile.tempdir = str(deep)
    try:
        folder = fileio.socket_dir("pgrb-k-", "kernel-99")
    finally:
        tempfile.tempdir = old
    try:
        assert folder.startswith("/tmp/pgrb-k-") and os.stat(folder).st_mode & 0o777 == 0o700
        assert len(os.path.join(folder, "kernel-99")) <= fileio.SOCKET_PATH_MAX
    finally:
        os.rmdir(folder)
    assert not list(deep.iterdir())


def _finish(proc: subprocess.Popen, name: str, timeout: float = 600) -> tuple[int, str]:
    """A started run's exit code and output, read as it comes (a full pipe never stalls it);
    one that outlives `timeout` is killed and its output shown."""
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
        pytest.fail(f"{name} still running after {timeout:g} s; its output:\n{out[-3000:]}")
    return proc.returncode, out


def test_eight_runs_together_all_pass_leave_no_socket_and_write_only_private_files(
    sandbox, tmp_path, short_tmp
):
    """Eight runs of different runbooks started at once, under the common umask 022."""
    runs = [
        ("backup", ["-p", "format", "custom"]),
        ("health", ["-p", "json_file", str(tmp_path / "out" / "h.json")]),
        ("integrity", ["-p", "checks", "fk,sequences"]),
        ("security", []),
        ("performance", ["-p", "explain", "false"]),
        ("migrate", []),
        ("staging_refresh", []),
        ("status", []),
    ]
    env = _private_env(tmp_path, short_tmp)
    loose = lambda: os.umask(0o022)  # noqa: E731  the common default: files 0644, folders 0755
    procs = []
    for runbook, extra in runs:
        target = ["--target", "staging" if runbook == "staging_refresh" else "sandbox"]
        procs.append(
            subprocess.Popen(
                [PGRUNBOOK, "run", runbook, *target, *extra, "--no-progress"],
                env=env,
                preexec_fn=loose,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
        )
    outputs = [_finish(p, runbook) for p, (runbook, _) in zip(procs, runs, strict=True)]
    failed = [
        (name, code, out[-600:])
        for (name, _), (code, out) in zip(runs, outputs, strict=True)
        if code not in (0, 1) or "FAILED" in out
    ]
    assert not failed
    assert not list((ROOT / "runbooks").glob("kernel-ipc-*"))
    assert not list(short_tmp.iterdir())  # no socket folder, no temporary file left behind
    files = written_files(tmp_path / "reports", tmp_path / "backups", tmp_path / "out")
    assert any(f.name == "dump.custom" for f in files) and any(
        f.name == "verify.json" for f in files
    )
    reports_html = [f for f in files if f.suffix == ".html" and f.name != "index.html"]
    assert len(reports_html) == 8  # and the archive's front page beside them
    for runbook in ("health", "security", "performance"):  # the charts are images, not text
        (report,) = (tmp_path / "reports" / runbook).glob("*.ipynb")
        assert_charts_drawn(report, report.with_suffix(".html"))
    loose_files = [f"{f} {f.stat().st_mode & 0o777:o}" for f in files if f.stat().st_mode & 0o077]
    folders = [
        p
        for root in ("reports", "backups")
        for p in [tmp_path / root, *(tmp_path / root).rglob("*")]
        if p.is_dir()
    ]
    loose_folders = [
        f"{d} {d.stat().st_mode & 0o777:o}" for d in folders if d.stat().st_mode & 0o077
    ]
    assert not loose_files and not loose_folders


def test_a_killed_run_leaves_nothing_unredacted_in_the_archive(sandbox, tmp_path):
    import signal
    import time

    env = {**_private_env(tmp_path), "PGRUNBOOK_STATE_DIR": os.environ["PGRUNBOOK_STATE_DIR"]}
    proc = subprocess.Popen(
        [PGRUNBOOK, "run", "performance", "--target", "sandbox", "--no-progress"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    running = Path(os.environ["PGRUNBOOK_STATE_DIR"]) / "running"
    try:
        for _ in range(600):  # until papermill has written the executing notebook
            work = (
                [p for p in running.glob("*performance*") if p.stat().st_size > 0]
                if running.exists()
                else []
            )
            if work:
                break
            time.sleep(0.1)
        assert work, "the run never wrote its working copy"
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert work[0].stat().st_mode & 0o077 == 0 and running.stat().st_mode & 0o077 == 0
    archived = [p for p in written_files(tmp_path / "reports") if not p.name.startswith(".")]
    assert archived == []  # no report, empty or not: only its name's hidden claim
    # the archive stays true, and cleanup names and removes the claim and the working copy
    pgrb = lambda *a: subprocess.run([PGRUNBOOK, *a], env=env, capture_output=True, text=True)  # noqa: E731
    assert pgrb("reports", "verify").returncode == 0
    listed = pgrb("cleanup", "--target", "sandbox")
    assert "report claim" in listed.stdout and str(work[0]) in listed.stdout, listed.stdout
    assert pgrb("cleanup", "--target", "sandbox", "--apply").returncode == 0
    assert not work[0].exists() and not list((tmp_path / "reports").rglob("*.claim"))
    # an empty report an earlier version left is named and removed too
    empty = tmp_path / "reports" / "performance" / "20260101T000000Z_sandbox.ipynb"
    empty.touch()
    assert pgrb("reports", "verify").returncode != 0
    assert "empty report" in pgrb("cleanup", "--target", "sandbox").stdout
    pgrb("cleanup", "--target", "sandbox", "--apply")
    assert not empty.exists() and pgrb("reports", "verify").returncode == 0


def _users(url: str) -> int:
    with psycopg.connect(url) as conn:
        return conn.execute("SELECT count(*) FROM users").fetchone()[0]


@pytest.mark.parametrize("spelling", ["same URL", "key=value"])
def test_a_target_reaching_a_protected_database_is_protected_too(
    sandbox, monkeypatch, reports_dir, spelling, capsys
):
    from psycopg.conninfo import conninfo_to_dict, make_conninfo

    from pgrunbook.base import targets
    from pgrunbook.cli import main

    url = sandbox.url("sandbox")  # production configured onto the playground's database
    monkeypatch.setenv(
        "DATABASE_URL", url if spelling == "same URL" else make_conninfo(**conninfo_to_dict(url))
    )
    assert (
        targets.resolve("sandbox").protected
        and targets.resolve("sandbox").protected_as == "production"
    )
    before, files = _users(url), sorted(reports_dir.rglob("*"))
    for argv in (
        ["migrations", "reset", "--target", "sandbox"],
        ["seed", "--target", "sandbox", "--mode", "development", "--users", "10"],
        ["run", "seed", "--target", "sandbox", "-p", "mode", "development", "--no-progress"],
        ["run", "dr_drill", "--target", "sandbox", "--no-progress"],
        [
            "run",
            "migrate",
            "--target",
            "sandbox",
            "-p",
            "mode",
            "resolve",
            "-p",
            "stamp",
            "0001",
            "--no-progress",
        ],
    ):
        assert main(argv) == 3, argv
        assert "protected" in capsys.readouterr().err, argv
    assert _users(url) == before and sorted(reports_dir.rglob("*")) == files
    monkeypatch.delenv(
        "DATABASE_URL"
    )  # production is then the sandbox's simulation: sandbox is not protected
    assert not targets.resolve("sandbox").protected


@pytest.mark.parametrize(
    "argv, words",
    [
        (["-p", "json_file", "{reports}/index.jsonl"], "inside the archive"),
        (["-p", "prometheus_file", "{backups}/x.prom"], "inside the backups"),
        (["-p", "json_file", "../reports/index.jsonl"], "is relative"),
        (["-p", "json_file", "/tmp"], "is a folder"),
    ],
)
def test_an_output_file_never_lands_on_the_archive(sandbox, reports_dir, capfd, argv, words):
    from pgrunbook.archive import reports
    from pgrunbook.cli import main

    assert main(["run", "status", "--target", "sandbox", "--no-progress"]) in (0, 1)
    capfd.readouterr()
    index = reports_dir / "index.jsonl"
    before = index.read_bytes()
    argv = [
        a.format(reports=reports_dir, backups=os.environ["PGRUNBOOK_BACKUPS_DIR"]) for a in argv
    ]
    assert main(["run", "health", "--target", "sandbox", *argv, "--no-progress"]) == 3
    err = capfd.readouterr().err.strip().splitlines()
    assert len(err) == 1 and words in err[0], err
    assert index.read_bytes() == before and reports.verify().ok


def test_a_full_archive_after_a_change_is_exit_2_naming_the_change(
    sandbox, tmp_path, monkeypatch, capfd
):
    from pgrunbook.cli import main
    from pgrunbook.facts import backups
    from tests.test_backups import _small_filesystem

    small = tmp_path / "reports"
    monkeypatch.setenv("PGRUNBOOK_REPORTS_DIR", str(small))
    monkeypatch.setenv("PGRUNBOOK_BACKUPS_DIR", str(tmp_path / "backups"))
    with _small_filesystem(small, 256):
        if not os.path.ismount(small):
            pytest.skip("needs root to mount a small filesystem")
        (small / "backup").mkdir()
        fill(small)
        code = main(
            ["run", "backup", "--target", "sandbox", "-p", "format", "custom", "--no-progress"]
        )
        err = capfd.readouterr().err
    made = backups.all_backups("sandbox")
    assert code == 2 and len(made) == 1 and made[0].verified  # the change happened, and is said
    assert "could not be archived (No space left on device)" in err and made[0].id in err
    kept = Path(err.split("kept at ")[1].split(";")[0])
    assert kept.exists() and kept.stat().st_size > 0
    kept.unlink()


def test_a_killed_backup_ends_its_children_and_its_debris_is_named_then_removed(
    sandbox, tmp_path, monkeypatch
):
    import signal
    import time

    import psutil

    from pgrunbook.base import targets
    from pgrunbook.procedures import debris

    t = targets.resolve("sandbox")
    reports_dir = (
        tmp_path / "reports"
    )  # its own archive: the killed run's reserved report stays there
    monkeypatch.setenv("PGRUNBOOK_REPORTS_DIR", str(reports_dir))
    blocker = psycopg.connect(sandbox.url("sandbox"))
    blocker.execute("LOCK TABLE reviews IN ACCESS EXCLUSIVE MODE")  # pg_dump waits here, mid-backup
    runner = subprocess.Popen(
        [PGRUNBOOK, "run", "backup", "--target", "sandbox", "--no-progress"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        for _ in range(600):
            dumps = [
                p
                for p in psutil.Process(runner.pid).children(recursive=True)
                if p.name() == "pg_dump"
            ]
            if dumps:
                break
            time.sleep(0.1)
        assert dumps, "pg_dump never started"
        runner.send_signal(signal.SIGKILL)  # the runner alone: its kernel and pg_dump must follow
        runner.wait()
        gone, alive = psutil.wait_procs(dumps, timeout=30)
        assert alive == []
    finally:
        blocker.rollback()
        blocker.close()
    with psycopg.connect(
        sandbox.url("postgres"), autocommit=True
    ) as conn:  # what killed restores leave
        for name in (
            "sandbox_restore_20260101000000",
            "pgrb_verify_20260101t000000z",
            "sandbox_pre_restore_20991231000000",
            "sandbox_restored_20200101000000",
        ):
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        for _ in range(100):  # the kernel ends a moment after its runner
            left = {d.kind for d in debris.find(t)}
            if "backup folder" in left:
                break
            time.sleep(0.1)
        assert left == {"database", "backup folder", "working notebook", "report claim"}
        from pgrunbook.cli import main

        assert main(["run", "status", "--target", "sandbox", "--no-progress"]) == 1
        said = [f for f in runner_findings(reports_dir, "status") if f["check"] == "debris"][0]
        assert said["status"] == "WARN" and "sandbox_restore_20260101000000" in " ".join(
            said["examples"]
        )
        assert main(["cleanup", "--target", "sandbox", "--apply"]) == 0
        assert debris.find(t) == []
        assert "sandbox_pre_restore_20991231000000" in databases(
            sandbox.url("postgres")
        )  # within its hours
        assert "sandbox_restored_20200101000000" not in databases(
            sandbox.url("postgres")
        )  # past them
    finally:
        with psycopg.connect(sandbox.url("postgres"), autocommit=True) as conn:
            for name in (
                "sandbox_restore_20260101000000",
                "pgrb_verify_20260101t000000z",
                "sandbox_pre_restore_20991231000000",
                "sandbox_restored_20200101000000",
            ):
                conn.execute(sql.SQL("DROP DATABASE IF EXISTS {}").format(sql.Identifier(name)))


def runner_findings(reports_dir: Path, runbook: str) -> list[dict]:
    """The findings of the newest archived run of `runbook`."""
    newest = max((reports_dir / runbook).glob("*.ipynb"), key=lambda p: p.stat().st_mtime)
    return json.loads(newest.read_text())["metadata"]["pgrunbook"]["findings"]

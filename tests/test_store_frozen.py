"""An object store that stops answering (SIGSTOP: a hung network, an overloaded gateway, as it
looks from here) in the middle of a backup and of a restore: each gives up within a bound the
docs state (PGRUNBOOK_STORE_TIMEOUT_S), says so in one line, and leaves no pg_dump, pg_restore
or database behind; the next backup, with the store back, removes what stayed in the bucket."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time

import psycopg
import pytest

from pgrunbook.archive import runner
from pgrunbook.base import db
from pgrunbook.base.errors import PgRunbookError
from pgrunbook.facts import backups
from pgrunbook.procedures import dumps, restore

TIMEOUT_S = 2  # the store's answer timeout in these tests; 3 attempts with backoff each call


def _frozen(s3server, until, *, seconds: float = 240):
    """Run until `until()` is true, then stop the store (SIGSTOP) and give (when it was stopped);
    `thaw` it after."""
    deadline = time.monotonic() + seconds
    while not until():
        assert time.monotonic() < deadline, "the moment to freeze never came"
        time.sleep(0.05)
    os.killpg(s3server.proc.pid, signal.SIGSTOP)
    return time.monotonic()


def _thaw(s3server) -> None:
    os.killpg(s3server.proc.pid, signal.SIGCONT)


def _sessions(target, like: str) -> list[str]:
    with psycopg.connect(db.with_database(target.url, "postgres")) as conn:
        return [
            r[0]
            for r in conn.execute(
                "SELECT application_name FROM pg_stat_activity WHERE application_name LIKE %s"
                " AND pid <> pg_backend_pid()",
                (like,),
            )
        ]


def _databases(target) -> set[str]:
    with psycopg.connect(db.with_database(target.url, "postgres")) as conn:
        return {r[0] for r in conn.execute("SELECT datname FROM pg_database")}


def _in_thread(fn):
    out: dict = {}

    def go() -> None:
        try:
            out["value"] = fn()
        except BaseException as e:  # noqa: BLE001 - what the run raised is the subject
            out["error"] = e
        out["at"] = time.monotonic()

    worker = threading.Thread(target=go, daemon=True)
    worker.start()
    return worker, out


BACKUP = """
from pgrunbook.base import targets
from pgrunbook.procedures import dumps, offsite
offsite.PART = 5 * 2**20
dumps.create(targets.resolve("staging"))
"""


def test_a_frozen_store_fails_a_backup_within_its_bound_and_leaves_nothing_running(
    ballast, s3server, bucket
):
    """A backup run of its own (a process, as cron or a CI job starts one)."""
    staging = ballast
    client = s3server.client()
    env = {**os.environ, "PGRUNBOOK_STORE_TIMEOUT_S": str(TIMEOUT_S)}
    proc = subprocess.Popen(
        [sys.executable, "-c", BACKUP], env=env, stderr=subprocess.PIPE, text=True
    )

    def uploading() -> bool:
        page = client.list_objects_v2(Bucket=bucket, Prefix="fixia/backups/")
        return any("/part-" in o["Key"] for o in page.get("Contents", []))

    stopped = _frozen(s3server, uploading)
    try:
        try:
            err = proc.communicate(timeout=180)[1]
        except subprocess.TimeoutExpired:
            proc.kill()
            pytest.fail("the backup still waits on a frozen store")
        took = time.monotonic() - stopped
        line = err.strip().splitlines()[-1]
        assert proc.returncode != 0 and "no answer after 3 attempts" in line, err[-2000:]
        assert took < 90, took  # 3 attempts of 2 s, backoff, and no wait to clean up
        assert _sessions(staging, "pg_dump%") == [] and _sessions(staging, "pgrunbook%") == []
    finally:
        _thaw(s3server)
    # the store back: the next backup run removes what the failed one left, and names it
    left = {k.split("/")[3] for k in s3server.objects(bucket) if "/backups/" in k}
    assert left
    result = runner.run("backup", "staging", progress=False)
    assert result.exit_code == 0, [str(f) for f in result.findings]
    said = " ".join(str(f) for f in result.findings)
    assert all(backup_id in said for backup_id in left), said
    [made] = backups.all_backups(staging)
    leftovers = [k for k in s3server.objects(bucket) if "/backups/" in k and made.id not in k]
    assert leftovers == [], leftovers


def test_a_frozen_store_fails_a_restore_within_its_bound_and_drops_what_it_made(
    ballast, s3server, bucket, monkeypatch
):
    monkeypatch.setattr("pgrunbook.procedures.offsite.PART", 5 * 2**20)
    staging = ballast
    backup = dumps.create(staging)
    assert len(backup.manifest["parts"]) >= 4, backup.manifest["parts"]
    monkeypatch.setenv("PGRUNBOOK_STORE_TIMEOUT_S", str(TIMEOUT_S))
    before = _databases(staging)
    worker, out = _in_thread(lambda: restore.restore(staging, backups.find(staging, backup.id)))
    stopped = _frozen(s3server, lambda: len(_databases(staging) - before) > 0)
    try:
        worker.join(180)
        assert not worker.is_alive(), "the restore still waits on a frozen store"
        took = out["at"] - stopped
        assert isinstance(out.get("error"), PgRunbookError), out
        error = str(out["error"])
        assert "no answer after 3 attempts" in error or "not tried" in error, error
        assert took < 90, took
        assert _databases(staging) == before  # the partial copy was dropped
        assert _sessions(staging, "pg_restore%") == []
    finally:
        _thaw(s3server)

"""Swaps that survive a crash at every step, keep the database's own properties, and one at a
time."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid

import psycopg
import pytest
from psycopg import sql

from pgrunbook.base import db
from pgrunbook.base.findings import Status
from pgrunbook.base.targets import Target
from pgrunbook.procedures import swaps
from tests.conftest import forget_roles, make_roles

STEPS = [
    "journal written",
    "properties copied",
    "connections off",
    "sessions ended",
    "inside the renaming transaction",
    "renamed",
]
SWAP = """
import sys
from pgrunbook.procedures import swaps
from pgrunbook.base.targets import Target
url, new, kept = sys.argv[1:4]
swaps.swap(Target("scratch", url, sandbox=True, source="test"), new, kept, operation="restore")
"""


def _admin(target: Target) -> psycopg.Connection:
    return psycopg.connect(db.with_database(target.url, "postgres"), autocommit=True)


def _marker(target: Target, database: str) -> str:
    with psycopg.connect(db.with_database(target.url, database)) as conn:
        return conn.execute("SELECT v FROM marker").fetchone()[0]


@pytest.fixture
def pair(scratch):
    """The target (marker 'old', with database-level properties) and a copy to swap in (marker
    'new')."""
    tag = uuid.uuid4().hex[:6]
    new, kept = f"{scratch.database}_new", f"{scratch.database}_kept"
    role = f"pgrb_reader_{tag}"
    make_roles(scratch.url, role)
    with _admin(scratch) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(new)))
        ident = sql.Identifier(scratch.database)
        conn.execute(sql.SQL("REVOKE CONNECT, TEMPORARY ON DATABASE {} FROM PUBLIC").format(ident))
        conn.execute(
            sql.SQL("GRANT CONNECT ON DATABASE {} TO {}").format(ident, sql.Identifier(role))
        )
        conn.execute(sql.SQL("COMMENT ON DATABASE {} IS 'orders, EU region'").format(ident))
        conn.execute(sql.SQL("ALTER DATABASE {} CONNECTION LIMIT 40").format(ident))
        conn.execute(sql.SQL("ALTER DATABASE {} SET work_mem TO '64MB'").format(ident))
        conn.execute(
            sql.SQL('ALTER DATABASE {} SET search_path TO "$user", app, public').format(ident)
        )
        conn.execute(
            sql.SQL("ALTER ROLE {} IN DATABASE {} SET statement_timeout TO '5s'").format(
                sql.Identifier(role), ident
            )
        )
    for database, value in ((scratch.database, "old"), (new, "new")):
        with psycopg.connect(db.with_database(scratch.url, database), autocommit=True) as conn:
            conn.execute("CREATE TABLE marker (v text)")
            conn.execute("INSERT INTO marker VALUES (%s)", [value])
    yield scratch, new, kept
    with _admin(scratch) as conn:
        for name in (new, kept):
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )
        conn.execute(
            sql.SQL("ALTER DATABASE {} WITH ALLOW_CONNECTIONS true").format(
                sql.Identifier(scratch.database)
            )
        )
    forget_roles(scratch.url, role)
    swaps.journal_path(scratch).unlink(missing_ok=True)


def test_a_swap_keeps_owner_grants_settings_comment_and_limit(pair):
    target, new, kept = pair
    with _admin(target) as conn:
        before = swaps.properties(conn, target.database)
    found = swaps.swap(target, new, kept, operation="restore")
    assert found.status is Status.OK, found.summary
    with _admin(target) as conn:
        after = swaps.properties(conn, target.database)
    assert after.same_as(before) == []
    assert "PUBLIC CONNECT" not in " ".join(after.grants)  # a REVOKE CONNECT FROM PUBLIC survives
    assert any("search_path" in s for s in after.settings) and after.comment == "orders, EU region"
    assert _marker(target, target.database) == "new" and _marker(target, kept) == "old"
    assert not swaps.journal_path(target).exists()


@pytest.mark.parametrize("step", STEPS)
def test_a_swap_killed_at_each_step_is_recovered_by_the_next_run(pair, step, server, sandbox):
    target, new, kept = pair
    if server != sandbox.url("postgres") and step not in (
        "connections off",
        "inside the renaming transaction",
    ):
        pytest.skip(
            "each step on the embedded server; the two that leave the server mid-change on both"
        )
    done = subprocess.run(
        [sys.executable, "-c", SWAP, target.url, new, kept],
        capture_output=True,
        text=True,
        env={**os.environ, swaps.INJECT_ENV: step},
        timeout=120,
    )
    assert done.returncode == -signal.SIGKILL, done.stderr
    assert swaps.journal_path(target).exists()
    message = swaps.recover(target)
    finished = step == "renamed"
    assert ("completed" if finished else "rolled back") in message
    assert _marker(target, target.database) == (
        "new" if finished else "old"
    )  # accepts connections again
    assert _marker(target, kept if finished else new) == (
        "old" if finished else "new"
    )  # nothing lost
    with _admin(target) as conn:
        assert conn.execute(
            "SELECT bool_and(datallowconn) FROM pg_database WHERE datname = ANY(%s)",
            [[target.database, new, kept]],
        ).fetchone()[0]
    assert not swaps.journal_path(target).exists()
    assert swaps.recover(target) is None


def test_a_swap_killed_while_its_rename_waits_for_a_lock_is_rolled_back(pair):
    target, new, kept = pair
    holder = _admin(target)
    holder.execute("BEGIN")
    holder.execute(
        sql.SQL("COMMENT ON DATABASE {} IS 'held'").format(sql.Identifier(target.database))
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", SWAP, target.url, new, kept], stderr=subprocess.PIPE
    )
    try:
        with _admin(target) as conn:
            for _ in range(200):
                if conn.execute(
                    "SELECT 1 FROM pg_stat_activity WHERE application_name = 'pgrunbook/swap'"
                    " AND wait_event_type = 'Lock'"
                ).fetchone():
                    break
                time.sleep(0.1)
            else:
                pytest.fail("the swap never waited for the lock")
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    with pytest.raises(psycopg.OperationalError, match="not currently accepting connections"):
        _marker(target, target.database)  # what the crash left: the target refusing connections
    assert "rolled back" in swaps.recover(target)
    assert _marker(target, target.database) == "old" and _marker(target, new) == "new"


def test_the_runner_recovers_before_it_connects_and_the_report_says_so(sandbox, tmp_path):
    from pgrunbook.base import targets

    staging = targets.resolve("staging")
    new, kept = "staging_swaptest_new", "staging_swaptest_kept"
    with _admin(staging) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(new)))
    try:
        done = subprocess.run(
            [
                sys.executable,
                "-c",
                SWAP.replace(
                    'Target("scratch", url, sandbox=True, source="test")',
                    'targets.resolve("staging")',
                ).replace("import sys\n", "import sys\nfrom pgrunbook.base import targets\n"),
                staging.url,
                new,
                kept,
            ],
            env={**os.environ, swaps.INJECT_ENV: "connections off"},
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == -signal.SIGKILL, done.stderr
        run = subprocess.run(
            [
                str(sys.executable).replace("python", "pgrunbook"),
                "run",
                "status",
                "--target",
                "staging",
                "--no-progress",
            ],
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert run.returncode in (0, 1), run.stderr
        assert "rolled back" in run.stderr
        report = [line for line in run.stdout.splitlines() if line.strip().startswith("report:")][0]
        meta = json.load(open(report.split(":", 1)[1].strip()))["metadata"]["pgrunbook"]
        swap = [f for f in meta["findings"] if f["check"] == "unfinished swap"][0]
        assert swap["status"] == "WARN" and "rolled back" in swap["summary"]
    finally:
        with _admin(staging) as conn:
            conn.execute("ALTER DATABASE staging WITH ALLOW_CONNECTIONS true")
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(new))
            )


def test_a_second_restore_of_a_busy_target_is_refused_before_it_starts(sandbox, reports_dir):
    from pgrunbook.base import targets

    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            (
                "import sys, time\nfrom pgrunbook.base import targets\nfrom pgrunbook.procedures"
                " import swaps\nwith swaps.exclusive(targets.resolve('sandbox'), 'restore of X'):\n"
                "    print('held', flush=True); time.sleep(60)"
            ),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        before = sorted(reports_dir.rglob("*"))
        run = subprocess.run(
            [
                str(sys.executable).replace("python", "pgrunbook"),
                "run",
                "restore",
                "--target",
                "sandbox",
                "--no-progress",
            ],
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert run.returncode == 3
        assert (
            "busy: restore of X by pid" in run.stderr and len(run.stderr.strip().splitlines()) == 1
        )
        assert sorted(reports_dir.rglob("*")) == before
        with pytest.raises(swaps.Busy):
            with swaps.exclusive(targets.resolve("sandbox"), "restore"):
                pass
    finally:
        holder.kill()
        holder.wait()
    assert swaps.busy(targets.resolve("sandbox")) is None  # the kernel released it with its holder

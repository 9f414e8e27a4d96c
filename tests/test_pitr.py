"""Point-in-time recovery on a cluster of its own: archiving, base backups, restore to a moment,
the drill's point-in-time disaster, and the faults (a segment missing, a corrupted base backup,
a full archive disk, a moment before the oldest base backup, a server out of reach)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from datetime import datetime
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from pgrunbook.archive import runner
from pgrunbook.base import db
from pgrunbook.base.findings import Status
from pgrunbook.base.targets import Target
from pgrunbook.checks import health
from pgrunbook.cli import main
from pgrunbook.facts import history, wal
from pgrunbook.procedures import moments, pitr
from pgrunbook.procedures.sandbox import Sandbox

from .conftest import EXTERNAL, unreadable


@pytest.fixture(scope="module")
def box(tmp_path_factory):
    """An embedded cluster of the sandbox's making (archiving on from the start), as target
    `box` (its staging database), so that its faults touch no other test."""
    cluster = Sandbox(tmp_path_factory.mktemp("pitr") / "sandbox")
    cluster.ensure(demo_users=100)
    config = tmp_path_factory.mktemp("pitrconf") / "pitr.toml"
    config.write_text('[targets.box]\nurl_env = "PITR_BOX_URL"\n')
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PITR_BOX_URL", cluster.url("staging"))
        mp.setenv("PGRUNBOOK_CONFIG", str(config))
        yield cluster
    cluster.stop()


@pytest.fixture
def target(box) -> Target:
    return Target("box", box.url("staging"))


def _sql(target: Target, query: str, *args):
    with psycopg.connect(target.url, autocommit=True) as conn:
        cur = conn.execute(query, args or None)
        return cur.fetchone() if cur.description else None


def _now(target: Target) -> datetime:
    return _sql(target, "SELECT clock_timestamp()")[0]


def _restored_clusters(server: pitr.Server) -> list[Path]:
    return [p for p in (server.root / "restores").glob("*/data")]


def _set_archive_command(target: Target, folder: Path) -> None:
    command = sql.SQL("ALTER SYSTEM SET archive_command = {}").format(
        sql.Literal(pitr.archive_command(folder))
    )
    with psycopg.connect(target.url, autocommit=True) as conn:
        conn.execute(command)
        conn.execute("SELECT pg_reload_conf()")


def _archived(target: Target) -> str:
    """Close the current segment and wait until it is archived."""
    segment = pitr.switch_and_wait(target)
    assert segment, "the segment was not archived"
    return segment


def test_the_pitr_runbook_then_a_restore_to_a_moment_brings_a_dropped_table_back(target):
    result = runner.run("pitr", "box", progress=False)
    assert result.exit_code == 0, [str(f) for f in result.findings]
    by = {f.check: f for f in result.findings}
    assert "on, into" in by["archiving"].summary and by["wal archiving"].status is Status.OK
    assert "verified by pg_verifybackup" in by["base backup"].summary
    assert unreadable(result.html) == []
    server = pitr.locate(target)
    assert wal.base_backups(server.root)

    _sql(
        target, "CREATE TABLE ledger (id int PRIMARY KEY, at timestamptz DEFAULT clock_timestamp())"
    )
    for n in range(30):
        _sql(target, "INSERT INTO ledger (id) VALUES (%s)", n)
    moment = _now(target)
    for n in range(30, 40):  # after the moment: must not come back
        _sql(target, "INSERT INTO ledger (id) VALUES (%s)", n)
    reviews = _sql(target, "SELECT count(*) FROM reviews")[0]
    _sql(target, "DROP TABLE reviews CASCADE")

    result = runner.run(
        "pitr_restore", "box", {"to_time": moment.isoformat(), "copy_table": "reviews"},
        progress=False,
    )  # fmt: skip
    assert result.exit_code == 0, [str(f) for f in result.findings]
    by = {f.check: f for f in result.findings}
    assert "stopped before commit" in by["moment reached"].summary
    assert unreadable(result.html) == []
    assert by["amcheck"].status is Status.OK and by["foreign keys"].status is Status.OK
    assert _sql(target, "SELECT count(*) FROM reviews")[0] == reviews  # back, whole
    assert _restored_clusters(server) == []  # stopped and removed; the running one untouched
    assert _sql(target, "SELECT count(*) FROM ledger")[0] == 40

    # the same moment by the library, left running: exactly the rows committed before it
    recovered = moments.restore(target, server, moments.Moment.parse(time=moment.isoformat()))
    try:
        with psycopg.connect(recovered.url("staging")) as conn:
            assert conn.execute("SELECT count(*), max(id) FROM ledger").fetchone() == (30, 29)
        assert recovered.timeline_id and recovered.timeline_id >= 2
    finally:
        recovered.stop()


def test_restore_to_an_lsn_a_restore_point_and_a_transaction(target):
    server = pitr.locate(target)
    pitr.take_base_backup(target, server, label="moments")
    _sql(target, "CREATE TABLE steps (n int)")
    _sql(target, "INSERT INTO steps VALUES (1)")
    lsn = _sql(target, "SELECT pg_current_wal_lsn()::text")[0]
    _sql(target, "INSERT INTO steps VALUES (2)")
    pitr.restore_point(target, server, "after-two")
    with psycopg.connect(target.url, autocommit=False) as conn:
        conn.execute("INSERT INTO steps VALUES (3)")
        xid = conn.execute("SELECT pg_current_xact_id()::text").fetchone()[0]
    _sql(target, "INSERT INTO steps VALUES (4)")
    for moment, expected in (
        (moments.Moment.parse(lsn=lsn), [1]),
        (moments.Moment.parse(name="after-two"), [1, 2]),
        (moments.Moment.parse(xid=xid), [1, 2, 3]),
        (moments.Moment.parse(), [1, 2, 3, 4]),  # the end of the archive
    ):
        recovered = moments.restore(target, server, moment)
        try:
            with psycopg.connect(recovered.url("staging")) as conn:
                got = [r[0] for r in conn.execute("SELECT n FROM steps ORDER BY n")]
            assert got == expected, (moment, got)
        finally:
            recovered.stop()
    _sql(target, "DROP TABLE steps")


def _three_segments_after_a_base_backup(target: Target, server, table: str) -> list[str]:
    """A base backup, then rows written into `table` across three archived segments: their names."""
    pitr.take_base_backup(target, server, label=table)
    _sql(target, sql.SQL("CREATE TABLE IF NOT EXISTS {} (n int)").format(sql.Identifier(table)))
    segments = []
    for _ in range(3):
        _sql(
            target,
            sql.SQL("INSERT INTO {} SELECT generate_series(1, 1000)").format(sql.Identifier(table)),
        )
        segments.append(_archived(target))
    return segments


def test_a_missing_segment_stops_the_restore_at_the_gap_and_health_says_so(target):
    server = pitr.locate(target)
    segments = _three_segments_after_a_base_backup(target, server, "gapped")
    folder = pitr.archive_folder(server)
    lost = folder / segments[1]
    kept = lost.read_bytes()
    lost.unlink()
    before = _sql(target, "SELECT count(*) FROM gapped")[0]
    try:
        now = moments.Moment.parse(time=_now(target).isoformat())
        for moment in (now, moments.Moment.parse()):  # replay stops at it; the end is refused
            with pytest.raises(pitr.PitrFailed, match=f"WAL segment {segments[1]} is missing"):
                moments.restore(target, server, moment)
        assert _restored_clusters(server) == []  # nothing promoted, nothing left running
        assert _sql(target, "SELECT count(*) FROM gapped")[0] == before  # the running one as was
        with db.connect(target) as conn:
            found = health.archiving(conn)
        assert found.status is Status.CRIT and segments[1] in found.summary
        assert pitr.coverage(server).status is Status.CRIT
    finally:
        lost.write_bytes(kept)
        server.give(folder)
    assert pitr.coverage(server).status is Status.OK
    _sql(target, "DROP TABLE gapped")


def test_a_corrupted_segment_stops_the_restore_and_nothing_is_promoted(target):
    """A segment in the archive with bytes flipped mid-way: replay stops at the bad record, and
    a restore to the end of the archive must not take that for the end (it would promote a
    cluster missing everything after it)."""
    server = pitr.locate(target)
    segments = _three_segments_after_a_base_backup(target, server, "spoiled")
    victim = pitr.archive_folder(server) / segments[1]
    kept = victim.read_bytes()
    victim.write_bytes(kept[:8192] + bytes(b ^ 0xFF for b in kept[8192:8400]) + kept[8400:])
    before = _sql(target, "SELECT count(*) FROM spoiled")[0]
    try:
        for moment in (moments.Moment.parse(time=_now(target).isoformat()), moments.Moment.parse()):
            with pytest.raises(pitr.PitrFailed, match="nothing was promoted") as failed:
                recovered = moments.restore(target, server, moment)
                recovered.stop()
            assert f"replay stopped in WAL segment {segments[1]}" in str(failed.value)
            assert "the segment is damaged (" in str(failed.value)
        assert _restored_clusters(server) == []
        assert _sql(target, "SELECT count(*) FROM spoiled")[0] == before
    finally:
        victim.write_bytes(kept)
        server.give(victim.parent)
    _sql(target, "DROP TABLE spoiled")


def test_a_corrupted_base_backup_is_never_restored(target):
    server = pitr.locate(target)
    base = pitr.take_base_backup(target, server, label="to-corrupt")
    victim = max(
        (p for p in (base.path / "base").rglob("*") if p.is_file()), key=lambda p: p.stat().st_size
    )
    original = victim.read_bytes()
    victim.write_bytes(
        original[:4096] + bytes(b ^ 0xFF for b in original[4096:4200]) + original[4200:]
    )
    try:
        with pytest.raises(pitr.PitrFailed, match="fails pg_verifybackup"):
            moments.restore(target, server, moments.Moment.parse())
        assert _restored_clusters(server) == []
    finally:
        victim.write_bytes(original)


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a small file system needs root")
def test_a_full_archive_disk_is_crit_in_health_and_nothing_is_lost(target, tmp_path):
    server = pitr.locate(target)
    small = tmp_path / "small"
    small.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=20m", "tmpfs", str(small)])
    if mounted.returncode != 0:
        pytest.skip("this machine does not let tmpfs be mounted")
    folder = pitr.archive_folder(server)
    try:
        server.give(small)
        _set_archive_command(target, small)
        _sql(target, "CREATE TABLE IF NOT EXISTS filler (x text)")
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:  # more WAL than the disk holds
            _sql(
                target, "INSERT INTO filler SELECT repeat('x', 1000) FROM generate_series(1, 5000)"
            )
            _sql(target, "SELECT pg_switch_wal()")
            with db.connect(target) as conn:
                if wal.archiving(conn).failing:
                    break
            time.sleep(0.5)
        result = runner.run("health", "box", progress=False)
        by = {f.check: f for f in result.findings}
        assert by["wal archiving"].status is Status.CRIT, by["wal archiving"]
        assert "archive command fails" in by["wal archiving"].summary
        assert result.exit_code == 2
    finally:
        try:
            for segment in wal.segments(small):  # what reached the small disk joins the archive
                shutil.copy2(small / segment, folder / segment)
            server.give(folder)
            _set_archive_command(target, folder)
        finally:
            subprocess.run(["umount", str(small)], check=True)
        _sql(target, "DROP TABLE IF EXISTS filler")
    assert _archived(target)  # the archiver caught up: every segment is in the archive
    with db.connect(target) as conn:
        assert health.archiving(conn).status is Status.OK
    assert pitr.coverage(server).status is Status.OK  # no gap: nothing was lost


def test_bad_moments_are_refused_before_anything_starts(target, capsys):
    server = pitr.locate(target)
    earliest = wal.base_backups(server.root)[0].finished_at
    before = len(history.entries())
    for params, said in (
        (
            ["to_time", "2000-01-01T00:00:00+00:00"],
            f"earliest reachable moment is {earliest.isoformat()}",
        ),
        (["to_time", "2026-11-25 10:42"], "has no time zone"),
        (["to_time", "yesterday"], "is not a time"),
        (["to_time", "2999-01-01T00:00:00+00:00"], "is in the future"),
        (["to_lsn", "zz"], "is not an LSN"),
        (["to_xid", "12", "-p", "to_lsn", "0/1"], "name one moment"),
        (["copy_table", "users"], "still exists"),
    ):
        assert main(["run", "pitr_restore", "-t", "box", "-p", *params]) == 3, params
        err = capsys.readouterr().err
        assert said in err and len(err.strip().splitlines()) == 1, err
    assert len(history.entries()) == before  # nothing archived, nothing run


def test_a_server_out_of_reach_is_unknown_not_a_failure(box, target):
    _sql(target, "DROP ROLE IF EXISTS pitr_reader")
    _sql(target, "CREATE ROLE pitr_reader LOGIN")
    url = psycopg.conninfo.make_conninfo(target.url, user="pitr_reader")
    server, found = pitr.reach(Target("managed", url))
    assert server is None and found.status is Status.UNKNOWN
    assert "provider's point-in-time recovery" in found.summary
    if EXTERNAL:  # archiving off on the older server: said, not alarmed on
        with psycopg.connect(EXTERNAL, autocommit=True) as conn:
            state = wal.archiving(conn)
        if not state.on:
            assert health.recovery.archiving(state, warn_s=300, crit_s=3600).status is Status.OK


def test_retention_keeps_the_newest_and_the_wal_it_needs(target):
    server = pitr.locate(target)
    pitr.take_base_backup(target, server, label="old")
    _archived(target)
    newest = pitr.take_base_backup(target, server, label="new")
    _archived(target)
    found = pitr.retention(server, keep=1, prune=True)
    assert "removed" in found.summary
    assert [b.id for b in wal.base_backups(server.root)] == [newest.id]
    assert min(wal.segments(pitr.archive_folder(server)))[8:] >= newest.start_wal[8:]
    recovered = moments.restore(target, server, moments.Moment.parse())
    recovered.stop()


def test_an_incremental_base_backup_restores_through_its_chain(target):
    server = pitr.locate(target)
    with pytest.raises(pitr.PitrRefused, match="summarize_wal"):  # not on by default
        pitr.take_base_backup(target, server, incremental=True)
    shutil.rmtree(server.root / "base")  # what earlier tests took: this test's chain starts here
    first = runner.run("pitr", "box", {"incremental": True}, progress=False)  # turns it on
    assert first.exit_code == 0, [str(f) for f in first.findings]
    [full] = wal.base_backups(server.root)  # no base backup to build on: a full one, said so
    assert full.incremental_of is None
    said = next(f for f in first.findings if f.check == "base backup").summary
    assert "(a full one: there was none to build an incremental on" in said, said
    _sql(target, "CREATE TABLE IF NOT EXISTS grown (n int PRIMARY KEY)")
    _sql(target, "INSERT INTO grown SELECT generate_series(1, 5000)")
    _archived(target)
    result = runner.run("pitr", "box", {"incremental": True}, progress=False)
    assert result.exit_code == 0, [str(f) for f in result.findings]
    newest = wal.base_backups(server.root)[-1]
    assert newest.incremental_of == full.id
    assert newest.size_bytes < moments.chain_of(server, newest)[0].size_bytes / 2  # changes only
    recovered = moments.restore(target, server, moments.Moment.parse())
    try:
        assert any(p[0].startswith("combine the incremental") for p in recovered.phases.phases)
        with psycopg.connect(recovered.url("staging")) as conn:
            assert conn.execute("SELECT count(*) FROM grown").fetchone()[0] == 5000
    finally:
        recovered.stop()
    _sql(target, "DROP TABLE grown")


def test_the_drill_recovers_a_dropped_table_to_within_seconds(box, target):
    reviews = _sql(target, "SELECT count(*) FROM reviews")[0]
    result = runner.run(
        "dr_drill", "box", {"disaster": "pitr-dropped-table", "writes_after_backup": "25"},
        progress=False,
    )  # fmt: skip
    assert result.exit_code == 0, [str(f) for f in result.findings if f.status is not Status.OK]
    by = {f.check: f for f in result.findings}
    rpo = by["rpo achieved"]
    assert rpo.value == 0 and "25 of 25 rows" in rpo.summary  # every row before it came back
    seconds = float(re.search(r"the newest was written ([\d.]+) s before it", rpo.summary)[1])
    assert seconds < 5
    assert _sql(target, "SELECT count(*) FROM reviews")[0] == reviews
    assert _sql(target, "SELECT to_regclass('pgrunbook_drill_marker')")[0] is None
    assert _restored_clusters(pitr.locate(target)) == []


def test_a_migration_sets_a_restore_point_to_return_to(target):
    """The migrate runbook's apply names a restore point first; a restore to it is the database
    just before the change."""
    from pgrunbook.base import migrations

    server = pitr.locate(target)
    migrations.downgrade(target, "0003")
    pitr.take_base_backup(target, server, label="before-migration")
    result = runner.run(
        "migrate", "box", {"mode": "apply", "backup_first": False, "allow_unsafe": True},
        progress=False,
    )  # fmt: skip
    assert result.exit_code in (0, 1), [str(f) for f in result.findings]
    mark = next(f for f in result.findings if f.check == "restore point")
    assert "pgrunbook-before-0004" in mark.summary
    assert "pgrunbook-before-0004" in [p["name"] for p in pitr.restore_points(server)]
    recovered = moments.restore(target, server, moments.Moment.parse(name="pgrunbook-before-0004"))
    try:
        with psycopg.connect(recovered.url("staging")) as conn:
            assert migrations.current(conn) == ("0003",)
    finally:
        recovered.stop()
    with db.connect(target) as conn:
        assert migrations.current(conn) == ("0004",)  # the running one keeps the change

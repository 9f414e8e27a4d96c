"""Backup, verify and restore against real servers, with the faults they must survive."""

import json
import os
import resource
import signal
import subprocess
import threading
import time
import uuid
from contextlib import contextmanager
from datetime import UTC

import psutil
import psycopg
import pytest
from psycopg import sql

from pgrunbook.archive import runner
from pgrunbook.base import db, pgtools
from pgrunbook.base.errors import ConfirmationRequired
from pgrunbook.base.findings import Status
from pgrunbook.base.targets import Target
from pgrunbook.checks import recovery
from pgrunbook.facts import backups
from pgrunbook.procedures import admin, dumps, restore, seed
from tests.conftest import databases, fill, forget_roles, make_roles


@pytest.fixture(autouse=True)
def own_backups_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("PGRUNBOOK_BACKUPS_DIR", str(tmp_path / "backups"))


@pytest.fixture
def seeded(migrated):
    with db.connect(migrated, readonly=False) as conn:
        seed.seed(conn, migrated, mode="development", users=300)
    return migrated


def without_amcheck(finding) -> bool:
    """amcheck on a server without contrib (the pgserver wheel's 16): WARN, and says so."""
    return (
        finding.check in ("amcheck", "verify")
        and finding.status is Status.WARN
        and "amcheck is not available on this server" in finding.summary
    )


def _users(target: Target) -> int:
    with db.connect(target) as conn:
        return conn.execute("SELECT count(*) FROM users").fetchone()[0]


@pytest.mark.matrix
def test_backup_verify_and_restore_on_each_server(seeded):
    backup = dumps.create(seeded, label="pre-migration")
    with psycopg.connect(seeded.url) as conn:
        major = conn.info.server_version // 10000
    assert backups.check(backup) == []
    assert backup.manifest["row_counts"]["public.users"] == 300
    assert backup.manifest["alembic_revision"] == "0004"
    assert pgtools.choose("pg_dump", major).version == backup.manifest["pg_dump_version"]
    verdict, timeline = restore.verify(seeded, backup)
    assert verdict.status is Status.OK or without_amcheck(verdict), verdict.summary
    assert backups.load(backup.path).verified
    record = backups.load(backup.path).verification  # the client and server that proved it
    assert record["server_major"] == major
    assert record["pg_restore_version"].split(".")[0] >= backup.manifest["pg_dump_version"][:2]
    assert {p[0] for p in timeline.phases} >= {
        "pg_restore",
        "row counts",
        "amcheck",
        "drop scratch",
    }
    before = databases(seeded.url)
    result = restore.restore(seeded, backups.find("scratch", backup.id))
    assert all(f.status is Status.OK or without_amcheck(f) for f in result.findings), (
        result.findings
    )
    assert databases(seeded.url) == before | {result.database}
    admin.drop_database(seeded, result.database)


@pytest.mark.matrix
def test_swap_keeps_the_old_database_and_repairs_sequences(seeded):
    backup = dumps.create(seeded)
    with db.connect(seeded, readonly=False) as conn:
        conn.execute("DELETE FROM reviews")  # the disaster the restore undoes
    with pytest.raises(ConfirmationRequired):
        restore.restore(Target("scratch", seeded.url, protected=True), backup, mode="swap")
    result = restore.restore(seeded, backup, mode="swap")
    assert result.kept_as and result.kept_as in databases(seeded.url)
    with db.connect(seeded) as conn:
        assert (
            conn.execute("SELECT count(*) FROM reviews").fetchone()[0]
            == backup.manifest["row_counts"]["public.reviews"]
        )
    admin.drop_database(seeded, result.kept_as)


def _flip_byte(backup):
    victim = next(p for p in sorted(backup.dump_path.iterdir()) if p.suffix == ".gz")
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 0xFF
    victim.write_bytes(bytes(data))
    return victim.name


def _remove_file(backup):
    victim = next(p for p in sorted(backup.dump_path.iterdir()) if p.suffix == ".gz")
    victim.unlink()
    return victim.name


def _edit_manifest(backup):
    m = json.loads((backup.path / "manifest.json").read_text())
    m["row_counts"]["public.users"] += 1
    (backup.path / "manifest.json").write_text(json.dumps(m))
    return "manifest.json"


@pytest.mark.parametrize("fault", [_flip_byte, _remove_file, _edit_manifest])
def test_a_damaged_backup_is_refused_before_anything_changes(seeded, fault):
    backup = dumps.create(seeded)
    named = fault(backup)
    before = databases(seeded.url)
    gate = restore.check_request(
        seeded, backups.find("scratch", backup.id), mode="swap", confirm=""
    )
    assert gate.status is Status.CRIT and named in gate.summary
    with pytest.raises(restore.RestoreFailed, match=named.replace(".", r"\.")):
        restore.restore(seeded, backups.find("scratch", backup.id), mode="swap")
    assert databases(seeded.url) == before and _users(seeded) == 300


def test_a_damaged_backup_stops_the_restore_runbook_with_crit(sandbox):
    target = runner.targets.resolve("staging")
    backup = dumps.create(target)
    _flip_byte(backup)
    before = databases(target.url)
    result = runner.run("restore", "staging", {"backup": backup.id, "mode": "swap"}, progress=False)
    assert result.exit_code == 2 and result.outcome == "CRIT"
    assert [f.check for f in result.findings] == [
        "unfinished swap",
        "debris",
        "backup chosen",
        "manifest",
    ]
    assert (
        result.findings[2].status is Status.WARN and "never verified" in result.findings[2].summary
    )
    assert databases(target.url) == before


def test_backup_of_another_database_is_refused(seeded):
    backup = dumps.create(seeded)
    other = Target("scratch", db.with_database(seeded.url, "postgres"), sandbox=True)
    gate = restore.check_request(other, backup, mode="new-database", confirm="")
    assert gate.status is Status.CRIT and "is of database" in gate.summary


def test_unknown_backup_id_is_one_clear_error(seeded):
    dumps.create(seeded)
    with pytest.raises(backups.BackupNotFound, match="no backup 'nope'"):
        backups.find("scratch", "nope")
    with pytest.raises(backups.BackupNotFound, match="no usable backup of 'nothing'"):
        backups.find("nothing")


def test_restore_refuses_a_backup_naming_a_role_the_server_lacks(seeded):
    """A role dropped since the backup: the restore names it and creates nothing."""
    role = f"pgrb_gone_{uuid.uuid4().hex[:8]}"
    make_roles(seeded.url, role)
    try:
        with psycopg.connect(seeded.url, autocommit=True) as conn:
            conn.execute(sql.SQL("ALTER TABLE reviews OWNER TO {}").format(sql.Identifier(role)))
        backup = dumps.create(seeded)
    finally:
        forget_roles(seeded.url, role)
    before = databases(seeded.url)
    with pytest.raises(
        restore.RestoreFailed,
        match=f"does not have: {role}; create them first; nothing was changed",
    ):
        restore.restore(seeded, backup)
    assert databases(seeded.url) == before


def _kill_pg_restore_when_it_writes(target_prefix: str, stop: threading.Event):
    me = psutil.Process()
    while not stop.is_set():
        for child in me.children(recursive=True):
            try:
                if child.name() == "pg_restore":
                    time.sleep(0.05)
                    child.send_signal(signal.SIGKILL)
                    return
            except psutil.NoSuchProcess:
                continue
        time.sleep(0.005)


def test_pg_restore_killed_midway_leaves_the_target_untouched(seeded):
    with db.connect(seeded, readonly=False) as conn:  # enough data that pg_restore takes a while
        seed.seed(conn, seeded, mode="development", users=20000, seed=2)
    backup = dumps.create(seeded)
    before, users = databases(seeded.url), _users(seeded)
    stop = threading.Event()
    killer = threading.Thread(target=_kill_pg_restore_when_it_writes, args=(seeded.database, stop))
    killer.start()
    try:
        with pytest.raises(restore.RestoreFailed, match="untouched, the partial copy was dropped"):
            restore.restore(seeded, backup, mode="swap")
    finally:
        stop.set()
        killer.join()
    assert databases(seeded.url) == before and _users(seeded) == users


@contextmanager
def _small_filesystem(path, size_kb: int):
    """A tmpfs of `size_kb` at `path` (as root), else a file size limit on child processes."""
    path.mkdir(parents=True, exist_ok=True)
    mounted = (
        os.geteuid() == 0
        and subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size_kb}k", "tmpfs", str(path)],
            capture_output=True,
        ).returncode
        == 0
    )
    old = resource.getrlimit(resource.RLIMIT_FSIZE)
    if not mounted:
        resource.setrlimit(resource.RLIMIT_FSIZE, (size_kb * 1024, old[1]))
    try:
        yield
    finally:
        if mounted:
            subprocess.run(["umount", str(path)], check=True)
        else:
            resource.setrlimit(resource.RLIMIT_FSIZE, old)


def test_a_full_backup_folder_fails_cleanly(seeded, tmp_path, monkeypatch):
    with db.connect(seeded, readonly=False) as conn:
        seed.seed(conn, seeded, mode="development", users=5000, seed=3)
    small = tmp_path / "small"
    monkeypatch.setenv("PGRUNBOOK_BACKUPS_DIR", str(small))
    with _small_filesystem(small, 128):
        with pytest.raises(backups.BackupFailed, match="nothing kept"):
            dumps.create(seeded)
        leftovers = [p for p in small.rglob("*") if p.is_file()]
    assert leftovers == [] and backups.all_backups("scratch") == []


def test_backups_started_in_the_same_second_with_one_label_both_succeed(seeded):
    start = threading.Barrier(3)
    made, errors = [], []

    def one():
        start.wait()
        try:
            made.append(dumps.create(seeded, format="custom", label="nightly"))
        except Exception as e:  # noqa: BLE001  collected and asserted on below
            errors.append(e)

    threads = [threading.Thread(target=one) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert len({b.id for b in made}) == 3
    assert all(backups.check(b) == [] for b in made)
    assert len(backups.all_backups("scratch")) == 3


def test_a_disk_full_while_recording_verification_keeps_the_record(seeded, tmp_path, monkeypatch):
    import shutil

    backup = dumps.create(seeded, format="custom")
    verdict, _ = restore.verify(seeded, backup)
    assert verdict.status is Status.OK
    small = tmp_path / "small"
    with _small_filesystem(small, 4096):
        if not os.path.ismount(small):
            pytest.skip("needs root to mount a small filesystem")
        monkeypatch.setenv("PGRUNBOOK_BACKUPS_DIR", str(small))
        copy = small / "scratch" / backup.id
        shutil.copytree(backup.path, copy)
        fill(small)
        with pytest.raises(OSError):
            dumps.record_verification(
                backups.load(copy),
                {"ok": True, "at": "now", "findings": [], "phases": [], "note": "x" * 100_000},
            )
        again = backups.find("scratch", "latest")
        assert again.id == backup.id and again.verified
        assert sorted(p.name for p in copy.iterdir()) == sorted(
            p.name for p in backup.path.iterdir()
        )


def test_retention_never_deletes_the_newest_verified(seeded):
    from datetime import datetime, timedelta

    first = dumps.create(seeded)
    restore.verify(seeded, first)
    second = dumps.create(seeded)
    every = backups.all_backups("scratch")
    later = datetime.now(UTC) + timedelta(days=30)
    plan = dumps.retention_plan(every, retention_days=7, now=later)
    assert [b.id for b in plan] == [second.id]  # the only verified one stays
    assert dumps.prune(plan, enabled=False).examples == (second.id,) and second.path.exists()
    dumps.prune(plan, enabled=True)
    assert not second.path.exists() and first.path.exists()


def test_rpo_against_the_newest_verified_backup(seeded):
    assert recovery.rpo_finding([], rpo_h=24).status is Status.CRIT
    b = dumps.create(seeded)
    assert (
        recovery.rpo_finding(backups.all_backups("scratch"), rpo_h=24).status is Status.CRIT
    )  # not verified
    restore.verify(seeded, b)
    assert recovery.rpo_finding(backups.all_backups("scratch"), rpo_h=24).status is Status.OK


def test_every_sequence_is_compared_also_one_no_column_draws_from(seeded):
    """A sequence the application calls itself (invoice numbers): restored at or past its value
    at the backup, or CRIT naming it."""
    with db.connect(seeded, readonly=False) as conn:
        conn.execute("CREATE SEQUENCE invoice_no START 1000")
        conn.execute("SELECT nextval('invoice_no') FROM generate_series(1, 50)")
    backup = dumps.create(seeded)
    assert backup.manifest["sequences"]["public.invoice_no"] == 1049
    result = restore.restore(seeded, backup)
    found = {f.check: f for f in result.findings}
    assert found["sequence values"].status is Status.OK
    copy = Target("copy", db.with_database(seeded.url, result.database))
    with db.connect(copy, readonly=False) as conn:
        conn.execute("SELECT setval('invoice_no', 1000)")  # as a copy that lost it would be
        again = restore.compare(conn, backup, repair_sequences=False, amcheck=False)
    fallen = next(f for f in again if f.check == "sequence values")
    assert fallen.status is Status.CRIT and "public.invoice_no: at 1000, was 1049" in fallen.summary
    admin.drop_database(seeded, result.database)


def test_a_verify_warn_names_what_it_is_about(seeded):
    """A sequence behind its column in the backup: the verification's WARN names the sequence
    (the sub-check's examples stay with the verdict)."""
    with db.connect(seeded, readonly=False) as conn:
        conn.execute("SELECT setval(pg_get_serial_sequence('users', 'id'), 1)")
    backup = dumps.create(seeded)
    verdict, _ = restore.verify(seeded, backup)
    assert verdict.status is Status.WARN and "sequences: 1 behind" in verdict.summary
    assert [e for e in verdict.examples if e.startswith("sequences: public.users_id_seq at 1")]


def test_no_backup_on_the_sandbox_says_the_true_reason():
    """The sandbox's production is protected: 'none required' is said for the sandbox, never as
    'a target that is not protected'."""
    said = recovery.rpo_finding([], rpo_h=24, required=False).summary
    assert "not protected" not in said and "outside the sandbox" in said

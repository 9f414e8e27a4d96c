"""Backups in a remote repository (a real S3 server, SeaweedFS, started here): streamed to the
bucket encrypted, verified and restored from there, and the faults that must not lose anything:
the storage server down or killed mid-upload, a flipped byte, a wrong key or none, secrets."""

from __future__ import annotations

import os
import threading
import time
import uuid
from datetime import UTC, datetime

import psycopg
import pytest

from pgrunbook.archive import runner
from pgrunbook.base import db, repository, targets
from pgrunbook.base.findings import Status
from pgrunbook.base.sealing import KeyMissing, WrongKey
from pgrunbook.base.storage import StorageError
from pgrunbook.facts import backups
from pgrunbook.procedures import admin, debris, dumps, restore
from tests.conftest import KEY, written_files


def _personal(target) -> list[str]:
    with db.connect(target) as conn:
        return [
            v
            for row in conn.execute("SELECT email, phone, last_name FROM users LIMIT 50")
            for v in row
            if v and len(v) >= 8  # shorter ones turn up in 32 MiB of ciphertext by chance
        ]


def _secrets(s3server) -> list[str]:
    return [KEY, *s3server.env().values()][:3]  # the repository key and both access keys


def test_a_backup_lives_in_the_bucket_encrypted_and_comes_back_from_there(
    sandbox, s3server, bucket, tmp_path
):
    staging = targets.resolve("staging")
    result = runner.run("backup", "staging", progress=False)
    assert result.exit_code == 0, [str(f) for f in result.findings]
    found = {f.check: f for f in result.findings}
    assert found["verify"].status is Status.OK and "verified" in found["verify"].summary
    assert not list((tmp_path / "local-backups").rglob("manifest.json"))  # nothing kept here
    objects = s3server.objects(bucket)
    [backup] = backups.all_backups(staging)
    assert backup.remote and backup.verified
    assert f"fixia/backups/staging/{backup.id}/manifest.json" in objects
    assert any("/part-00001" in k for k in objects)
    # nothing readable in any object: no personal value, no key, no access key
    for key, blob in objects.items():
        for value in _personal(staging) + _secrets(s3server):
            assert value.encode() not in blob, (key, value)
    for path in written_files(tmp_path / "reports"):
        text = path.read_bytes()
        assert not [s for s in _secrets(s3server) if s.encode() in text], path
    # a restore reads it back from the bucket, checked and decrypted, into a new database
    restored = restore.restore(staging, backups.find(staging, backup.id))
    assert restored.verified, restored.findings
    copy = db.with_database(staging.url, restored.database)
    with psycopg.connect(copy) as conn:
        assert (
            conn.execute("SELECT count(*) FROM users").fetchone()[0]
            == (backup.manifest["row_counts"]["public.users"])
        )
    admin.drop_database(staging, restored.database)


def test_the_storage_server_down_at_start_is_one_line_before_pg_dump(
    sandbox, s3server, bucket, monkeypatch
):
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")  # nothing listens there
    before = s3server.objects(bucket)
    with pytest.raises(StorageError, match="is the object store up and reachable"):
        runner.run("backup", "staging", progress=False)
    assert s3server.objects(bucket) == before


def test_a_wrong_key_or_none_is_one_line_and_writes_nothing(sandbox, s3server, bucket, monkeypatch):
    repository.Repository.open(os.environ["PGRUNBOOK_REPOSITORY"]).writable()  # made, right key
    before = s3server.objects(bucket)
    monkeypatch.setenv("PGRUNBOOK_REPOSITORY_KEY", "not the key")
    with pytest.raises(WrongKey, match="does not open the repository"):
        runner.run("backup", "staging", progress=False)
    monkeypatch.delenv("PGRUNBOOK_REPOSITORY_KEY")
    with pytest.raises(KeyMissing, match="PGRUNBOOK_REPOSITORY_KEY"):
        runner.run("backup", "staging", progress=False)
    monkeypatch.setenv("PGRUNBOOK_REPOSITORY", os.environ["PGRUNBOOK_REPOSITORY"] + "-new")
    with pytest.raises(KeyMissing, match="encrypt = false"):  # a new one is never unencrypted
        runner.run("backup", "staging", progress=False)
    assert s3server.objects(bucket) == before


def test_a_flipped_byte_in_the_bucket_is_named_and_nothing_is_restored(sandbox, s3server, bucket):
    staging = targets.resolve("staging")
    backup = dumps.create(staging)
    part = backup.manifest["parts"][0]["key"]
    client, full = s3server.client(), f"fixia/{part}"
    blob = bytearray(client.get_object(Bucket=bucket, Key=full)["Body"].read())
    blob[len(blob) // 2] ^= 0x01
    client.put_object(Bucket=bucket, Key=full, Body=bytes(blob))
    before = _databases(staging)
    verdict, _ = restore.verify(staging, backups.find(staging, backup.id))
    assert verdict.status is Status.CRIT and part in verdict.summary, verdict.summary
    with pytest.raises(restore.RestoreFailed, match=part):
        restore.restore(staging, backups.find(staging, backup.id))
    assert _databases(staging) == before  # the partial copies were dropped


def test_the_storage_server_killed_mid_upload_leaves_nothing_listed_and_is_cleaned(
    ballast, s3server, bucket, monkeypatch
):
    staging = ballast
    monkeypatch.setattr("pgrunbook.procedures.offsite.PART", 6 * 2**20)
    failed: list[BaseException] = []

    def back_up() -> None:
        try:
            dumps.create(staging)
        except BaseException as e:
            failed.append(e)

    worker = threading.Thread(target=back_up)
    worker.start()
    deadline = time.monotonic() + 60
    while not any("/part-" in k for k in _keys(s3server, bucket)):
        assert time.monotonic() < deadline, "no part was uploaded"
        time.sleep(0.05)
    s3server.kill()
    worker.join(120)
    assert failed and "failed, nothing kept" in str(failed[0])
    s3server.start()
    assert _once_up(lambda: backups.all_backups(staging)) == []  # nothing listed as good
    left = debris.find(staging)
    names = [d.name for d in left if d.kind == "repository leftover"]
    assert names, left
    debris.clean(staging)
    assert not [d for d in debris.find(staging) if d.kind == "repository leftover"]
    assert not [k for k in _keys(s3server, bucket) if "/backups/" in k]


def _once_up(read, seconds: float = 60):
    """`read()` once the restarted storage server serves its objects again (its volumes come
    back a little after its S3 port does)."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            return read()
        except StorageError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def _keys(s3server, bucket: str) -> list[str]:
    try:
        page = s3server.client().list_objects_v2(Bucket=bucket)
    except Exception:
        return []
    return [o["Key"] for o in page.get("Contents", [])]


def _databases(target) -> set[str]:
    with psycopg.connect(db.with_database(target.url, "postgres")) as conn:
        return {r[0] for r in conn.execute("SELECT datname FROM pg_database")}


def test_any_backup_is_verified_again_from_the_bucket(sandbox, s3server, bucket, capsys):
    """`pgrunbook backups verify --id ...`: a schedule restore-tests an old backup, as pgBackRest's
    verify and Barman's check encourage."""
    from pgrunbook.cli import main

    staging = targets.resolve("staging")
    first = dumps.create(staging, label="old")
    assert main(["backups", "verify", "--target", "staging", "--id", first.id]) == 0
    assert "verified" in capsys.readouterr().out
    assert backups.find(staging, first.id).verified
    assert main(["backups", "verify", "--target", "staging", "--id", "random"]) == 0
    assert main(["backups", "list", "--target", "staging"]) == 0
    assert first.id in capsys.readouterr().out


def test_two_runners_back_up_and_prune_one_repository_at_once(sandbox, s3server, bucket):
    """Ids never collide, no backup is lost, and a prune passes over a backup another runner is
    reading."""
    staging = targets.resolve("staging")
    made: list = []
    errors: list[BaseException] = []

    def runner_() -> None:
        try:
            for _ in range(2):
                made.append(dumps.create(staging, label="same"))
        except BaseException as e:
            errors.append(e)

    workers = [threading.Thread(target=runner_) for _ in range(2)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    assert not errors, errors
    ids = [b.id for b in made]
    assert len(set(ids)) == 4  # unique, though started in the same seconds with one label
    assert sorted(b.id for b in backups.all_backups(staging)) == sorted(ids)
    old, *rest = sorted(made, key=lambda b: b.id)
    from pgrunbook.procedures import offsite

    with offsite.leased(backups.find(staging, old.id)):  # another runner restores it now
        pruned = dumps.prune([backups.find(staging, b) for b in ids], enabled=True)
    assert f"kept (in use): {old.id}" in pruned.examples
    assert [b.id for b in backups.all_backups(staging)] == [old.id]


def test_object_lock_keeps_backups_from_a_stolen_credential_and_prune_says_so(
    sandbox, s3server, monkeypatch, tmp_path
):
    """object_lock_days = 2: every object of a backup is written with COMPLIANCE retention, so
    the runner's own credential cannot delete it; a prune keeps what is locked and says until
    when. A bucket without Object Lock is refused in one line before anything is written."""
    for k, v in s3server.env().items():
        monkeypatch.setenv(k, v)
    monkeypatch.setenv("PGRUNBOOK_REPOSITORY_KEY", KEY)
    monkeypatch.setenv("PGRUNBOOK_OBJECT_LOCK_DAYS", "2")
    plain = s3server.bucket(f"pgrb-{uuid.uuid4().hex[:10]}")
    monkeypatch.setenv("PGRUNBOOK_REPOSITORY", f"s3://{plain}/fixia")
    with pytest.raises(StorageError, match="does not have Object Lock enabled"):
        runner.run("backup", "staging", progress=False)
    assert s3server.objects(plain) == {}

    locked = s3server.bucket(f"pgrb-{uuid.uuid4().hex[:10]}", lock=True)
    monkeypatch.setenv("PGRUNBOOK_REPOSITORY", f"s3://{locked}/fixia")
    staging = targets.resolve("staging")
    first = dumps.create(staging, label="locked")
    client = s3server.client()
    part = f"fixia/{first.manifest['parts'][0]['key']}"
    retention = client.get_object_retention(Bucket=locked, Key=part)["Retention"]
    assert retention["Mode"] == "COMPLIANCE"
    days = (retention["RetainUntilDate"] - datetime.now(UTC)).total_seconds() / 86400
    assert 1.9 < days <= 2.0
    version = client.list_object_versions(Bucket=locked, Prefix=part)["Versions"][0]["VersionId"]
    with pytest.raises(Exception, match="AccessDenied"):  # the credential that wrote it
        client.delete_object(Bucket=locked, Key=part, VersionId=version)
    found = dumps.prune([backups.find(staging, first.id)], enabled=True)
    assert "deleted 0 backups" in found.summary and "kept under S3 Object Lock" in found.summary
    assert first.id in [b.id for b in backups.all_backups(staging)]
    assert client.get_object(Bucket=locked, Key=part)["Body"].read()

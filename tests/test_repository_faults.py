"""A remote repository has no single point of failure, provoked for real in a SeaweedFS bucket:
repository.json deleted or damaged, one backup's manifest flipped or deleted, a backup run
killed, a prune with a tiny retention. One lost or damaged object costs at most the backup it
belongs to, the key alone opens the repository, and a command that only reads writes nothing."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from pgrunbook.archive import runner
from pgrunbook.base import repository, targets
from pgrunbook.base.findings import Status
from pgrunbook.base.sealing import WrongKey
from pgrunbook.cli import main
from pgrunbook.facts import backups
from pgrunbook.procedures import admin, debris, dumps, restore
from tests.test_offsite import _keys


def _key(target: str, backup_id: str, name: str) -> str:
    return f"fixia/backups/{target}/{backup_id}/{name}"


def _flip(s3server, bucket: str, key: str) -> None:
    client = s3server.client()
    blob = bytearray(client.get_object(Bucket=bucket, Key=key)["Body"].read())
    blob[len(blob) // 2] ^= 0x01
    client.put_object(Bucket=bucket, Key=key, Body=bytes(blob))


def _restores(staging, backup_id: str) -> None:
    restored = restore.restore(staging, backups.find(staging, backup_id))
    try:
        assert restored.verified, restored.findings
    finally:
        admin.drop_database(staging, restored.database)


def test_the_key_alone_opens_the_repository_when_repository_json_is_lost(
    sandbox, s3server, bucket, capsys
):
    staging = targets.resolve("staging")
    first, second = dumps.create(staging, label="a"), dumps.create(staging, label="b")
    client = s3server.client()
    client.delete_object(Bucket=bucket, Key="fixia/repository.json")
    before = s3server.objects(bucket)

    # reading works with the key alone and writes nothing
    assert [b.id for b in backups.all_backups(staging)] == [first.id, second.id]
    assert main(["backups", "list", "--target", "staging"]) == 0
    assert first.id in capsys.readouterr().out
    _restores(staging, first.id)
    assert s3server.objects(bucket) == before

    # a write is refused in one line that says what is missing and how to recover
    with pytest.raises(repository.RepositoryError) as refused:
        runner.run("backup", "staging", progress=False)
    line = str(refused.value)
    assert "\n" not in line and "repository.json" in line and "backups repair" in line, line
    assert s3server.objects(bucket) == before

    # a wrong key is still told from the right one without repository.json
    os.environ["PGRUNBOOK_REPOSITORY_KEY"], right = (
        "not the key",
        os.environ["PGRUNBOOK_REPOSITORY_KEY"],
    )
    try:
        with pytest.raises(WrongKey):
            backups.all_backups(staging)
        assert main(["backups", "repair", "--target", "staging"]) == 3
        assert "opens none of" in capsys.readouterr().err
    finally:
        os.environ["PGRUNBOOK_REPOSITORY_KEY"] = right
    assert s3server.objects(bucket) == before

    # repair makes it again from what the backups hold; every earlier backup still restores
    assert main(["backups", "repair", "--target", "staging"]) == 0
    assert "repository.json" in capsys.readouterr().out
    result = runner.run("backup", "staging", progress=False)
    assert result.exit_code == 0, [str(f) for f in result.findings]
    for b in (first, second):
        _restores(staging, b.id)
    assert len(backups.all_backups(staging)) == 3


def test_a_damaged_repository_json_is_refused_for_writes_and_kept_by_repair(
    sandbox, s3server, bucket, capsys
):
    staging = targets.resolve("staging")
    first = dumps.create(staging)
    client = s3server.client()
    client.put_object(Bucket=bucket, Key="fixia/repository.json", Body=b'{"version": 2, "sa')
    before = s3server.objects(bucket)
    assert [b.id for b in backups.all_backups(staging)] == [first.id]
    with pytest.raises(repository.RepositoryError, match="backups repair"):
        dumps.create(staging)
    assert s3server.objects(bucket) == before
    assert main(["backups", "repair", "--repository", os.environ["PGRUNBOOK_REPOSITORY"]]) == 0
    objects = s3server.objects(bucket)
    assert objects["fixia/repository.json.damaged"] == before["fixia/repository.json"]
    dumps.create(staging)
    _restores(staging, first.id)


def test_one_damaged_manifest_costs_only_its_own_backup(sandbox, s3server, bucket, capsys):
    staging = targets.resolve("staging")
    gone = dumps.create(staging, label="gone")
    copied = dumps.create(staging, label="copied")
    good = dumps.create(staging, label="good")
    for name in ("manifest.json", "manifest.copy.json"):  # both copies of one backup
        _flip(s3server, bucket, _key("staging", gone.id, name))
    _flip(s3server, bucket, _key("staging", copied.id, "manifest.json"))  # its copy stays
    before = s3server.objects(bucket)

    found = backups.catalogue(staging)
    assert [b.id for b in found.backups] == [copied.id, good.id]
    assert [u.id for u in found.unreadable] == [gone.id]
    assert [b.id for b in found.mended] == [copied.id]

    assert main(["backups", "list", "--target", "staging"]) == 1  # something is amiss
    out = capsys.readouterr().out
    [row] = [line for line in out.splitlines() if line.startswith(gone.id)]
    assert "FAILED" in row, out
    assert good.id in out and copied.id in out and "backups repair" in out
    assert main(["backups", "verify", "--target", "staging", "--id", gone.id]) == 2
    assert gone.id in capsys.readouterr().out
    assert main(["backups", "verify", "--target", "staging", "--id", copied.id]) == 0
    _restores(staging, good.id)
    status = runner.run("status", "staging", progress=False)
    assert status.exit_code in (0, 1), [str(f) for f in status.findings]
    written = s3server.objects(bucket).keys() - before.keys()
    assert written == {_key("staging", copied.id, "verify.json")}, written  # verify records

    # a new backup, written whole and verified, is not FAILED for an old one's damage
    result = runner.run("backup", "staging", progress=False)
    by_check = {f.check: f for f in result.findings}
    assert by_check["verify"].status is Status.OK
    assert result.outcome == "WARN" and result.exit_code == 1, [str(f) for f in result.findings]
    assert gone.id in " ".join(str(f) for f in result.findings)

    # repair puts the copied backup's manifest back; the one with neither stays named
    assert main(["backups", "repair", "--target", "staging"]) == 0
    assert copied.id in capsys.readouterr().out
    assert not backups.catalogue(staging).mended
    assert [u.id for u in backups.catalogue(staging).unreadable] == [gone.id]


def test_a_verified_backup_without_its_manifests_is_damaged_never_debris(sandbox, s3server, bucket):
    staging = targets.resolve("staging")
    lost, finished = dumps.create(staging), dumps.create(staging)
    restore.verify(staging, lost)
    client = s3server.client()
    for name in ("manifest.json", "manifest.copy.json", "reserved"):  # its verify.json says
        client.delete_object(Bucket=bucket, Key=_key("staging", lost.id, name))
    for name in ("manifest.json", "manifest.copy.json"):  # its reservation says "complete"
        client.delete_object(Bucket=bucket, Key=_key("staging", finished.id, name))
    unreadable = backups.catalogue(staging).unreadable
    assert [u.id for u in unreadable] == [lost.id, finished.id]
    assert all("gone" in u.why for u in unreadable)
    assert not [d for d in debris.find(staging) if lost.id in d.name or finished.id in d.name]
    debris.clean(staging)
    kept = s3server.objects(bucket)
    for b in (lost, finished):
        assert any(k.startswith(_key("staging", b.id, "part-")) for k in kept)
    with pytest.raises(backups.BackupUnreadable, match=lost.id):
        backups.find(staging, lost.id)


KILLED = """
import sys
from pgrunbook.base import db, targets
from pgrunbook.procedures import dumps, offsite
offsite.PART = 5 * 2**20
print("started", flush=True)
dumps.create(targets.resolve("staging"))
"""


def test_the_next_backup_removes_and_names_what_a_killed_one_left(ballast, s3server, bucket):
    proc = subprocess.Popen([sys.executable, "-c", KILLED], env=os.environ.copy())
    deadline = time.monotonic() + 90
    while not any("/part-" in k for k in _keys(s3server, bucket)):
        assert time.monotonic() < deadline and proc.poll() is None, "no part was uploaded"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)  # as the OOM killer does
    proc.wait()
    left = {k.split("/")[3] for k in _keys(s3server, bucket) if "/backups/" in k}
    assert left, "the killed run left nothing to clean"
    result = runner.run("backup", "staging", progress=False)
    assert result.exit_code == 0, [str(f) for f in result.findings]
    said = " ".join(str(f) for f in result.findings)
    for backup_id in left:
        assert backup_id in said, said
        assert not [k for k in _keys(s3server, bucket) if f"/{backup_id}/" in k]
    assert not [p for p in repository.for_target("staging").store.pending("backups/")]


def test_prune_names_what_it_deletes_and_never_this_runs_backup(
    sandbox, s3server, bucket, monkeypatch
):
    staging = targets.resolve("staging")
    old = [dumps.create(staging, label=f"old{i}") for i in range(2)]
    result = runner.run(
        "backup", "staging", {"retention_days": "0.00001", "prune": "true"}, progress=False
    )
    assert result.exit_code in (0, 1), [str(f) for f in result.findings]
    prune = next(f for f in result.findings if f.check == "retention")
    said = str(prune) + " ".join(prune.examples)
    for b in old:
        assert b.id in said, said
    [kept] = backups.all_backups(staging)
    assert kept.id not in {b.id for b in old}
    assert kept.verified

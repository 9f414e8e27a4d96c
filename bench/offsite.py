"""A backup to an S3 repository against the way a team does it by hand, in one run.

On a temporary sandbox holding a pgbench database and a SeaweedFS started here:

- baseline: `pg_dump -Fc` to a local file, then boto3's parallel multipart upload of that file
  (`upload_file`, 8 MiB parts, 4 threads: what `aws s3 cp` does);
- pgrunbook: `dumps.create` into the repository (pg_dump's output streamed, zstd, AES-256-GCM,
  parts uploaded while pg_dump runs), verification off;

and the way back: download the file then `pg_restore` into a new database, against pgrunbook's
restore from the bucket (read back, checked, decrypted, into pg_restore's standard input).
Each figure is the best of --rounds, the order alternating; the ratio is pgrunbook over the
baseline. The peak of the local disk each side used is measured by sampling the free space of
the temporary folder's file system.

    python bench/offsite.py [--scale 30] [--rounds 3]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import threading
import uuid
from pathlib import Path

from common import temporary_sandbox, timed

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


class DiskPeak:
    """The most bytes used on the file system of `path` above its level at the start."""

    def __init__(self, path: Path):
        self.path, self.peak, self._stop = path, 0, threading.Event()

    def __enter__(self):
        self.start = shutil.disk_usage(self.path).used
        self.thread = threading.Thread(target=self._watch, daemon=True)
        self.thread.start()
        return self

    def _watch(self) -> None:
        while not self._stop.wait(0.05):
            self.peak = max(self.peak, shutil.disk_usage(self.path).used - self.start)

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self.thread.join()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--scale", type=int, default=30)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    from boto3.s3.transfer import TransferConfig

    from pgrunbook.base import db, pgtools
    from pgrunbook.base.cluster import bin_dir
    from pgrunbook.base.targets import Target
    from pgrunbook.procedures import admin, dumps, restore
    from tests import s3

    server = s3.start()
    try:
        bucket = server.bucket(f"bench-{uuid.uuid4().hex[:8]}")
        os.environ.update(server.env())
        os.environ["PGRUNBOOK_REPOSITORY"] = f"s3://{bucket}/repo"
        os.environ["PGRUNBOOK_REPOSITORY_KEY"] = uuid.uuid4().hex
        client = server.client()
        with temporary_sandbox() as (box, tmp):
            admin.drop_database(Target("x", box.url("postgres")), "bench")
            with db.connect(Target("x", box.url("postgres")), readonly=False) as conn:
                conn.execute("CREATE DATABASE bench")
            url = box.url("bench")
            os.environ["STAGING_DATABASE_URL"] = url
            target = Target("staging", url, sandbox=True)
            subprocess.run([str(bin_dir() / "pgbench"), "-i", "-q", "-s", str(args.scale),
                            "-d", url], check=True, capture_output=True)  # fmt: skip
            with db.connect(target, readonly=False, statement_timeout="0") as conn:
                # pgbench's rows are blank padding (456 MiB gzip to 8): text as real tables
                # hold it, compressing about 2:1
                conn.execute(
                    "CREATE TABLE notes AS SELECT g AS id, md5(g::text) || repeat(md5(random()"
                    "::text), 6) AS body FROM generate_series(1, %s) g",
                    [args.scale * 20000],
                )
            with db.connect(target) as conn:
                size = conn.execute("SELECT pg_database_size('bench')").fetchone()[0]
            print(f"pgbench scale {args.scale}: {size / 2**20:.0f} MiB")
            tool = pgtools.choose("pg_dump", 18)
            reader = pgtools.choose("pg_restore", 18)
            config = TransferConfig(multipart_chunksize=8 * 2**20, max_concurrency=4)
            best: dict[str, float] = {}
            peaks: dict[str, int] = {}

            def baseline_backup() -> None:
                dump = tmp / "bench.dump"
                pgtools.run(tool, ["-Fc", "-f", str(dump)], url)
                client.upload_file(str(dump), bucket, "manual/bench.dump", Config=config)
                dump.unlink()

            made = []

            def pgrunbook_backup() -> None:
                made.append(dumps.create(target))

            def baseline_restore() -> None:
                dump = tmp / "back.dump"
                client.download_file(bucket, "manual/bench.dump", str(dump), Config=config)
                with admin.connect(target) as conn:
                    admin.create(conn, "bench_manual", template="template0")
                pgtools.run(reader, ["--exit-on-error", str(dump)],
                            db.with_database(url, "bench_manual"))  # fmt: skip
                dump.unlink()
                admin.drop_database(target, "bench_manual")

            def pgrunbook_restore() -> None:
                result = restore.restore(target, made[-1], verify=False)
                admin.drop_database(target, result.database)

            steps = {
                "backup, by hand": baseline_backup,
                "backup, pgrunbook": pgrunbook_backup,
                "restore, by hand": baseline_restore,
                "restore, pgrunbook": pgrunbook_restore,
            }
            for n in range(args.rounds):
                order = list(steps) if n % 2 == 0 else [*reversed(list(steps)[:2]),
                                                         *reversed(list(steps)[2:])]  # fmt: skip
                for name in order:
                    with db.connect(Target("x", box.url("postgres")), readonly=False) as conn:
                        conn.execute("CHECKPOINT")
                    with DiskPeak(tmp) as disk:
                        seconds = timed(steps[name])
                    best[name] = min(best.get(name, seconds), seconds)
                    peaks[name] = max(peaks.get(name, 0), disk.peak)
                    print(f"  round {n + 1}: {name}: {seconds:.2f} s, "
                          f"local disk peak {disk.peak / 2**20:.0f} MiB")  # fmt: skip
            stored = sum(p["size"] for p in made[-1].manifest["parts"])
            manual = client.head_object(Bucket=bucket, Key="manual/bench.dump")["ContentLength"]
            print(f"stored: pgrunbook {stored / 2**20:.0f} MiB (zstd, encrypted), "
                  f"by hand {manual / 2**20:.0f} MiB (pg_dump -Fc, gzip)")  # fmt: skip
            for kind in ("backup", "restore"):
                mine, theirs = best[f"{kind}, pgrunbook"], best[f"{kind}, by hand"]
                print(f"{kind}: pgrunbook {mine:.2f} s, by hand {theirs:.2f} s, "
                      f"ratio {mine / theirs:.2f}x")  # fmt: skip
            print(f"local disk peak: pgrunbook backup {peaks['backup, pgrunbook'] / 2**20:.0f} MiB"
                  f" ({100 * peaks['backup, pgrunbook'] / stored:.0f}% of what it stored), by hand"
                  f" {peaks['backup, by hand'] / 2**20:.0f} MiB")  # fmt: skip
    finally:
        server.stop()


if __name__ == "__main__":
    main()

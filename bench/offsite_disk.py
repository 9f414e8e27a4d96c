"""Local disk and memory of a backup to the bucket, for a database whose dump is many times the
memory the backup holds for it.

A temporary sandbox holds a table of incompressible-ish text (`--mib` of it); a SeaweedFS is
started here. Each way runs in a process of its own, which reports the blocks it and its
children (pg_dump) wrote to storage (getrusage's ru_oublock, 512-byte units: bytes that reached
the runner's disk, not a pipe) and its peak resident memory:

- baseline: `pg_dump -Fc` into a file on the runner's disk (what a backup folder holds);
- pgrunbook: `dumps.create` into the repository (pg_dump's output streamed to the bucket).

The ratio is the disk pgrunbook wrote over the dump's size (goal: at most 10 %), and the dump's
size over the memory held (the database "10x larger than memory for the dump buffers").

    python bench/offsite_disk.py [--mib 1500]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path

from common import temporary_sandbox

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

CHILD = textwrap.dedent(
    """
    import json, resource, sys
    from pgrunbook.base import pgtools
    from pgrunbook.base.targets import Target
    from pgrunbook.procedures import dumps

    way, url, out = sys.argv[1], sys.argv[2], sys.argv[3]
    if way == "baseline":
        pgtools.run(pgtools.choose("pg_dump", 18), ["-Fc", "-f", out], url)
        size = __import__("os").path.getsize(out)
    else:
        made = dumps.create(Target("staging", url, sandbox=True))
        size = made.size
    me = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    print(json.dumps({"written": (me.ru_oublock + kids.ru_oublock) * 512, "size": size,
                      "rss_kib": me.ru_maxrss}))
    """
)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--mib", type=int, default=1500)
    args = parser.parse_args()
    from pgrunbook.base import db
    from pgrunbook.base.targets import Target
    from pgrunbook.procedures import admin
    from tests import s3

    server = s3.start()
    try:
        bucket = server.bucket(f"bench-{uuid.uuid4().hex[:8]}")
        os.environ.update(server.env())
        os.environ["PGRUNBOOK_REPOSITORY"] = f"s3://{bucket}/repo"
        os.environ["PGRUNBOOK_REPOSITORY_KEY"] = uuid.uuid4().hex
        with temporary_sandbox() as (box, tmp):
            admin.drop_database(Target("x", box.url("postgres")), "bench")
            with db.connect(Target("x", box.url("postgres")), readonly=False) as conn:
                conn.execute("CREATE DATABASE bench")
            url = box.url("bench")
            with db.connect(Target("b", url), readonly=False, statement_timeout="0") as conn:
                conn.execute(  # random hex: compresses about 2:1, no more
                    "CREATE TABLE notes AS SELECT g AS id, "
                    + " || ".join(["md5(random()::text)"] * 8)
                    + " AS body FROM generate_series(1, %s) g",
                    [args.mib * 2**20 // 290],
                )
                size = conn.execute("SELECT pg_database_size('bench')").fetchone()[0]
            print(f"database: {size / 2**20:.0f} MiB")
            script = tmp / "child.py"
            script.write_text(CHILD)
            found = {}
            for way in ("baseline", "pgrunbook"):
                subprocess.run(["sync"], check=False)
                done = subprocess.run(
                    [sys.executable, str(script), way, url, str(tmp / "bench.dump")],
                    capture_output=True, text=True, check=True, env=os.environ,
                )  # fmt: skip
                found[way] = json.loads(done.stdout.strip().splitlines()[-1])
                (tmp / "bench.dump").unlink(missing_ok=True)
            dump = found["baseline"]["size"]
            for way, f in found.items():
                print(f"{way:10} wrote {f['written'] / 2**20:8.1f} MiB to the runner's disk, "
                      f"peak memory {f['rss_kib'] / 1024:6.0f} MiB (dump: {f['size'] / 2**20:.0f}"
                      " MiB)")  # fmt: skip
            ours = found["pgrunbook"]
            from pgrunbook.procedures import offsite

            buffers = (offsite.UPLOADERS + 1) * offsite.PART
            print(
                f"ratio: pgrunbook's local disk / the dump = {ours['written'] / dump:.4f}; "
                f"the database / the dump buffers ({buffers / 2**20:.0f} MiB) = "
                f"{size / buffers:.1f}x"
            )
    finally:
        server.stop()


if __name__ == "__main__":
    main()

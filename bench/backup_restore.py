"""Backup and restore against raw pg_dump / pg_restore, on a pgbench database at scale 50.

In one run on a temporary sandbox: raw `pg_dump -Fd -j 2` against the backup
library call and the backup runbook (verify off); raw `pg_restore -j 2` into
a new database against the restore library call and the restore runbook
(new-database mode, verify off); and verification's own cost (counts,
fingerprint, sequences, amcheck) against the restore time. Each step starts
from a CHECKPOINT (so none pays for the dirty buffers of the one before), the
order of the steps rotates from round to round, and each timing is the best
of --rounds.

    python bench/backup_restore.py [--scale 50] [--rounds 2]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import time

from common import temporary_sandbox, timed


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--scale", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    from pgrunbook.archive import runner
    from pgrunbook.base import db
    from pgrunbook.base.cluster import bin_dir
    from pgrunbook.base.targets import Target
    from pgrunbook.procedures import admin, dumps, restore

    with temporary_sandbox() as (box, tmp):
        admin.drop_database(Target("x", box.url("postgres")), "bench")
        with db.connect(Target("x", box.url("postgres")), readonly=False) as conn:
            conn.execute("CREATE DATABASE bench")
        url = box.url("bench")
        os.environ["STAGING_DATABASE_URL"] = url
        target = Target("staging", url, sandbox=True)
        t0 = time.perf_counter()
        subprocess.run(
            [str(bin_dir() / "pgbench"), "-i", "-q", "-s", str(args.scale), "-d", url],
            check=True,
            capture_output=True,
        )
        with db.connect(target) as conn:
            size = conn.execute("SELECT pg_size_pretty(pg_database_size('bench'))").fetchone()[0]
        print(f"pgbench -i -s {args.scale}: {size} in {time.perf_counter() - t0:.0f} s")

        raw_dir = tmp / "raw"
        pg_dump, pg_restore = str(bin_dir() / "pg_dump"), str(bin_dir() / "pg_restore")

        def raw_dump():
            shutil.rmtree(raw_dir, ignore_errors=True)
            subprocess.run([pg_dump, "-Fd", "-j", "2", "-f", str(raw_dir), "-d", url], check=True)

        def raw_restore():
            admin.drop_database(target, "bench_raw")
            with db.connect(target, readonly=False) as conn:
                conn.execute("CREATE DATABASE bench_raw TEMPLATE template0")
            subprocess.run(
                [pg_restore, "-j", "2", "-d", box.url("bench_raw"), str(raw_dir)], check=True
            )

        made = []
        t: dict[str, list[float]] = {
            k: []
            for k in (
                "raw pg_dump -Fd -j 2",
                "dumps.create",
                "backup runbook",
                "raw pg_restore -j 2",
                "restore.restore",
                "restore runbook",
                "verification",
            )
        }

        def settled(fn) -> float:
            """Time `fn` from a checkpoint: no step pays for the dirty buffers of the one before."""
            with db.connect(target, readonly=False, autocommit=True, statement_timeout="0") as conn:
                conn.execute("CHECKPOINT")
            return timed(fn)

        def lib_restore():
            result = restore.restore(target, made[-1], jobs=2, verify=False)
            made_restores.append(result.database)

        made_restores: list[str] = []
        dumps = {
            "raw pg_dump -Fd -j 2": raw_dump,
            "dumps.create": lambda: made.append(dumps.create(target, jobs=2)),
            "backup runbook": lambda: runner.run(
                "backup", "staging", {"verify": "false"}, progress=False
            ),
        }
        restores = {
            "raw pg_restore -j 2": raw_restore,
            "restore.restore": lib_restore,
            "restore runbook": lambda: runner.run(
                "restore", "staging", {"backup": made[-1].id, "verify": "false"}, progress=False
            ),
        }
        for round_ in range(args.rounds):
            for group in (dumps, restores):  # each round starts the group with a different step
                names = list(group)
                for name in names[round_ % len(names) :] + names[: round_ % len(names)]:
                    t[name].append(settled(group[name]))
                    admin.drop_database(target, "bench_raw")
                    for database in made_restores:
                        admin.drop_database(target, database)
                    made_restores.clear()
                    with db.connect(target, readonly=False) as conn:
                        for (db_name,) in conn.execute(
                            "SELECT datname FROM pg_database WHERE datname LIKE 'bench_restore_%'"
                        ).fetchall():
                            admin.drop_database(target, db_name)
            verified = restore.restore(target, made[-1], jobs=2, verify=True)
            own = sum(
                e - s
                for name, s, e in verified.timeline.phases
                if name in ("row counts", "schema fingerprint", "sequences", "amcheck")
            )
            t["verification"].append(own)
            admin.drop_database(target, verified.database)
        best = {k: min(v) for k, v in t.items()}
        for k, v in best.items():
            print(f"{k:<22} {v:7.2f} s   (runs: {', '.join(f'{x:.2f}' for x in t[k])})")
        print(
            "backup library / raw pg_dump:    "
            f" {best['dumps.create'] / best['raw pg_dump -Fd -j 2']:.3f}x (goal <= 1.10x)"
        )
        print(
            "backup runbook / raw pg_dump:    "
            f" {best['backup runbook'] / best['raw pg_dump -Fd -j 2']:.3f}x"
        )
        print(
            "restore library / raw pg_restore:"
            f" {best['restore.restore'] / best['raw pg_restore -j 2']:.3f}x (goal <= 1.10x)"
        )
        print(
            "restore runbook / raw pg_restore:"
            f" {best['restore runbook'] / best['raw pg_restore -j 2']:.3f}x"
        )
        print(
            "verification / raw pg_restore:   "
            f" {best['verification'] / best['raw pg_restore -j 2']:.3f}x"
        )


if __name__ == "__main__":
    main()

"""Staging refresh against a plain copy of the same database, on the Fixia schema with 1M users.

In one run on a temporary sandbox, production is seeded with --users users
and their services, projects and reviews. Baselines: a plain dump and restore
(`pg_dump -Fd -j 2` then `pg_restore -j 2` into a new database, the same copy
the refresh makes) and `CREATE DATABASE ... TEMPLATE production` (possible
only while nobody is connected to production). Measured: the refresh
(backup, restore with masking as the data loads, indexes, swap) without its
verification, the same with verification, and the data pass alone. Each is the best of --rounds.

    python bench/staging_refresh.py [--users 1000000] [--rounds 2]
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import subprocess
import time

from common import temporary_sandbox

VERIFY = (
    "row counts",
    "schema fingerprint",
    "sequences",
    "verify: foreign and unique keys",
    "verify: no personal value left",
)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--users", type=int, default=1_000_000)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    from pgrunbook.base import db
    from pgrunbook.base.cluster import bin_dir
    from pgrunbook.base.targets import Target
    from pgrunbook.procedures import admin, dumps, refresh, restore, sanitize, seed

    with temporary_sandbox(PGRUNBOOK_SANITIZE_SALT="bench-salt-0123456789abcdef") as (box, tmp):
        prod = Target("production", box.url("production"), sandbox=True)
        stag = Target("staging", box.url("staging"), sandbox=True)
        t0 = time.perf_counter()
        with db.connect(Target("seed", prod.url), readonly=False, statement_timeout="0") as conn:
            conn.execute(
                "TRUNCATE users, categories, services, projects, reviews RESTART IDENTITY CASCADE"
            )
            result = seed.seed(conn, Target("seed", prod.url), mode="development", users=args.users)
        with db.connect(prod, readonly=False, statement_timeout="0", autocommit=True) as conn:
            conn.execute("VACUUM ANALYZE")
            size = conn.execute("SELECT pg_size_pretty(pg_database_size('production'))").fetchone()[
                0
            ]
        print(f"seeded {result.total:,} rows ({size}) in {time.perf_counter() - t0:.0f} s")

        pg_dump, pg_restore = str(bin_dir() / "pg_dump"), str(bin_dir() / "pg_restore")
        raw_dir = tmp / "raw"
        rules = sanitize.load("sanitize.toml")
        salt = sanitize.salt(sandbox=True)
        t: dict[str, list[float]] = {
            k: []
            for k in (
                "plain dump + restore",
                "CREATE DATABASE TEMPLATE",
                "refresh without verification",
                "refresh with verification",
                "data pass, masked as it loads",
                "verification alone",
            )
        }

        def plain_copy() -> float:
            started = time.perf_counter()
            shutil.rmtree(raw_dir, ignore_errors=True)
            subprocess.run(
                [pg_dump, "-Fd", "-j", "2", "-f", str(raw_dir), "-d", prod.url], check=True
            )
            admin.drop_database(stag, "plain_copy")
            with admin.connect(stag) as conn:
                conn.execute("CREATE DATABASE plain_copy TEMPLATE template0")
            subprocess.run(
                [pg_restore, "-j", "2", "-d", box.url("plain_copy"), str(raw_dir)], check=True
            )
            took = time.perf_counter() - started
            admin.drop_database(stag, "plain_copy")
            shutil.rmtree(raw_dir, ignore_errors=True)
            return took

        def template_copy() -> float:
            admin.drop_database(stag, "template_copy")
            with admin.connect(stag) as conn:
                started = time.perf_counter()
                conn.execute("CREATE DATABASE template_copy TEMPLATE production")
                took = time.perf_counter() - started
            admin.drop_database(stag, "template_copy")
            return took

        for _ in range(args.rounds):
            t["plain dump + restore"].append(plain_copy())
            t["CREATE DATABASE TEMPLATE"].append(template_copy())
            started = time.perf_counter()
            backup = dumps.create(prod, jobs=2, label="staging-refresh")
            dumped = time.perf_counter() - started
            done = refresh.apply(prod, stag, backup, rules, salt, jobs=2)
            total = time.perf_counter() - started
            assert done.swapped, done.findings
            verify = sum(end - start for name, start, end in done.timeline.phases if name in VERIFY)
            t["refresh with verification"].append(total)
            t["refresh without verification"].append(total - verify)
            t["data pass, masked as it loads"].append(
                sum(e - s for n, s, e in done.timeline.phases if n == "pg_restore: data")
            )
            t["verification alone"].append(verify)
            print(
                f"round: dump {dumped:.1f} s, "
                + ", ".join(f"{n} {e - s:.1f} s" for n, s, e in done.timeline.phases)
            )
            for name in restore.kept(stag, kind=refresh.KIND):
                admin.drop_database(stag, name)
            shutil.rmtree(backup.path)

        best = {k: min(v) for k, v in t.items()}
        base = best["plain dump + restore"]
        print(f"\n{'measure':32} {'best s':>8} {'vs dump+restore':>16} {'vs TEMPLATE':>12}")
        for name, value in best.items():
            print(
                f"{name:32} {value:8.2f} {value / base:15.2f}x"
                f" {value / best['CREATE DATABASE TEMPLATE']:11.2f}x"
            )
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(
            f"\nclient peak RSS: {rss:.0f} MiB; goal: refresh under 2x a plain copy "
            f"({best['refresh with verification'] / base:.2f}x with verification)"
        )
        os.environ.pop("PGRUNBOOK_SANITIZE_SALT", None)


if __name__ == "__main__":
    main()

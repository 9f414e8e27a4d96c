"""Integrity compare and amcheck against their floors, on pgbench at scale 50.

A pgbench database (5M rows in pgbench_accounts) copied into a second one.
The floor is the plainest full-content check: one aggregate of PostgreSQL's
built-in per-column hash functions over the whole table, on both sides at
once. Measured in the same run:
- compare of identical tables, against the floor (goal: at most 1.3x), the two
  alternated over 5 rounds so that both see the same machine, best of each;
- finding and showing 10 changed rows, against the floor (goal: at most 2x);
- reladiff on the same pair, identical and with 10 changed rows, when
  `reladiff[postgresql]` is installed (goal: ours at least 4x faster);
- 30,000 changed rows: every one found;
- the integrity amcheck step against pg_amcheck by hand (goal: at most 1.2x);
- the integrity runbook comparing the pair (30,000 rows differing) through the
  runner: peak RSS of its kernel, and of runner and kernel together
  (goal: under 300 MB);
- this process's peak RSS.

    python bench/integrity_compare.py [--scale 50]
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import psutil
from common import temporary_sandbox
from runner_overhead import make_home

FLOOR = (
    "SELECT count(*), sum(hashint4extended(aid, 0)), sum(hashint4extended(bid, 0)),"
    " sum(hashint4extended(abalance, 0)), sum(hashbpcharextended(filler, 0)) FROM pgbench_accounts"
)


def timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--scale", type=int, default=50)
    args = parser.parse_args()
    import psycopg

    from pgrunbook.base import db
    from pgrunbook.base.cluster import bin_dir
    from pgrunbook.base.targets import Target
    from pgrunbook.checks import compare, integrity

    with temporary_sandbox() as (box, tmp):
        admin = box.url("postgres")
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute("CREATE DATABASE bench_a")
        subprocess.run(
            [
                str(bin_dir() / "pgbench"),
                "-i",
                "-q",
                "-s",
                str(args.scale),
                "-d",
                box.url("bench_a"),
            ],
            check=True,
            capture_output=True,
        )
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute("CREATE DATABASE bench_b TEMPLATE bench_a STRATEGY FILE_COPY")
        a, b = (
            Target("a", box.url("bench_a"), sandbox=True),
            Target("b", box.url("bench_b"), sandbox=True),
        )
        for t in (a, b):
            with psycopg.connect(t.url, autocommit=True) as conn:
                conn.execute("VACUUM ANALYZE pgbench_accounts")
                conn.execute("CREATE EXTENSION IF NOT EXISTS amcheck")

        def floor():
            with ThreadPoolExecutor(2) as pool:

                def one(t):
                    with psycopg.connect(t.url) as c:
                        return c.execute(FLOOR).fetchone()

                return list(pool.map(one, (a, b)))

        def ours():
            return compare.compare(a, b, tables_glob="pgbench_accounts")

        def rounds(n=5):
            """Floor and compare alternated, so both see the same machine; the best of each."""
            floors, runs = [], []
            for _ in range(n):
                floors.append(timed(floor)[0])
                runs.append(timed(ours))
            best = min(runs, key=lambda x: x[0])
            return min(floors), best[0], best[1], sorted(floors), sorted(r[0] for r in runs)

        floor(), ours()  # warm the cache: both read the same pages
        f_same, t_same, same, fs, rs = rounds()
        assert same.results[0].same
        print(
            f"identical:  floor {f_same:.2f} s, compare {t_same:.2f} s   ratio"
            f" {t_same / f_same:.2f}x (goal <= 1.3x)   [floor {', '.join(f'{x:.2f}' for x in fs)};"
            f" compare {', '.join(f'{x:.2f}' for x in rs)}]"
        )
        rd_same = reladiff_times(box, "pgbench_accounts")
        if rd_same:
            print(
                f"reladiff identical: {rd_same:.2f} s   ours is {rd_same / t_same:.1f}x faster"
                " (goal >= 4x)"
            )
        with psycopg.connect(b.url, autocommit=True) as conn:
            conn.execute(
                "UPDATE pgbench_accounts SET abalance = abalance + 1 WHERE aid IN"
                " (SELECT (g * 499979) %% %s + 1 FROM generate_series(1, 10) g)",
                [args.scale * 100000],
            )
        f_ten, t_ten, ten, fs, rs = rounds()
        r = ten.results[0]
        print(
            f"10 changed: floor {f_ten:.2f} s, compare {t_ten:.2f} s   ratio {t_ten / f_ten:.2f}x"
            f" (goal <= 2x), found {len(r.changed)} changed,"
            f" {len(ten.side_by_side['public.pgbench_accounts'])} shown side by side   [floor"
            f" {', '.join(f'{x:.2f}' for x in fs)}; compare {', '.join(f'{x:.2f}' for x in rs)}]"
        )

        rd = reladiff_times(box, "pgbench_accounts")
        if rd:
            print(
                f"reladiff 10 changed: {rd:.2f} s   ours is {rd / t_ten:.1f}x faster (goal >= 4x)"
            )

        with psycopg.connect(b.url, autocommit=True) as conn:
            conn.execute(
                "UPDATE pgbench_accounts SET abalance = abalance + 1 WHERE aid %% 166 = 0 AND aid"
                " <= %s",
                [args.scale * 99600],
            )
            # pgbench starts every balance at 0: the changed rows are exactly those that are not 0
            expected = conn.execute(
                "SELECT count(*) FROM pgbench_accounts WHERE abalance <> 0"
            ).fetchone()[0]
        t_many, many = timed(ours)
        found = len(many.results[0].changed)
        print(
            f"compare, {expected:,} changed: {t_many:.2f} s, found {found:,}"
            f" ({'all' if found == expected else 'NOT all'})"
        )

        peak_runner, peak_kernel, result, names = runbook_peak_rss(tmp, a, b)
        print(
            f"integrity runbook (compare_to, {result.outcome}, {result.duration_s:.1f} s): peak RSS"
            f" of the kernel {peak_kernel:.0f} MB, of the runner and the kernel together"
            f" {peak_runner:.0f} MB (goal < 300 MB)   [child processes: {', '.join(names)}]"
        )

        sock = str(box.status().socket_dir)
        t_pg, _ = timed(
            lambda: subprocess.run(
                [str(bin_dir() / "pg_amcheck"), "-h", sock, "-U", "postgres", "bench_a"],
                check=True,
                capture_output=True,
            )
        )

        def step():
            with db.connect(a, statement_timeout="1h") as conn:
                return integrity.amcheck_checks(conn)

        t_am, found_am = timed(step)
        print(
            f"pg_amcheck (heap + btree): {t_pg:.2f} s; integrity amcheck step: {t_am:.2f} s   "
            f"ratio {t_am / t_pg:.2f}x (goal <= 1.2x)  [{'; '.join(f.summary for f in found_am)}]"
        )
        print(
            "peak RSS of this process:"
            f" {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB"
        )


def runbook_peak_rss(tmp, a, b):
    """The integrity runbook comparing the pair through the runner, its memory sampled every 20
    ms."""
    from pgrunbook.archive import runner

    home = make_home(tmp, "integrity")
    os.environ.update(PGRUNBOOK_HOME=str(home), STAGING_DATABASE_URL=a.url, DATABASE_URL=b.url)
    me, done, peaks, names = psutil.Process(), threading.Event(), [0, 0], set()

    def sample():
        while not done.is_set():
            try:
                children = me.children(recursive=True)
                names.update(c.name() for c in children)
                kernel = sum(c.memory_info().rss for c in children)
            except psutil.NoSuchProcess:
                continue
            peaks[0] = max(peaks[0], kernel + me.memory_info().rss)
            peaks[1] = max(peaks[1], kernel)
            time.sleep(0.02)

    watcher = threading.Thread(target=sample)
    watcher.start()
    try:
        result = runner.run(
            "integrity",
            "staging",
            {
                "compare_to": "production",
                "checks": "fk",
                "amcheck": "off",
                "tables": "pgbench_accounts",
            },
            progress=False,
        )
    finally:
        done.set()
        watcher.join()
    return peaks[0] / 2**20, peaks[1] / 2**20, result, sorted(names)


def reladiff_times(box, table: str) -> float | None:
    try:
        from reladiff import connect_to_table, diff_tables
    except ImportError:
        print("reladiff: not installed (pip install 'reladiff[postgresql]'): skipped")
        return None
    sock = box.status().socket_dir
    try:
        t1 = connect_to_table(
            {"driver": "postgresql", "host": str(sock), "user": "postgres", "database": "bench_a"},
            table,
            "aid",
        )
        t2 = connect_to_table(
            {"driver": "postgresql", "host": str(sock), "user": "postgres", "database": "bench_b"},
            table,
            "aid",
        )
        t0 = time.perf_counter()
        diff = list(diff_tables(t1, t2, extra_columns=("bid", "abalance", "filler")))
        took = time.perf_counter() - t0
        print(f"reladiff found {len(diff) // 2} changed rows")
        return took
    except Exception as e:  # reladiff's own connection handling: report, do not fail the run
        print(f"reladiff: could not run here: {type(e).__name__}: {str(e).splitlines()[0][:200]}")
        return None


if __name__ == "__main__":
    main()

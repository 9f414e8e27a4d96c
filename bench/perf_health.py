"""Performance and health runbooks on a database with 2,000 tables and 5,000 distinct statements.

In one run on a temporary sandbox (pg_stat_statements.max raised to hold
them): --tables tables of 1,000 rows each and --statements distinct
statements over them recorded by pg_stat_statements, then, alternating,
`pgrunbook run` of a runbook that does nothing (the runner's fixed cost), of
health and of performance. Goals: performance under 15 s end to end; health
under 3 s beyond the runner's fixed cost. Medians of --runs.

    python bench/perf_health.py [--tables 2000] [--statements 5000] [--runs 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

from common import temporary_sandbox
from runner_overhead import make_home


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--tables", type=int, default=2000)
    parser.add_argument("--statements", type=int, default=5000)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    from pgrunbook.archive import runner
    from pgrunbook.base import db
    from pgrunbook.base.targets import Target
    from pgrunbook.procedures import admin

    with temporary_sandbox() as (box, tmp):
        with db.connect(Target("x", box.url("postgres")), readonly=False, autocommit=True) as conn:
            conn.execute("ALTER SYSTEM SET pg_stat_statements.max = 10000")
        box.down()
        box.up()
        server = Target("x", box.url("postgres"))
        admin.drop_database(server, "wide")
        with admin.connect(server) as conn:
            admin.create(conn, "wide")
        url = box.url("wide")
        target = Target("wide", url, sandbox=True)
        t0 = time.perf_counter()
        with db.connect(target, readonly=False, statement_timeout="0", autocommit=True) as conn:
            conn.execute("CREATE EXTENSION pg_stat_statements")
            for i in range(args.tables):
                conn.execute(f"CREATE TABLE t{i} (id int PRIMARY KEY, a int, b text)")
                conn.execute(
                    f"INSERT INTO t{i} SELECT g, g % 97, md5(g::text) FROM generate_series(1,"
                    " 1000) g"
                )
            conn.execute("ANALYZE")
            conn.execute("SELECT pg_stat_statements_reset()")
            shapes = (
                "SELECT b FROM t{} WHERE id = %s",
                "SELECT count(*) FROM t{} WHERE a = %s",
                "SELECT max(b) FROM t{} WHERE a < %s",
            )
            made = 0
            for n in range(args.statements):
                conn.execute(
                    shapes[n // args.tables % len(shapes)].format(n % args.tables), [n % 50]
                )
                made += 1
            count = conn.execute(
                "SELECT count(*) FROM pg_stat_statements WHERE dbid = "
                "(SELECT oid FROM pg_database WHERE datname = 'wide')"
            ).fetchone()[0]
        print(
            f"{args.tables} tables, {count} statements in pg_stat_statements, set up in "
            f"{time.perf_counter() - t0:.0f} s"
        )

        home = make_home(tmp, "health", "performance")
        os.environ.update(PGRUNBOOK_HOME=str(home), STAGING_DATABASE_URL=url)

        def timed(runbook: str, **params: str) -> float:
            started = time.perf_counter()
            result = runner.run(runbook, "staging", params, progress=False)
            assert result.exit_code in (0, 1, 2), (runbook, result.error)
            return time.perf_counter() - started

        timed("noop"), timed("health")  # warm-up: kernel spec, imports
        t: dict[str, list[float]] = {
            "noop runbook (fixed cost)": [],
            "health": [],
            "performance": [],
        }
        for _ in range(args.runs):
            t["noop runbook (fixed cost)"].append(timed("noop"))
            t["health"].append(timed("health"))
            t["performance"].append(
                timed("performance", slow_ms="0.5", compare_with_previous="false")
            )
        med = {k: statistics.median(v) for k, v in t.items()}
        for k, v in t.items():
            print(f"{k:28} median {med[k]:6.2f} s  (min {min(v):.2f}, max {max(v):.2f})")
        fixed = med["noop runbook (fixed cost)"]
        print(f"\nperformance end to end: {med['performance']:.2f} s (goal < 15 s)")
        print(
            f"health beyond the runner's fixed cost: {med['health'] - fixed:.2f} s (goal < 3 s); "
            f"ratio to the fixed cost {med['health'] / fixed:.2f}x"
        )


if __name__ == "__main__":
    main()

"""The migration lint over 2,000 statements against a live database: parsing alone (the floor:
PostgreSQL's parser through pglast) and the whole lint (every action judged against the live
tables, and Squawk). Goal: the whole lint under 1 s.

    python bench/lint_scale.py [--statements 2000] [--repeat 5]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import psycopg
from common import temporary_sandbox

KINDS = (
    "ALTER TABLE t{i} ADD COLUMN x{j} int",
    "CREATE INDEX ix{j} ON t{i} (c)",
    "ALTER TABLE t{i} ALTER COLUMN a TYPE varchar(40)",
    "ALTER TABLE t{i} ADD CONSTRAINT ck{j} CHECK (c > 0) NOT VALID",
    "UPDATE t{i} SET c = c + 1 WHERE id < 10",
    "ALTER TABLE t{i} ADD COLUMN d{j} timestamptz DEFAULT now()",
    "ALTER TABLE t{i} ALTER COLUMN c SET NOT NULL",
    "CREATE TABLE n{j} (id int PRIMARY KEY, f int REFERENCES t{i} (id))",
)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--statements", type=int, default=2000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    from pgrunbook.checks import lint

    with temporary_sandbox() as (box, _):
        with psycopg.connect(box.url("postgres"), autocommit=True) as conn:
            conn.execute("CREATE SCHEMA bench")
            conn.execute("SET search_path = bench")
            for i in range(50):
                conn.execute(
                    f"CREATE TABLE t{i} (id int PRIMARY KEY, a varchar(20), n numeric(10,2), c int)"
                )
                conn.execute(f"INSERT INTO t{i} SELECT g, 'x', 1, g FROM generate_series(1, 100) g")
            conn.execute("ANALYZE")
            statements = [
                KINDS[j % len(KINDS)].format(i=j % 50, j=j) for j in range(args.statements)
            ]
            script = "BEGIN;\n" + ";\n".join(statements) + ";\nCOMMIT;\n"
            times: dict[str, list[float]] = {"parse (floor)": [], "lint": []}
            for _ in range(args.repeat):
                t0 = time.perf_counter()
                lint.parse(script)
                times["parse (floor)"].append(time.perf_counter() - t0)
                t0 = time.perf_counter()
                result = lint.lint_revision(conn, "bench", script)
                times["lint"].append(time.perf_counter() - t0)
    med = {k: statistics.median(v) for k, v in times.items()}
    for k, v in times.items():
        print(f"{k:<14} median {med[k]:.3f} s  (min {min(v):.3f}, max {max(v):.3f}, n={len(v)})")
    print(
        f"{args.statements:,} statements, {len(result.statements):,} actions judged,"
        f" {len(result.findings):,} findings, {len(result.squawk):,} Squawk notes"
    )
    print(
        f"lint: {med['lint']:.3f} s, {med['lint'] / med['parse (floor)']:.2f}x parsing alone"
        f" (goal < 1 s)  [{sys.platform}, {os.cpu_count()} cpus]"
    )


if __name__ == "__main__":
    main()

"""Status, plan and lint of a 300-migration history (a Prisma Migrate folder) against a live
database whose first half is applied. Baseline in the same run: parsing every file once with
PostgreSQL's parser, the least any lint of that history must do. Goal: under 10 s.

    python bench/history_scale.py [--migrations 300] [--repeat 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from dataclasses import replace

from common import temporary_sandbox


def write_history(folder, n: int) -> None:
    folder.mkdir(parents=True)
    (folder / "migration_lock.toml").write_text('provider = "postgresql"\n')
    for i in range(n):
        d = folder / f"{20260101000000 + i}_step{i}"
        d.mkdir()
        table = f"t{i // 3}"
        if i % 3 == 0:
            body = f"CREATE TABLE {table} (id bigint PRIMARY KEY, a text);\n"
        elif i % 3 == 1:
            body = f"ALTER TABLE {table} ADD COLUMN b{i} integer DEFAULT 0;\n"
        else:
            body = (
                f"CREATE INDEX ix_{i} ON {table} (a);\n"
                f"ALTER TABLE {table} ALTER COLUMN a SET NOT NULL;\n"
            )
        (d / "migration.sql").write_text(body)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--migrations", type=int, default=300)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    import psycopg

    from pgrunbook.base import db, migrations
    from pgrunbook.base.config import App
    from pgrunbook.base.sqlparse import parse
    from pgrunbook.base.targets import Target
    from pgrunbook.procedures import migrate

    with temporary_sandbox() as (box, tmp):
        folder = tmp / "prisma" / "migrations"
        write_history(folder, args.migrations)
        with psycopg.connect(box.url("postgres"), autocommit=True) as conn:
            conn.execute("CREATE DATABASE bench_history")
        app = App("bench", migrations="prisma", migrations_path=str(folder))
        target = Target("bench", box.url("bench_history"), sandbox=True, source="bench")
        target = replace(target, app=app)
        history = migrations.history(target)
        files = history.migrations()
        half = files[len(files) // 2 - 1].name
        migrations.upgrade(target, half)
        with db.connect(target, readonly=False) as conn:  # the applied tables hold rows
            for (name,) in conn.execute(
                "SELECT relname FROM pg_class WHERE relname ~ '^t[0-9]+$' AND relkind = 'r'"
            ).fetchall():
                conn.execute(
                    f"INSERT INTO {name} (id, a) SELECT g, 'x' FROM generate_series(1, 50) g"
                )

        def floor() -> None:
            for m in history.migrations():
                parse(m.sql)

        def status_plan_lint() -> None:
            with db.connect(target) as conn:
                st = migrations.status(conn, target)
                p = migrate.plan(st)
                checked = migrate.lint_plan(conn, p)
            assert len(p.pending) == len(files) - len(files) // 2, len(p.pending)
            results.append((len(p.pending), len(checked.statements), len(checked.findings)))

        results: list[tuple[int, int, int]] = []
        times: dict[str, list[float]] = {"parse every file (floor)": [], "status, plan, lint": []}
        for _ in range(args.repeat):
            for name, fn in (
                ("parse every file (floor)", floor),
                ("status, plan, lint", status_plan_lint),
            ):
                t0 = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - t0)
    med = {k: statistics.median(v) for k, v in times.items()}
    for k, v in times.items():
        print(f"{k:<26} median {med[k]:.3f} s  (min {min(v):.3f}, max {max(v):.3f}, n={len(v)})")
    pending, actions, found = results[-1]
    print(
        f"{len(files)} migrations, {len(files) - pending} applied, {pending} pending:"
        f" {actions} actions judged, {found} findings"
    )
    total = med["status, plan, lint"]
    print(
        f"status, plan, lint: {total:.2f} s, {total / med['parse every file (floor)']:.1f}x parsing"
        f" alone (goal < 10 s)  [{sys.platform}, {os.cpu_count()} cpus]"
    )


if __name__ == "__main__":
    main()

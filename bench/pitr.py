"""Point-in-time recovery on pgbench at scale 50 with pgbench traffic archived:

- a base backup by pgrunbook (pg_basebackup, then pg_verifybackup, then its record) against raw
  `pg_basebackup -Fp -X stream -c fast` (goal: at most 1.10x);
- a restore to a moment by pgrunbook (archive switch, pg_verifybackup again, copy, replay,
  promote) against the same by hand: copy the base backup, write the recovery settings, start,
  wait for the promotion (goal: at most 1.10x);
- the RPO the DR drill's point-in-time disaster achieves (goal: under 5 s).

Runs alternate (which goes first rotates), each after `sync`, on the same file system, and
medians are compared.

    python bench/pitr.py [--scale 50] [--traffic-s 120] [--repeat 3]
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import psycopg
from common import temporary_sandbox


def _median(xs: list[float]) -> float:
    return statistics.median(xs)


def _runs(xs: list[float]) -> str:
    return "runs " + ", ".join(f"{x:.2f}" for x in sorted(xs)) + " s"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--scale", type=int, default=50)
    parser.add_argument("--traffic-s", type=int, default=120)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--base-only", action="store_true", help="the base backup comparison only")
    args = parser.parse_args()
    with temporary_sandbox() as (box, tmp):
        from pgrunbook.archive import runner
        from pgrunbook.base import pgtools
        from pgrunbook.base.cluster import bin_dir
        from pgrunbook.base.targets import Target
        from pgrunbook.procedures import moments, pitr

        with psycopg.connect(box.url("postgres"), autocommit=True) as conn:
            conn.execute("CREATE DATABASE bench")
        url = box.url("bench")
        t0 = time.perf_counter()
        subprocess.run(
            [str(bin_dir() / "pgbench"), "-i", "-q", "-s", str(args.scale), "-d", url],
            check=True, capture_output=True,
        )  # fmt: skip
        print(f"pgbench -i -s {args.scale}: {time.perf_counter() - t0:.1f} s")
        target = Target("bench", url, sandbox=True)
        server = pitr.locate(target)
        basebackup = pgtools.choose("pg_basebackup", server.major)

        # -- base backup --------------------------------------------------------------------
        ours, raw = [], []

        def ours_once():
            os.sync()  # every run starts with nothing of the last one's left to write back
            t0 = time.perf_counter()
            taken = pitr.take_base_backup(target, server, label="bench")
            ours.append(time.perf_counter() - t0)
            shutil.rmtree(taken.path)  # as the raw one is: both start from the same disk
            return taken

        def raw_once() -> None:
            out = Path(tempfile.mkdtemp(prefix="raw-", dir=server.root))  # the same file system
            os.sync()
            t0 = time.perf_counter()
            pgtools.run(
                basebackup, ["-D", str(out / "b"), "-Fp", "-X", "stream", "-c", "fast"], url
            )
            raw.append(time.perf_counter() - t0)
            shutil.rmtree(out)

        for i in range(args.repeat):  # the order alternates: neither always runs second
            if i % 2 == 0:
                taken = ours_once()
                raw_once()
            else:
                raw_once()
                taken = ours_once()
        size = taken.size_bytes / 1e6
        print(
            f"base backup of {size:.0f} MB: pgrunbook median {_median(ours):.2f} s, raw "
            f"pg_basebackup {_median(raw):.2f} s: {_median(ours) / _median(raw):.2f}x "
            "(goal <= 1.10x; pgrunbook includes pg_verifybackup)"
        )
        print(f"  pgrunbook {_runs(ours)}; raw {_runs(raw)}")
        print(f"  fastest against fastest: {min(ours) / min(raw):.2f}x")
        if args.base_only:
            return

        # -- traffic, archived ----------------------------------------------------------------
        base = pitr.take_base_backup(target, server, label="bench-restore")
        for old in pitr.wal.base_backups(server.root):
            if old.id != base.id:
                shutil.rmtree(old.path)
        t0 = time.perf_counter()
        done = subprocess.run(
            [str(bin_dir() / "pgbench"), "-n", "-c", "2", "-T", str(args.traffic_s), "-d", url],
            check=True, capture_output=True, text=True,
        )  # fmt: skip
        tps = re.search(r"tps = ([\d.]+)", done.stdout)
        with psycopg.connect(url, autocommit=True) as conn:
            moment = conn.execute("SELECT clock_timestamp()").fetchone()[0]
            conn.execute("INSERT INTO pgbench_history (tid, bid, aid, delta) VALUES (1, 1, 1, 0)")
        segments = len(pitr.wal.segments(pitr.archive_folder(server)))
        print(
            f"pgbench traffic: {time.perf_counter() - t0:.0f} s at {tps[1] if tps else '?'} tps; "
            f"{segments} WAL segments archived"
        )
        pitr.switch_and_wait(target)

        # -- restore to a moment ----------------------------------------------------------------
        ours, unverified, raw = [], [], []

        def restore_once(verify: bool) -> None:
            os.sync()
            t0 = time.perf_counter()
            recovered = moments.restore(
                target, server, moments.Moment.parse(time=moment.isoformat()),
                verify_base_first=verify,
            )  # fmt: skip
            (ours if verify else unverified).append(time.perf_counter() - t0)
            recovered.stop()

        def by_hand_once() -> None:
            os.sync()
            raw.append(_by_hand(server, base, moment.isoformat(), server.root, url))

        steps = [lambda: restore_once(True), lambda: restore_once(False), by_hand_once]
        for i in range(args.repeat):  # rotated: each goes first, second and third in turn
            for step in steps[i % 3 :] + steps[: i % 3]:
                step()
        print(
            f"restore to a moment: pgrunbook median {_median(ours):.2f} s "
            f"({_median(unverified):.2f} s without verifying the base backup again), by hand "
            f"{_median(raw):.2f} s: {_median(ours) / _median(raw):.2f}x "
            f"({_median(unverified) / _median(raw):.2f}x) (goal <= 1.10x)"
        )
        print(f"  pgrunbook {_runs(ours)}; unverified {_runs(unverified)}; by hand {_runs(raw)}")

        # -- the drill's RPO --------------------------------------------------------------------
        result = runner.run(
            "dr_drill", "staging", {"disaster": "pitr-dropped-table", "writes_after_backup": "50"},
            progress=False,
        )  # fmt: skip
        rpo = next(f for f in result.findings if f.check == "rpo achieved")
        rto = next(f for f in result.findings if f.check == "rto achieved")
        print(f"drill ({result.outcome}): RPO {rpo.summary}; RTO {rto.summary} (goal RPO < 5 s)")


def _by_hand(server, base, moment: str, tmp: Path, url: str) -> float:
    """Restore by hand, as a runbook page would say: copy, configure, start, wait."""
    from pgrunbook.procedures import pitr

    folder = Path(tempfile.mkdtemp(prefix="hand-", dir=tmp))
    socket = Path(tempfile.mkdtemp(prefix="pgrb-hand-"))
    data = folder / "data"
    t0 = time.perf_counter()
    shutil.copytree(base.path, data)
    (data / "pgrunbook.json").unlink()
    with (data / "postgresql.auto.conf").open("a") as f:
        f.write(
            f'restore_command = \'cp "{pitr.archive_folder(server)}/%f" "%p"\'\n'
            f"recovery_target_time = '{moment}'\nrecovery_target_action = 'promote'\n"
            "archive_mode = 'off'\nlisten_addresses = ''\n"
            f"unix_socket_directories = '{socket}'\n"
        )
    (data / "recovery.signal").write_text("")
    os.chmod(data, 0o700)
    server.give(folder)
    server.give(socket)
    pitr.pg_ctl(server, ["-w", "-t", "3600", "start"], data=data, log=folder / "log")
    while True:
        try:
            where = psycopg.conninfo.make_conninfo(url, host=str(socket), dbname="postgres")
            with psycopg.connect(where) as conn:
                if not conn.execute("SELECT pg_is_in_recovery()").fetchone()[0]:
                    break
        except psycopg.OperationalError:
            pass
        time.sleep(0.1)
    took = time.perf_counter() - t0
    pitr.pg_ctl(server, ["-w", "-m", "fast", "stop"], data=data)
    shutil.rmtree(folder)
    shutil.rmtree(socket)
    return took


if __name__ == "__main__":
    main()

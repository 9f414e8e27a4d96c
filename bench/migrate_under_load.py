"""Migrations under traffic: the longest lock wait traffic sees, against lock_timeout.

Seeds N users (default 1,000,000) with their services, projects and reviews,
goes back to revision 0002, then applies 0003 and 0004 (new tables whose
foreign keys lock `users` and `services`) while client threads run short
read/write transactions on those tables, as the app would. Each traffic
transaction's latency is recorded; the longest one during the migration,
less the longest one in a baseline run of the same traffic without a
migration, is the lock wait the migration caused.

    python bench/migrate_under_load.py [--users 1000000] [--clients 4] [--lock-timeout 3s]
"""

from __future__ import annotations

import argparse
import random
import threading
import time

from common import temporary_sandbox


def traffic(url: str, stop: threading.Event, out: list, errors: list, users: int) -> None:
    import psycopg

    rng = random.Random()
    with psycopg.connect(url, autocommit=True) as conn:
        while not stop.is_set():
            uid = rng.randint(1, users)
            t0 = time.perf_counter()
            try:
                with conn.transaction():
                    conn.execute("UPDATE users SET location = location WHERE id = %s", [uid])
                    conn.execute("SELECT count(*) FROM services WHERE professional_id = %s", [uid])
                    conn.execute(
                        "UPDATE services SET price = price WHERE professional_id = %s", [uid]
                    )
            except psycopg.Error as e:
                errors.append(str(e).splitlines()[0])
            out.append((t0, time.perf_counter() - t0))


def run_traffic(url, users, clients, seconds=None, during=None):
    stop, samples, errors = threading.Event(), [], []
    threads = [
        threading.Thread(target=traffic, args=(url, stop, samples, errors, users))
        for _ in range(clients)
    ]
    for t in threads:
        t.start()
    time.sleep(1.0)  # let the traffic settle
    t0 = time.perf_counter()
    result = during() if during else time.sleep(seconds)
    t1 = time.perf_counter()
    time.sleep(0.5)
    stop.set()
    for t in threads:
        t.join()
    window = [d for start, d in samples if t0 - 0.1 <= start <= t1]
    return result, window, errors, t1 - t0


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--users", type=int, default=1_000_000)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--lock-timeout", default="3s")
    args = parser.parse_args()
    from pgrunbook.base import db, migrations
    from pgrunbook.base.targets import Target
    from pgrunbook.procedures import migrate, seed

    with temporary_sandbox() as (box, tmp):
        with db.connect(Target("a", box.url("postgres")), readonly=False) as conn:
            conn.execute("CREATE DATABASE bench")
        target = Target("bench", box.url("bench"), sandbox=True)
        migrations.upgrade(target, "head")
        t0 = time.perf_counter()
        with db.connect(target, readonly=False, statement_timeout="1h") as conn:
            seed.seed(conn, target, mode="development", users=args.users)
        migrations.downgrade(target, "0002")
        with db.connect(target, readonly=False, statement_timeout="1h") as conn:
            conn.execute("VACUUM ANALYZE")
        print(
            f"seeded {args.users:,} users and went back to 0002 in {time.perf_counter() - t0:.0f} s"
        )

        _, base, base_err, base_s = run_traffic(target.url, args.users, args.clients, seconds=10)
        with db.connect(target) as conn:
            st = migrations.status(conn)
        p = migrate.plan(st, "head")
        applied, during, errors, mig_s = run_traffic(
            target.url,
            args.users,
            args.clients,
            during=lambda: migrate.apply(
                target, p, mode="apply", blockers=[], lock_timeout=args.lock_timeout
            ),
        )
        limit = float(args.lock_timeout.rstrip("s"))
        worst, base_worst = max(during), max(base)
        print(
            f"baseline traffic: {len(base):,} transactions in {base_s:.1f} s, longest"
            f" {base_worst * 1000:.0f} ms, {len(base_err)} failed"
        )
        print(
            f"during the migration ({mig_s:.2f} s, {'; '.join(str(f) for f in applied.findings)}):"
        )
        print(
            f"  {len(during):,} transactions, longest {worst * 1000:.0f} ms, {len(errors)} failed"
            + (f" ({errors[0]})" if errors else "")
        )
        wait = max(worst - base_worst, 0)
        print(
            f"longest lock wait caused: {wait:.3f} s against lock_timeout {limit:g} s "
            f"(goal <= {limit + 1:g} s): ratio {wait / limit:.3f}"
        )


if __name__ == "__main__":
    main()

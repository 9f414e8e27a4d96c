"""Development seeding at scale: Faker pools + COPY, against a server-side floor.

Seeds N users (default 1,000,000) with their services, projects and reviews
into a fresh database on a temporary sandbox, then fills a second fresh
database with the same row counts by INSERT ... SELECT generate_series (no
client, no Faker: the floor for writing those rows and their indexes), and
prints both times and the ratio.

    python bench/seed_scale.py [--users 1000000]
"""

from __future__ import annotations

import argparse
import resource
import time

from common import temporary_sandbox

FLOOR = {
    "users": (
        "INSERT INTO users (email, user_type, first_name, last_name, phone, location)"
        " SELECT 'user' || g || '@example.com', 'client', 'First', 'Last', '+1-555-000-0000',"
        " '1 Main St, Springfield, IL' FROM generate_series(1, %(n)s) g"
    ),
    "categories": (
        "INSERT INTO categories (slug, name) SELECT 'c' || g, 'C' FROM generate_series(1, %(n)s) g"
    ),
    "services": (
        "INSERT INTO services (professional_id, category_id, title, description, price)"
        " SELECT 1 + g %% %(users)s, 1, 'Service', 'A sentence of about twelve words describing"
        " the service on offer here.', 99.5 FROM generate_series(1, %(n)s) g"
    ),
    "projects": (
        "INSERT INTO projects (client_id, title, description, status, budget_min, budget_max)"
        " SELECT 1 + g %% %(users)s, 'Project', 'A sentence of about twelve words describing"
        " the project here.', 'open', 100, 900 FROM generate_series(1, %(n)s) g"
    ),
    "reviews": (
        "INSERT INTO reviews (service_id, professional_id, client_id, rating, comment)"
        " SELECT 1 + g %% %(services)s, 1, 1, 5, 'Great work, on time and tidy.'"
        " FROM generate_series(1, %(n)s) g"
    ),
}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--users", type=int, default=1_000_000)
    args = parser.parse_args()
    from psycopg import sql

    from pgrunbook.base import db, migrations
    from pgrunbook.base.targets import Target
    from pgrunbook.procedures import seed

    with temporary_sandbox() as (box, tmp):
        admin = Target("admin", box.url("postgres"), sandbox=True)
        with db.connect(admin, readonly=False) as conn:
            for name in ("bench_seed", "bench_floor"):
                conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        seeded = Target("bench_seed", box.url("bench_seed"), sandbox=True)
        floor = Target("bench_floor", box.url("bench_floor"), sandbox=True)
        for t in (seeded, floor):
            migrations.upgrade(t, "head")

        t0 = time.perf_counter()
        with db.connect(seeded, readonly=False, statement_timeout="1h") as conn:
            result = seed.seed(conn, seeded, mode="development", users=args.users)
        t_seed = time.perf_counter() - t0
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024

        t0 = time.perf_counter()
        with db.connect(floor, readonly=False, statement_timeout="1h") as conn, conn.transaction():
            n = result.inserted
            for table, query in FLOOR.items():
                conn.execute(query, {"n": n[table], "users": n["users"], "services": n["services"]})
        t_floor = time.perf_counter() - t0

        rows = result.total
        print(f"rows: {n} (total {rows:,})")
        print(
            f"seed (Faker pools + COPY): {t_seed:.1f} s, {rows / t_seed:,.0f} rows/s, "
            f"client peak RSS {peak / 2**20:.0f} MiB"
        )
        print(f"floor (INSERT ... SELECT generate_series, same row counts): {t_floor:.1f} s")
        print(f"seed / floor ratio: {t_seed / t_floor:.2f}x")


if __name__ == "__main__":
    main()

"""Seeding the Fixia schema.

`production` mode inserts only the essential categories, is idempotent and
never inserts user data. `development` mode generates realistic users,
services, projects and reviews with Faker, streamed into the server with COPY
(a million users with their related rows in about two minutes). Faker draws pools of names,
streets, cities and sentences once; rows are combined from the pools with a
seeded random generator, so a given seed always gives the same data.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import psycopg
from psycopg import sql

from ..base import display
from ..base.errors import SeedRefused
from ..base.findings import Finding, Status
from ..base.targets import Target

DEFAULT_USERS = 1000

TABLES = ("users", "categories", "services", "projects", "reviews")

CATEGORIES = (
    ("plumbing", "Plumbing", "Leaks, pipes, water heaters and fixtures"),
    ("electrical", "Electrical", "Wiring, outlets, lighting and panels"),
    ("carpentry", "Carpentry", "Furniture, doors, shelving and framing"),
    ("cleaning", "Cleaning", "Homes, offices and move-out cleaning"),
    ("painting", "Painting", "Interior and exterior painting"),
    ("gardening", "Gardening", "Lawns, hedges, planting and irrigation"),
    ("moving", "Moving", "Packing, loading and transport"),
    ("appliance-repair", "Appliance repair", "Washers, fridges, ovens and dryers"),
    ("locksmith", "Locksmith", "Locks, keys and access control"),
    ("hvac", "Heating and cooling", "Boilers, air conditioning and ventilation"),
    ("it-support", "IT support", "Computers, networks and smart homes"),
    ("tutoring", "Tutoring", "Lessons in school subjects, languages and music"),
)
USER_MIX = (("client", 69), ("professional", 30), ("admin", 1))
STATUS_MIX = (("open", 35), ("in_progress", 20), ("completed", 30), ("draft", 10), ("cancelled", 5))
RATING_MIX = ((5, 45), (4, 30), (3, 13), (2, 7), (1, 5))


@dataclass(frozen=True)
class SeedResult:
    mode: str
    inserted: dict[str, int] = field(default_factory=dict)

    @property
    def total(self) -> int:
        return sum(self.inserted.values())

    def _repr_html_(self) -> str:
        return f"<p>{self.mode} mode, rows inserted:</p>" + display.mapping_html(
            self.inserted, "table", "rows inserted"
        )


def seed(
    conn: psycopg.Connection,
    target: Target,
    *,
    mode: str = "production",
    users: int = 0,
    seed: int = 1,
) -> SeedResult:
    """Seed `target` through `conn` in one transaction (a savepoint if one is open)."""
    if mode == "production":
        if users:
            raise SeedRefused(
                "production seeding never inserts user data: drop users=, or use mode=development "
                "on a development or sandbox target"
            )
        with conn.transaction():
            return SeedResult(mode, {"categories": _categories(conn)})
    if mode != "development":
        raise ValueError(f"unknown seed mode {mode!r}: use 'production' or 'development'")
    if target.protected and not target.sandbox:
        raise SeedRefused(
            f"target {target.name!r} is protected: user data is never seeded there; "
            "seed a development, staging or sandbox target instead"
        )
    users = users or DEFAULT_USERS
    with conn.transaction():
        inserted = {"categories": _categories(conn)}
        inserted.update(_development(conn, users, random.Random(seed), seed))
    return SeedResult(mode, inserted)


def check(target: Target, *, mode: str, users: int = 0, confirm: str = "") -> Finding:
    """Refuse what `seed` would refuse, before anything is written."""
    if mode not in ("production", "development"):
        raise ValueError(f"unknown seed mode {mode!r}: use 'production' or 'development'")
    if mode == "production" and users:
        raise SeedRefused(
            "production seeding never inserts user data: set users=0 or use mode=development"
        )
    if mode == "development":
        if target.protected and (not target.sandbox or target.protected_as):
            also = (
                f" (it reaches {target.protected_as!r}'s database)" if target.protected_as else ""
            )
            raise SeedRefused(
                f"target {target.name!r} is protected{also}: user data is never seeded there"
            )
        target.require_confirm(confirm, action="seeding demo users")
        what = f"{users or DEFAULT_USERS} demo users with their services, projects and reviews"
    else:
        what = "essential categories only (idempotent, no user data)"
    return Finding("seed plan", Status.OK, f"{mode} mode on {target.name!r}: {what}")


def verify(before: dict[str, int], after: dict[str, int], result: SeedResult) -> Finding:
    """The row counts moved by exactly what the seed reports it inserted."""
    moved = {t: after[t] - before[t] for t in TABLES}
    claimed = {t: result.inserted.get(t, 0) for t in TABLES}
    if moved != claimed:
        return Finding("seed", Status.CRIT, f"row counts moved by {moved}, seed reported {claimed}")
    if result.total == 0:
        return Finding(
            "seed", Status.OK, "essential data already present: nothing inserted", value=0
        )
    listed = ", ".join(f"{n} {t}" for t, n in claimed.items() if n)
    return Finding("seed", Status.OK, f"inserted {listed}", value=result.total)


class Counts(dict):
    """Rows per table, shown in a report as a table (not a Python dict)."""

    def _repr_html_(self) -> str:
        rows = "".join(
            f"<tr><td>{t}</td><td style='text-align: right'>{n:,}</td></tr>"
            for t, n in self.items()
        )
        return f"<table><tr><th>table</th><th>rows</th></tr>{rows}</table>"


def counts(conn: psycopg.Connection) -> Counts:
    """Row count of every Fixia table."""
    return Counts(
        {
            t: conn.execute(
                sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(t))
            ).fetchone()[0]
            for t in TABLES
        }
    )


def _categories(conn: psycopg.Connection) -> int:
    with conn.cursor() as cur:
        cur.executemany(
            "INSERT INTO categories (slug, name, description) VALUES (%s, %s, %s)"
            " ON CONFLICT (slug) DO NOTHING",
            CATEGORIES,
        )
        return max(cur.rowcount, 0)


@dataclass
class _Pools:
    first: list[str]
    last: list[str]
    streets: list[str]
    cities: list[str]
    domains: list[str]
    sentences: list[str]
    words: list[str]


def _pools(seed: int) -> _Pools:
    from faker import Faker  # here: spares Faker (~160 ms) at start-up

    fake = Faker("en_US")
    fake.seed_instance(seed)
    return _Pools(
        first=sorted({fake.first_name() for _ in range(800)}),
        last=sorted({fake.last_name() for _ in range(800)}),
        streets=[fake.street_address() for _ in range(600)],
        cities=[f"{fake.city()}, {fake.state_abbr()}" for _ in range(250)],
        domains=sorted({fake.free_email_domain() for _ in range(50)}),
        sentences=[fake.sentence(nb_words=12) for _ in range(400)],
        words=sorted({fake.word() for _ in range(300)}),
    )


def _weighted(rng: random.Random, mix, k: int) -> list:
    values, weights = zip(*mix, strict=True)
    return rng.choices(values, weights, k=k)


def _next_id(conn: psycopg.Connection, table: str) -> int:
    query = sql.SQL("SELECT coalesce(max(id), 0) + 1 FROM {}").format(sql.Identifier(table))
    return conn.execute(query).fetchone()[0]


def _copy(conn: psycopg.Connection, table: str, columns: tuple[str, ...], rows: Iterator) -> int:
    statement = sql.SQL("COPY {} ({}) FROM STDIN").format(
        sql.Identifier(table), sql.SQL(", ").join(map(sql.Identifier, columns))
    )
    n = 0
    with conn.cursor().copy(statement) as copy:
        for row in rows:
            copy.write_row(row)
            n += 1
    conn.execute(
        sql.SQL("SELECT setval(pg_get_serial_sequence({}, 'id'), (SELECT max(id) FROM {}))").format(
            sql.Literal(table), sql.Identifier(table)
        )
    )
    return n


def _development(
    conn: psycopg.Connection, users: int, rng: random.Random, seed: int
) -> dict[str, int]:
    p = _pools(seed)
    now = datetime.now(UTC).replace(microsecond=0)
    categories = [r[0] for r in conn.execute("SELECT id FROM categories ORDER BY id")]
    first_user = _next_id(conn, "users")
    kinds = _weighted(rng, USER_MIX, users)
    user_ids = range(first_user, first_user + users)
    pros = [uid for uid, kind in zip(user_ids, kinds, strict=True) if kind == "professional"] or [
        first_user
    ]
    clients = [uid for uid, kind in zip(user_ids, kinds, strict=True) if kind == "client"] or [
        first_user
    ]

    def user_rows():
        for uid, kind in zip(user_ids, kinds, strict=True):
            first, last = rng.choice(p.first), rng.choice(p.last)
            email = f"{first}.{last}.{uid}@{rng.choice(p.domains)}".lower()
            phone = f"+1-{rng.randint(201, 989)}-{rng.randint(200, 999)}-{rng.randint(0, 9999):04d}"
            location = f"{rng.choice(p.streets)}, {rng.choice(p.cities)}"
            created = now - timedelta(seconds=rng.randint(0, 3 * 365 * 86400))
            yield (uid, email, kind, first, last, phone, location, created)

    inserted = {
        "users": _copy(
            conn,
            "users",
            (
                "id",
                "email",
                "user_type",
                "first_name",
                "last_name",
                "phone",
                "location",
                "created_at",
            ),
            user_rows(),
        )
    }
    first_service = _next_id(conn, "services")
    service_owner: list[tuple[int, bool]] = []

    def service_rows():
        sid = first_service
        for pro in pros:
            for _ in range(rng.randint(1, 3)):
                words = " ".join(rng.sample(p.words, 2))
                price = round(rng.uniform(20, 500), 2)
                created = now - timedelta(seconds=rng.randint(0, 2 * 365 * 86400))
                active = rng.random() < 0.9
                service_owner.append((pro, active))
                yield (
                    sid,
                    pro,
                    rng.choice(categories),
                    f"{words.title()} service",
                    rng.choice(p.sentences),
                    price,
                    active,
                    created,
                )
                sid += 1

    inserted["services"] = _copy(
        conn,
        "services",
        (
            "id",
            "professional_id",
            "category_id",
            "title",
            "description",
            "price",
            "active",
            "created_at",
        ),
        service_rows(),
    )

    def project_rows():
        for client in clients:
            for _ in range(rng.choice((0, 1, 1, 2))):
                low = rng.randint(1, 50) * 100
                created = now - timedelta(seconds=rng.randint(0, 2 * 365 * 86400))
                status = _weighted(rng, STATUS_MIX, 1)[0]
                yield (
                    client,
                    " ".join(rng.sample(p.words, 3)).capitalize(),
                    rng.choice(p.sentences),
                    status,
                    low,
                    low + rng.randint(0, 30) * 100,
                    created,
                )

    inserted["projects"] = _copy(
        conn,
        "projects",
        ("client_id", "title", "description", "status", "budget_min", "budget_max", "created_at"),
        project_rows(),
    )

    def review_rows():
        for offset, (pro, active) in enumerate(service_owner):
            for _ in range(
                rng.choice((0, 1, 1, 2, 3)) if active else 0
            ):  # reviews are of active services
                created = now - timedelta(seconds=rng.randint(0, 365 * 86400))
                comment = rng.choice(p.sentences) if rng.random() < 0.8 else None
                yield (
                    first_service + offset,
                    pro,
                    rng.choice(clients),
                    _weighted(rng, RATING_MIX, 1)[0],
                    comment,
                    created,
                )

    inserted["reviews"] = _copy(
        conn,
        "reviews",
        ("service_id", "professional_id", "client_id", "rating", "comment", "created_at"),
        review_rows(),
    )
    return inserted

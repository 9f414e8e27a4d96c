"""The schema zoo: a database using what real schemas use (tests/fixtures/zoo.sql), and faults to
plant in it."""

from __future__ import annotations

import uuid
from pathlib import Path

import psycopg
from psycopg import sql

ZOO_SQL = Path(__file__).parent / "fixtures" / "zoo.sql"
ROLES = ("zoo_owner", "zoo_app", "zoo_readonly")


def make_roles(admin_url: str) -> None:
    with psycopg.connect(admin_url, autocommit=True) as conn:
        for role in ROLES:
            if not conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", [role]).fetchone():
                conn.execute(sql.SQL("CREATE ROLE {} NOLOGIN").format(sql.Identifier(role)))


def create(admin_url: str, name: str | None = None) -> str:
    """A new database holding the zoo on the server of `admin_url`; its URL."""
    from pgrunbook.base import db

    name = name or f"zoo_{uuid.uuid4().hex[:8]}"
    make_roles(admin_url)
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        conn.execute(
            sql.SQL("GRANT CREATE ON DATABASE {} TO zoo_owner").format(sql.Identifier(name))
        )
    url = db.with_database(admin_url, name)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(ZOO_SQL.read_text())
    return url


def drop(admin_url: str, url: str) -> None:
    from urllib.parse import urlsplit

    name = urlsplit(url).path.lstrip("/")
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )


# -- faults, each found and named by key -----------------------------------------------------------


def plant_orphan(url: str) -> None:
    """An order line of the 2026 partition pointing at a product that does not exist, under a NOT
    VALID FK."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("ALTER TABLE public.order_lines DROP CONSTRAINT order_lines_sku_fkey")
        conn.execute(
            "INSERT INTO public.order_lines SELECT id, placed_at, region, 9, 'SKU-GONE', 1"
            " FROM public.order_2026 ORDER BY id LIMIT 1"
        )
        conn.execute(
            "ALTER TABLE public.order_lines ADD CONSTRAINT order_lines_sku_fkey FOREIGN KEY (sku)"
            " REFERENCES public.products (sku) NOT VALID"
        )


def plant_sequence_behind(url: str) -> None:
    """The not-owned sequence of "order" set behind the column's max."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("SELECT setval('public.legacy_id_seq', 5)")


def plant_domain_violation(url: str) -> None:
    """A customer whose code breaks the NOT VALID domain CHECK, put there before the CHECK
    existed."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("ALTER DOMAIN public.short_code DROP CONSTRAINT short_code_form")
        conn.execute("UPDATE public.customers SET code = 'bad code' WHERE id = 42")
        conn.execute(
            "ALTER DOMAIN public.short_code ADD CONSTRAINT short_code_form"
            " CHECK (VALUE ~ '^C[0-9]+$') NOT VALID"
        )


def plant_invalid_index(url: str) -> None:
    """A unique index whose CONCURRENTLY build failed on duplicates: left invalid."""
    with psycopg.connect(url, autocommit=True) as conn:
        try:
            conn.execute(
                'CREATE UNIQUE INDEX CONCURRENTLY "ix_Invoice_amount" ON ledger.entries (account)'
            )
        except psycopg.errors.UniqueViolation:
            pass


def change_rows(url: str, n: int = 3) -> list[str]:
    """Change `n` rows of a partition of "order"; their keys as the compare names them."""
    with psycopg.connect(url, autocommit=True) as conn:
        rows = conn.execute(
            'UPDATE public."order" SET total = total + 1 WHERE id IN'
            " (SELECT id FROM public.order_2025_eu ORDER BY id LIMIT %s) RETURNING id",
            [n],
        ).fetchall()
    return sorted(str(r[0]) for r in rows)

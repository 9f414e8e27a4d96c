"""Seeding: production mode is idempotent and never inserts user data; development mode is real."""

import psycopg
import pytest

from pgrunbook.base import db
from pgrunbook.base.errors import ConfirmationRequired, SeedRefused
from pgrunbook.base.targets import Target
from pgrunbook.procedures import seed


def _real_production(scratch: Target) -> Target:
    return Target("production", scratch.url, protected=True, sandbox=False, source="$DATABASE_URL")


def test_production_mode_is_idempotent_and_inserts_no_users(migrated):
    with db.connect(migrated, readonly=False) as conn:
        first = seed.seed(conn, _real_production(migrated), mode="production")
        second = seed.seed(conn, _real_production(migrated), mode="production")
        counts = seed.counts(conn)
    assert first.inserted == {"categories": len(seed.CATEGORIES)}
    assert second.total == 0
    assert counts == {
        "users": 0,
        "categories": len(seed.CATEGORIES),
        "services": 0,
        "projects": 0,
        "reviews": 0,
    }


def test_production_mode_refuses_user_data(migrated):
    with db.connect(migrated, readonly=False) as conn:
        with pytest.raises(SeedRefused):
            seed.seed(conn, migrated, mode="production", users=10)
        assert seed.counts(conn)["categories"] == 0


def test_development_mode_refused_on_a_protected_real_target(migrated):
    target = _real_production(migrated)
    with db.connect(migrated, readonly=False) as conn:
        with pytest.raises(SeedRefused):
            seed.seed(conn, target, mode="development", users=10)
        assert seed.counts(conn)["users"] == 0
    with pytest.raises(SeedRefused):
        seed.check(target, mode="development", users=10)


def test_protected_sandbox_target_needs_confirm(migrated):
    target = Target("production", migrated.url, protected=True, sandbox=True)
    with pytest.raises(ConfirmationRequired):
        seed.check(target, mode="development")
    assert seed.check(target, mode="development", confirm="production").status.name == "OK"


def test_development_mode_generates_consistent_data(migrated):
    with db.connect(migrated, readonly=False) as conn:
        result = seed.seed(conn, migrated, mode="development", users=500, seed=7)
        counts = seed.counts(conn)
        orphans = conn.execute(
            "SELECT count(*) FROM reviews r JOIN services s ON s.id = r.service_id"
            " WHERE s.professional_id <> r.professional_id"
        ).fetchone()[0]
        kinds = dict(conn.execute("SELECT user_type, count(*) FROM users GROUP BY 1").fetchall())
        next_id = conn.execute("SELECT nextval(pg_get_serial_sequence('users', 'id'))").fetchone()[
            0
        ]
    assert counts["users"] == 500 and result.inserted["users"] == 500
    assert counts["services"] > 100 and counts["projects"] > 100 and counts["reviews"] > 100
    assert orphans == 0
    assert set(kinds) <= {"client", "professional", "admin"} and kinds["professional"] > 50
    assert next_id == 501  # the identity sequence follows the copied ids


def test_development_mode_is_deterministic_and_appends(migrated):
    with db.connect(migrated, readonly=False) as conn:
        seed.seed(conn, migrated, mode="development", users=50, seed=3)
        first = conn.execute(
            "SELECT first_name, last_name, phone FROM users ORDER BY id"
        ).fetchall()
        seed.seed(conn, migrated, mode="development", users=50, seed=3)
        second = conn.execute(
            "SELECT first_name, last_name, phone FROM users WHERE id > 50 ORDER BY id"
        ).fetchall()
        emails = conn.execute("SELECT count(DISTINCT email), count(*) FROM users").fetchone()
    assert first == second
    assert emails == (100, 100)


def test_a_failed_seed_leaves_nothing(migrated):
    with db.connect(migrated, readonly=False, statement_timeout="1ms") as conn:
        with pytest.raises(psycopg.errors.QueryCanceled):
            seed.seed(conn, migrated, mode="development", users=20000)
    with db.connect(migrated) as conn:
        assert seed.counts(conn) == dict.fromkeys(seed.TABLES, 0)

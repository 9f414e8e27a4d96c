"""Targets: names to URLs, protection, and configuration from pgrunbook.toml."""

import shutil
from pathlib import Path

import pytest

from pgrunbook.base import targets
from pgrunbook.base.errors import (
    ConfigError,
    ConfirmationRequired,
    TargetNotConfigured,
    UnknownTarget,
)

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def home(tmp_path, monkeypatch):
    """A project home of its own, to write a pgrunbook.toml into."""
    (tmp_path / "runbooks").mkdir()
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    monkeypatch.setenv("PGRUNBOOK_HOME", str(tmp_path))
    return tmp_path


def test_production_and_staging_fall_back_to_the_sandbox(sandbox):
    prod, staging, box = (targets.resolve(n) for n in ("production", "staging", "sandbox"))
    assert prod.protected and prod.sandbox and prod.database == "production"
    assert not staging.protected and staging.database == "staging"
    assert not box.protected and box.database == "sandbox"  # the playground, not production


def test_the_url_variable_wins(sandbox, monkeypatch):
    monkeypatch.setenv("DATABASE_URL", "postgresql://app:pw@db.internal:5432/fixia")
    prod = targets.resolve("production")
    assert prod.protected and not prod.sandbox and prod.source == "$DATABASE_URL"
    assert "pw" not in prod.display_url and "pw" not in repr(prod)


def test_custom_target_from_pgrunbook_toml(home, monkeypatch):
    (home / "pgrunbook.toml").write_text(
        '[targets.analytics]\nurl_env = "ANALYTICS_URL"\nprotected = true\n'
    )
    with pytest.raises(TargetNotConfigured, match=r"\$ANALYTICS_URL, which is not set"):
        targets.resolve("analytics")
    monkeypatch.setenv("ANALYTICS_URL", "postgresql://ro@warehouse/analytics")
    t = targets.resolve("analytics")
    assert t.protected and t.database == "analytics" and "analytics" in targets.names()


def test_a_target_without_url_env_is_a_config_error(home):
    (home / "pgrunbook.toml").write_text("[targets.broken]\nprotected = true\n")
    with pytest.raises(ConfigError, match="url_env"):
        targets.resolve("broken")


def test_unknown_target_suggests_the_close_one():
    with pytest.raises(UnknownTarget, match="did you mean 'staging'"):
        targets.resolve("stagin")


def test_protected_targets_need_confirm():
    t = targets.Target("production", "postgresql://x@h/db", protected=True)
    with pytest.raises(ConfirmationRequired, match="confirm='production'"):
        t.require_confirm("", action="restore")
    t.require_confirm("production", action="restore")
    targets.Target("staging", "postgresql://x@h/db").require_confirm("", action="restore")


def test_the_sandbox_target_is_a_playground_and_the_sandboxs_production_is_protected(
    sandbox, tmp_path, monkeypatch, capsys
):
    """`--target sandbox` seeds its own database; the sandbox's production needs a confirm for
    demo users, as any protected target does, and is left as it was when refused."""
    import psycopg

    from pgrunbook.cli import main

    monkeypatch.setenv("PGRUNBOOK_REPORTS_DIR", str(tmp_path / "reports"))

    def users(database: str) -> int:
        with psycopg.connect(sandbox.url(database)) as conn:
            return conn.execute("SELECT count(*) FROM users").fetchone()[0]

    production, playground = users("production"), users("sandbox")
    assert main(["seed", "--target", "production", "--mode", "development", "--users", "5"]) == 3
    assert "run `pgrunbook seed --target production --mode development --users 5 --confirm" in (
        capsys.readouterr().err
    )
    assert users("production") == production and not (tmp_path / "reports").exists()
    assert main(["seed", "--target", "sandbox", "--mode", "development", "--users", "5"]) == 0
    assert users("sandbox") == playground + 5 and users("production") == production

    # a sandbox made before the playground existed gets it on its next start
    with psycopg.connect(sandbox.url("postgres"), autocommit=True) as conn:
        conn.execute("DROP DATABASE sandbox WITH (FORCE)")
    sandbox.ensure(demo_users=300)
    assert users("sandbox") == 300


@pytest.mark.parametrize(
    "text, said",
    [
        ("[targets.staging]\nretention_days = -5\n", "retention_days = -5 in"),
        ('[targets.staging]\nprotected = "yes"\n', "protected = 'yes' in [targets.staging]"),
        ('[targets.staging]\nprotected = "false"\n', "write protected = true or protected ="),
        ("[targets.staging]\nretention_day = 3\n", "did you mean 'retention_days'"),
        ("rpo_hours = 3\n", "unknown setting 'rpo_hours'"),
        ('encrypt = "no"\n', "write encrypt = true or encrypt = false"),
        ("storage_warn_pct = 95\nstorage_crit_pct = 90\n", "at or below the CRIT"),
        ('rpo_h = 3\n[tool.pgrunbook.targets.x]\nurl_env = "X"\n', "mixes [tool.*] tables"),
    ],
)
def test_a_bad_configuration_is_refused_before_anything_is_written(
    sandbox, tmp_path, monkeypatch, capsys, text, said
):
    """In the file PGRUNBOOK_CONFIG names as in pgrunbook.toml: one line, exit 3, no report."""
    from pgrunbook.cli import main

    config = tmp_path / f"bad-{abs(hash(text))}.toml"
    config.write_text(text)
    monkeypatch.setenv("PGRUNBOOK_CONFIG", str(config))
    monkeypatch.setenv("PGRUNBOOK_REPORTS_DIR", str(tmp_path / "reports"))
    monkeypatch.setenv("PGRUNBOOK_BACKUPS_DIR", str(tmp_path / "backups"))
    assert main(["run", "backup", "--target", "staging"]) == 3
    err = capsys.readouterr().err.strip()
    assert said in err and "\n" not in err, err
    assert not (tmp_path / "reports").exists() or not any((tmp_path / "reports").rglob("*"))
    assert not (tmp_path / "backups").exists() or not any((tmp_path / "backups").rglob("*"))


def test_a_config_file_written_as_pyproject_holds_it_is_read(tmp_path, monkeypatch):
    """[tool.pgrunbook.targets.X] in the file PGRUNBOOK_CONFIG names (copied from a
    pyproject.toml) is read as [targets.X] is, never as nothing."""
    config = tmp_path / "as-pyproject.toml"
    config.write_text('[tool.pgrunbook.targets.tenant_a]\nurl_env = "TENANT_A_URL"\n')
    monkeypatch.setenv("PGRUNBOOK_CONFIG", str(config))
    monkeypatch.setenv("TENANT_A_URL", "postgresql://app@db.internal/tenant_a")
    assert targets.resolve("tenant_a").database == "tenant_a"

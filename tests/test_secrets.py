"""No password ever lands in a report, its HTML, the index or the log."""

import os
from pathlib import Path
from urllib.parse import quote

import psycopg
import pytest

from pgrunbook.archive import runner
from pgrunbook.base import secrets
from pgrunbook.cli import main
from tests.conftest import drop_role, password_role, written_files

PASSWORD = "Tr0ub4dor&3x/pw"


@pytest.fixture
def password_target(sandbox, monkeypatch):
    """STAGING_DATABASE_URL with a password the server really checks (SCRAM)."""
    userinfo = password_role(sandbox, "pwsecret", PASSWORD, superuser=True)
    url = sandbox.url("staging").replace("postgres:@", userinfo)
    monkeypatch.setenv("STAGING_DATABASE_URL", url)
    with psycopg.connect(url) as conn:  # the password is really used
        assert conn.execute("SELECT current_user").fetchone()[0] == "pwsecret"
    yield url
    drop_role(sandbox, "pwsecret")


FORMS = {PASSWORD, quote(PASSWORD, safe=""), "Tr0ub4dor&amp;3x", "Tr0ub4dor\\u00263x"}


def _kv(url: str) -> str:
    from psycopg.conninfo import conninfo_to_dict, make_conninfo

    return make_conninfo(**conninfo_to_dict(url))


def _without_password(url: str) -> dict[str, str]:
    from psycopg.conninfo import conninfo_to_dict

    params = conninfo_to_dict(url)
    params.pop("password")
    return params


@pytest.mark.parametrize("form", ["key=value", "PGPASSWORD", "pgpass", "PGSERVICE"])
def test_every_form_libpq_accepts_works_and_writes_no_password(
    password_target, form, monkeypatch, tmp_path, reports_dir, capfd
):
    from psycopg.conninfo import make_conninfo

    params = _without_password(password_target)
    if form == "key=value":
        monkeypatch.setenv("STAGING_DATABASE_URL", _kv(password_target))
    elif form == "PGPASSWORD":
        monkeypatch.setenv("STAGING_DATABASE_URL", make_conninfo(**params))
        monkeypatch.setenv("PGPASSWORD", PASSWORD)
    elif form == "pgpass":
        monkeypatch.setenv("STAGING_DATABASE_URL", make_conninfo(**params))
        passfile = tmp_path / "pgpass"
        escaped = PASSWORD.replace("\\", "\\\\").replace(":", "\\:")
        passfile.write_text(f"*:*:*:{params['user']}:{escaped}\n")
        passfile.chmod(0o600)
        monkeypatch.setenv("PGPASSFILE", str(passfile))
    else:
        service = tmp_path / "pg_service.conf"
        service.write_text(
            "[fixia-staging]\n"
            + "".join(f"{k}={v}\n" for k, v in {**params, "password": PASSWORD}.items())
        )
        monkeypatch.setenv("PGSERVICEFILE", str(service))
        monkeypatch.setenv("STAGING_DATABASE_URL", "service=fixia-staging")
    before = set(written_files(reports_dir))
    # backup runs pg_dump and, to verify, pg_restore; restore prints and records its source
    for args in (
        (["backup", "-p", "format", "custom"], ["restore"])
        if form == "key=value"
        else (["backup", "-p", "format", "custom"],)
    ):
        code = main(["run", *args, "--target", "staging", "--no-progress"])
        assert code in (0, 1), (form, args)
    log = capfd.readouterr()
    files = [
        f
        for f in written_files(reports_dir, Path(os.environ["PGRUNBOOK_BACKUPS_DIR"]))
        if f not in before
    ]
    assert any(f.name == "manifest.json" for f in files)
    for f in files:
        text = f.read_text(errors="replace")
        assert not any(form in text for form in FORMS), f
    assert not any(form in log.out + log.err for form in FORMS)
    from pgrunbook.base import db, targets

    staging = targets.resolve("staging")
    assert staging.database == "staging"
    with psycopg.connect(db.with_database(staging.url, "postgres"), autocommit=True) as conn:
        for (name,) in conn.execute(
            "SELECT datname FROM pg_database WHERE datname LIKE 'staging\\_restored\\_%'"
        ):
            conn.execute(f'DROP DATABASE "{name}" WITH (FORCE)')


def test_every_runbook_on_a_password_url_writes_no_password(password_target, reports_dir, capfd):
    forms = FORMS
    for name in runner.available():
        code = main(["run", name, "--target", "staging", "--no-progress"])
        assert code in (0, 1, 2), name
    main(["reports", "list"])
    main(["run", "status", "--target", "staging", "-p", "pool_limit", "oops"])
    log = capfd.readouterr()
    backups_dir = Path(os.environ["PGRUNBOOK_BACKUPS_DIR"])
    pitr = Path(os.environ["PGRUNBOOK_PITR_DIR"])  # its records, logs and settings, not the WAL
    files = written_files(reports_dir, backups_dir) + [
        f
        for f in written_files(pitr)
        if f.suffix in (".json", ".jsonl", ".log", ".conf") or f.name in ("log", "backup_label")
    ]
    assert any(
        f.name == "manifest.json" for f in files
    )  # the backup runbook's files are checked too
    assert len([f for f in files if f.suffix == ".ipynb"]) >= len(runner.available())
    assert any(f.name == "pgrunbook.json" for f in files)  # a base backup's record, and its copy
    assert any(f.name == "log" for f in files)  # of the server's log, are checked too
    for f in files:
        text = f.read_text(errors="replace")
        assert not any(form in text for form in forms), f
    assert not any(form in log.out + log.err for form in forms)


@pytest.mark.parametrize(
    "text, hidden",
    [
        ("postgresql://app:s3cret@db:5432/x", "s3cret"),
        ("host=db password=s3cret dbname=x", "s3cret"),
        ("postgres+psycopg://app:s3cret@db/x", "s3cret"),
    ],
)
def test_redact_masks_credentials_it_does_not_know(text, hidden):
    assert hidden not in secrets.redact(text)


def test_redact_masks_known_passwords_anywhere(monkeypatch):
    monkeypatch.setenv("DATABASE_URL", "postgresql://app:K9-unique-pw@db/x")
    assert secrets.redact("error near K9-unique-pw in text") == f"error near {secrets.MASK} in text"

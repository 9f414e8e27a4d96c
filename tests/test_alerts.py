"""Alerts to real receivers (an SMTP server and a webhook, started here): one message when a
check turns CRIT, none on the repeat, one when it is resolved, none for a channel whose filter
excludes the target, a receiver that refuses (the run's verdict unchanged, the report says so),
and no secret in any message."""

from __future__ import annotations

import json
import os
from datetime import datetime, timedelta

import psycopg
import pytest

from pgrunbook.archive import alerts, runner
from pgrunbook.cli import main

from .receivers import Mailbox, Webhook

TOKEN = "T0KEN-s3cr3t-9931"


@pytest.fixture
def channels(tmp_path, monkeypatch, sandbox):
    """Three channels: e-mail for staging's CRITs, a webhook for any WARN, one filtered to
    production only, and one whose receiver refuses connections."""
    with Mailbox() as mail, Webhook() as hook:
        config = tmp_path / "alerts.toml"
        config.write_text(
            '[notify]\nsite_url = "https://reports.example.com/pgrunbook"\n\n'
            '[notify.channels.ops]\nurl_env = "OPS_MAIL"\nmin_status = "CRIT"\n'
            'targets = ["staging"]\nrepeat_hours = 24\n\n'
            '[notify.channels.chat]\nurl_env = "CHAT_HOOK"\nmin_status = "WARN"\n\n'
            '[notify.channels.prod]\nurl_env = "PROD_HOOK"\ntargets = ["production"]\n\n'
            '[notify.channels.broken]\nurl_env = "BROKEN_HOOK"\nrunbooks = ["health"]\n'
        )
        monkeypatch.setenv("PGRUNBOOK_CONFIG", str(config))
        monkeypatch.setenv("OPS_MAIL", mail.url())
        monkeypatch.setenv("CHAT_HOOK", hook.url(f"chat?token={TOKEN}"))
        monkeypatch.setenv("PROD_HOOK", hook.url(f"prod?token={TOKEN}"))
        monkeypatch.setenv("BROKEN_HOOK", f"json://127.0.0.1:1/refused?token={TOKEN}")
        monkeypatch.setenv("PGRUNBOOK_REPORTS_DIR", str(tmp_path / "reports"))
        yield mail, hook


def _health(**params) -> runner.RunResult:
    return runner.run("health", "staging", {k: str(v) for k, v in params.items()}, progress=False)


def test_a_crit_alerts_once_not_on_the_repeat_and_its_end_is_said(channels, sandbox, capsys):
    mail, hook = channels
    app = psycopg.connect(sandbox.url("staging"))  # a session of the app's fills a pool of one
    first = _health(pool_limit=1)  # connections CRIT
    by = {f.check: f for f in first.findings}
    assert by["connections"].status.name == "CRIT"
    assert len(mail.messages) == 1
    message = mail.messages[0]
    assert "Subject: [CRIT] health on staging" in message and "CRIT connections:" in message
    assert "https://reports.example.com/pgrunbook/health/" in message  # the report's link
    chat = len(hook.posts)
    assert chat == 1 and hook.posts[0]["title"].startswith("[CRIT] health on staging")

    again = _health(pool_limit=1)  # the same state: nothing new
    assert again.exit_code == first.exit_code
    assert len(mail.messages) == 1
    # (other checks of the shared sandbox may move meanwhile: the repeat is about this one)
    assert not [p for p in hook.posts[chat:] if "connections" in p["message"]]
    # a channel down is said on the console of the person who ran it, without its secret
    from pgrunbook.cli import main

    capsys.readouterr()
    main(["run", "health", "--target", "staging", "--no-progress", "-p", "pool_limit", "1"])
    err = capsys.readouterr().err
    assert "pgrunbook: alert to broken not delivered: " in err and TOKEN not in err, err
    assert len(mail.messages) == 1

    # repeat_hours later, still CRIT: said again (the state's clock moved back 25 h)
    state = alerts.state_path()
    moved = json.loads(state.read_text())
    for known in moved.values():
        for value in known.values():
            value["sent"] = (
                datetime.fromisoformat(value["sent"]) - timedelta(hours=25)
            ).isoformat()
    state.write_text(json.dumps(moved))
    _health(pool_limit=1)
    assert len(mail.messages) == 2 and "CRIT connections:" in mail.messages[1]
    mail.messages.pop()

    app.close()
    over = _health(pool_limit=1)  # the app's session gone: connections OK
    assert {f.check: f for f in over.findings}["connections"].status.name == "OK"
    assert len(mail.messages) == 2
    assert "RESOLVED connections: back to normal after" in mail.messages[1]
    assert "[RESOLVED]" in mail.messages[1] or "resolved" in mail.messages[1]

    # the refused channel: each run with news for it says so in its report (not delivered is
    # not recorded as sent: the next run tries again); its verdict is its own
    for result in (first, again):
        notes = json.loads(result.notebook.read_text())["metadata"]["pgrunbook"]["alerts"]
        assert any(n.startswith("alert to broken not delivered: ") for n in notes), notes
        assert "alert to broken not delivered: " in result.html.read_text()
    assert first.exit_code == 2  # CRIT, whatever the alerts did
    # no secret in any message or report: the channel's token, the URL, a password
    everything = mail.messages + [json.dumps(p) for p in hook.posts]
    everything += [r.notebook.read_text() + r.html.read_text() for r in (first, again, over)]
    for text in everything:
        assert TOKEN not in text and "127.0.0.1:1/refused" not in text

    assert main(["notify", "status"]) == 0
    out = capsys.readouterr().out
    assert "chat: staging / health / connections" not in out  # resolved: nothing alerting
    assert main(["notify", "test", "--channel", "ops"]) == 0
    assert "ops: delivered" in capsys.readouterr().out and len(mail.messages) == 3
    assert main(["notify", "test", "--channel", "broken"]) == 2
    said = capsys.readouterr().out
    assert "broken: NOT delivered" in said and TOKEN not in said
    assert main(["notify", "test", "--channel", "nosuch"]) == 3


def test_a_channel_whose_filter_excludes_the_target_gets_nothing(channels, sandbox):
    mail, hook = channels
    with psycopg.connect(sandbox.url("staging")):
        _health(pool_limit=1)
    assert not [p for p in hook.posts if "production" in p.get("title", "")]
    assert len(hook.posts) == 1  # chat's; prod's filter names production only


def test_no_verified_backup_for_26_hours_alerts_once_and_a_backup_resolves_it(
    sandbox, tmp_path, monkeypatch
):
    """The dead man's switch: production with no verified backup is CRIT in health and alerts its
    channel once; the next health run says nothing new; a backup, then health, resolves it."""
    with Mailbox() as mail, Webhook() as pings:
        config = tmp_path / "alerts.toml"
        config.write_text(
            '[notify]\nheartbeat_url_env = "BACKUP_HEARTBEAT"\n\n'
            '[notify.channels.oncall]\nurl_env = "ONCALL_MAIL"\nmin_status = "CRIT"\n'
            'targets = ["production"]\nrunbooks = ["health"]\n'
        )
        monkeypatch.setenv("BACKUP_HEARTBEAT", f"http://127.0.0.1:{pings.port}/ping/{TOKEN}")
        monkeypatch.setenv("PGRUNBOOK_CONFIG", str(config))
        monkeypatch.setenv("ONCALL_MAIL", mail.url("oncall@example.com"))
        monkeypatch.setenv("PGRUNBOOK_REPORTS_DIR", str(tmp_path / "reports"))
        monkeypatch.setenv("PGRUNBOOK_BACKUPS_DIR", str(tmp_path / "backups"))  # none yet
        monkeypatch.setenv("DATABASE_URL", sandbox.url("production"))  # protected, as configured
        first = runner.run("health", "production", progress=False)
        backup = {f.check: f for f in first.findings}["backup"]
        assert backup.status.name == "CRIT", backup
        assert "OK < 24 h, WARN < 26 h" in backup.threshold
        assert len(mail.messages) == 1 and "CRIT backup: no verified backup" in mail.messages[0]
        first = "first: take and verify one now: pgrunbook run backup --target production"
        assert first in mail.messages[0].replace("=\r\n", "")  # what to do, first
        runner.run("health", "production", progress=False)
        assert len(mail.messages) == 1  # still CRIT: nothing new
        assert pings.posts == []  # health runs do not ping
        made = runner.run("backup", "production", progress=False)
        assert made.exit_code in (0, 1), [str(f) for f in made.findings]
        assert pings.posts == [{"GET": f"/ping/{TOKEN}"}]  # the backup's heartbeat
        assert TOKEN not in made.notebook.read_text() + made.html.read_text()
        after = runner.run("health", "production", progress=False)
        assert {f.check: f for f in after.findings}["backup"].status.name == "OK"
        assert len(mail.messages) == 2 and "RESOLVED backup: back to normal" in mail.messages[1]


def test_a_server_that_cannot_be_reached_alerts_and_its_return_resolves_it(
    sandbox, tmp_path, monkeypatch
):
    """No report can be written when the run cannot start: the alert goes out all the same."""
    with Webhook() as hook:
        config = tmp_path / "alerts.toml"
        config.write_text('[notify.channels.ops]\nurl_env = "OPS_HOOK"\n')
        monkeypatch.setenv("PGRUNBOOK_CONFIG", str(config))
        monkeypatch.setenv("OPS_HOOK", hook.url("ops"))
        monkeypatch.setenv("PGRUNBOOK_REPORTS_DIR", str(tmp_path / "reports"))
        monkeypatch.setenv("STAGING_DATABASE_URL", "postgresql://app:pw9931@127.0.0.1:1/gone")
        for _ in range(2):
            assert main(["run", "status", "-t", "staging", "--quiet"]) == 3
        assert len(hook.posts) == 1  # once, not on the repeat
        assert hook.posts[0]["title"] == "[CRIT] status on staging: 1 alerting"
        assert "CRIT the run: the run failed: " in hook.posts[0]["message"]
        assert "pw9931" not in json.dumps(hook.posts)
        monkeypatch.setenv("STAGING_DATABASE_URL", sandbox.url("staging"))
        runner.run("status", "staging", progress=False)
        assert len(hook.posts) == 2 and "RESOLVED the run" in hook.posts[1]["message"]


def test_a_failed_backup_alerts_at_once_every_time(sandbox, tmp_path, monkeypatch):
    """A backup that fails is news each time it fails, not a state to be quiet about: pg_dump
    refused (the role may not read a table) twice, two messages."""
    from psycopg import sql

    name = "pgrb_alert_dump"
    with psycopg.connect(sandbox.url("postgres"), autocommit=True) as conn:
        db_name = sql.Identifier(name)
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(db_name))
        conn.execute(sql.SQL("CREATE DATABASE {}").format(db_name))
        conn.execute("DROP ROLE IF EXISTS pgrb_nodump")
        conn.execute("CREATE ROLE pgrb_nodump LOGIN")
    admin = psycopg.conninfo.make_conninfo(sandbox.url("postgres"), dbname=name)
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute("CREATE TABLE locked_away (id int PRIMARY KEY)")
        conn.execute("REVOKE ALL ON locked_away FROM PUBLIC")
    with Webhook() as hook:
        config = tmp_path / "alerts.toml"
        config.write_text(
            '[targets.shop]\nurl_env = "SHOP_URL"\nheartbeat_url_env = "SHOP_BEAT"\n\n'
            '[notify.channels.ops]\nurl_env = "OPS_HOOK"\nrunbooks = ["backup"]\n'
            "repeat_hours = 24\n"
        )
        monkeypatch.setenv("SHOP_BEAT", f"http://127.0.0.1:{hook.port}/beat")
        monkeypatch.setenv("PGRUNBOOK_CONFIG", str(config))
        monkeypatch.setenv("OPS_HOOK", hook.url("ops"))
        monkeypatch.setenv("PGRUNBOOK_REPORTS_DIR", str(tmp_path / "reports"))
        monkeypatch.setenv("PGRUNBOOK_BACKUPS_DIR", str(tmp_path / "backups"))
        monkeypatch.setenv("SHOP_URL", psycopg.conninfo.make_conninfo(admin, user="pgrb_nodump"))
        outcomes = [runner.run("backup", "shop", progress=False).outcome for _ in range(2)]
        assert all(o in ("CRIT", "FAILED") for o in outcomes), outcomes
        alerts = [p for p in hook.posts if "GET" not in p]
        assert len(alerts) == 2, hook.posts  # at once, both times: not a repeat to skip
        assert all(p["title"].startswith("[CRIT] backup on shop") for p in alerts)
        assert [p for p in hook.posts if "GET" in p] == [{"GET": "/beat/fail"}] * 2
    with psycopg.connect(sandbox.url("postgres"), autocommit=True) as conn:
        conn.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(name)))
        conn.execute("DROP ROLE pgrb_nodump")


RACER = """
import sys
from pgrunbook.archive import alerts
from pgrunbook.base.findings import Finding, Status

run = {"target": "staging", "runbook": "health", "outcome": "CRIT", "error": None,
       "link": "report"}
print(alerts.after_run(run, [Finding("storage", Status.CRIT, "96% used")]))
"""


def test_two_runs_at_once_send_the_same_news_once(tmp_path, monkeypatch):
    """Eight runs of one target finish at the same moment with the same CRIT: the state's lock
    lets one of them send it."""
    import subprocess
    import sys

    with Webhook() as hook:
        config = tmp_path / "alerts.toml"
        config.write_text('[notify.channels.ops]\nurl_env = "OPS_HOOK"\n')
        env = dict(os.environ, PGRUNBOOK_CONFIG=str(config), OPS_HOOK=hook.url("ops"),
                   PGRUNBOOK_REPORTS_DIR=str(tmp_path / "reports"))  # fmt: skip
        script = tmp_path / "racer.py"
        script.write_text(RACER)
        racers = [subprocess.Popen([sys.executable, str(script)], env=env) for _ in range(8)]
        assert [r.wait(timeout=120) for r in racers] == [0] * 8
        assert len(hook.posts) == 1 and hook.posts[0]["title"].startswith("[CRIT] health")

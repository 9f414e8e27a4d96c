"""The command line: every bad input is one line, exit 3, and changes nothing."""

import os
import re
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest

from pgrunbook.cli import build_parser, main
from tests.conftest import drop_role, password_role, written_files

ROOT = Path(__file__).resolve().parents[1]


def _snapshot(*roots):
    return {p: p.stat().st_mtime_ns for p in written_files(*roots)}


@pytest.fixture
def wrong_password_url(sandbox):
    """A role that must log in with a password: the sandbox's pg_hba asks it for one."""
    password_role(sandbox, "pwcheck", "right-one")
    yield sandbox.url("production").replace("postgres:@", "pwcheck:wrong-one@")
    drop_role(sandbox, "pwcheck")


BAD = [
    (["run", "no_such_runbook", "--target", "sandbox"], "unknown runbook"),
    (["run", "stats", "--target", "sandbox"], "did you mean 'status'"),
    (["run", "status", "--target", "sandbox", "-p", "pool_limt", "5"], "did you mean 'pool_limit'"),
    (["run", "status", "--target", "sandbox", "-p", "pool_limit", "many"], "takes int"),
    (["run", "backup", "--target", "sandbox", "-p", "verify", "maybe"], "takes bool"),
    (["run", "status", "--target", "sandbox", "-p", "target", "staging"], "--target"),
    (["run", "status", "--target", "prodution"], "did you mean 'production'"),
    (["run", "seed", "--target", "sandbox", "-p", "mode", "postgresql://u:pw@h/db"], "secret"),
    (["reports", "show", "nothing-like-this"], "no run matches"),
    (["reports", "list", "--since", "2026-13-01"], "is not a date: give YYYY-MM-DD"),
    (["reports", "list", "--until", "yesterday"], "is not a date"),
    (["frobnicate"], "invalid choice"),
]


@pytest.mark.parametrize("args, message", BAD, ids=[" ".join(a[:4]) for a, _ in BAD])
def test_bad_input_is_one_line_exit_3_and_writes_nothing(
    sandbox, reports_dir, capfd, args, message
):
    before = _snapshot(reports_dir)
    with pytest.raises(SystemExit) if args == ["frobnicate"] else _nothing() as exit_info:
        code = main(args)
    code = exit_info.value.code if args == ["frobnicate"] else code
    err = capfd.readouterr().err.strip()
    assert code == 3
    assert len(err.splitlines()) == 1 and message in err and "Traceback" not in err
    assert _snapshot(reports_dir) == before


class _nothing:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False


@pytest.mark.parametrize("case", ["unreachable", "missing database", "wrong password"])
def test_connection_failures_are_one_line(sandbox, reports_dir, capfd, monkeypatch, case, request):
    urls = {
        "unreachable": "postgresql://postgres:hunter22@127.0.0.1:1/app",
        "missing database": sandbox.url("no_such_db"),
        "wrong password": (
            request.getfixturevalue("wrong_password_url") if case == "wrong password" else ""
        ),
    }
    monkeypatch.setenv("STAGING_DATABASE_URL", urls[case])
    before = _snapshot(reports_dir)
    assert main(["run", "status", "--target", "staging"]) == 3
    err = capfd.readouterr().err.strip()
    expected = {
        "unreachable": "cannot reach",
        "missing database": "'no_such_db' does not exist",
        "wrong password": "login refused",
    }[case]
    assert len(err.splitlines()) == 1 and expected in err, err
    assert "hunter22" not in err and "wrong-one" not in err
    assert _snapshot(reports_dir) == before


def test_sandbox_up_is_idempotent(sandbox, capfd):
    """Scripts start it with `up`: on a running sandbox that says so and succeeds."""
    assert main(["sandbox", "up"]) == 0
    out = capfd.readouterr().out
    assert "already running" in out and "running (pid" in out


@pytest.mark.parametrize("url", ["host=db port", "postgresql://u:hunter22@h:5432/db?sslmode=a b"])
def test_a_malformed_url_is_one_line(sandbox, reports_dir, capfd, monkeypatch, url):
    monkeypatch.setenv("STAGING_DATABASE_URL", url)
    before = _snapshot(reports_dir)
    assert main(["run", "status", "--target", "staging"]) == 3
    err = capfd.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "$STAGING_DATABASE_URL is not a connection URL" in err
    assert "hunter22" not in err and "Traceback" not in err
    assert _snapshot(reports_dir) == before


def test_progress_only_on_a_terminal_and_the_paths_of_what_was_written(sandbox, reports_dir):
    """Without a terminal (cron, CI) no progress bar; the report's paths are printed, and `reports
    show` prints them again; a run without an incident lists an empty incident, not None."""
    pgrunbook = str(Path(sys.executable).parent / "pgrunbook")
    run = subprocess.run(
        [pgrunbook, "run", "status", "--target", "sandbox"], capture_output=True, text=True
    )
    assert run.returncode in (0, 1), run.stderr
    assert "Executing" not in run.stderr and "cell/s" not in run.stderr
    html = re.search(r"html: +(\S+)", run.stdout)[1]
    shown = subprocess.run(
        [pgrunbook, "reports", "show", f"status/{Path(html).stem}", "--debug"],
        capture_output=True,
        text=True,
    )
    assert shown.returncode == 0 and f"html:   {html}" in shown.stdout
    # as a person says it: no dict, no ISO time, no field name for a duration
    assert "parameters: target=sandbox" in shown.stdout.replace("parameters:  ", "parameters: ")
    assert "duration_s" not in shown.stdout and "{" not in shown.stdout
    assert re.search(r"started: +\d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC", shown.stdout), shown.stdout
    assert re.search(r"took: +[\d.]+ s", shown.stdout), shown.stdout
    listed = subprocess.run([pgrunbook, "reports", "list"], capture_output=True, text=True).stdout
    assert "None" not in listed and "NaN" not in listed


def test_a_target_served_by_the_sandbox_says_so(sandbox, reports_dir, monkeypatch):
    """`production` without $DATABASE_URL runs on the sandbox: the console says it first, the
    report's header too."""
    monkeypatch.delenv("DATABASE_URL", raising=False)
    pgrunbook = str(Path(sys.executable).parent / "pgrunbook")
    run = subprocess.run(
        [pgrunbook, "run", "status", "--target", "production"], capture_output=True, text=True
    )
    assert run.returncode in (0, 1), run.stderr
    assert run.stderr.splitlines()[0] == (
        "pgrunbook: target 'production' has no URL ($DATABASE_URL is not set): this run uses the"
        " embedded sandbox's production database"
    )
    html = Path(re.search(r"html: +(\S+)", run.stdout)[1]).read_text()
    assert re.search(r"the embedded sandbox(&#39;|')s production database", html)


def test_a_backup_run_says_where_the_backup_is(sandbox, reports_dir):
    """The console's last lines name every path the run wrote, the backup too; so does the
    report's header."""
    pgrunbook = str(Path(sys.executable).parent / "pgrunbook")
    run = subprocess.run(
        [pgrunbook, "run", "backup", "--target", "sandbox", "-p", "verify", "false"],
        capture_output=True,
        text=True,
    )
    assert run.returncode in (0, 1), run.stderr
    tail = run.stdout.splitlines()[-3:]
    assert tail[0].startswith("  report: ") and tail[1].startswith("  html:   ")
    where = Path(re.fullmatch(r"  backup: +(\S+)", tail[2])[1])
    assert (where / "manifest.json").is_file()
    html = Path(tail[1].split()[-1]).read_text()
    assert f"<th>backup</th><td>{where}</td>" in html


def test_sandbox_not_running(sandbox, capfd, monkeypatch, tmp_path):
    monkeypatch.setenv("PGRUNBOOK_STATE_DIR", str(tmp_path))
    assert main(["sandbox", "status"]) == 0
    assert "stopped" in capfd.readouterr().out
    for args in (["sandbox", "down"], ["sandbox", "url"], ["run", "status", "--target", "sandbox"]):
        assert main(args) == 3
        err = capfd.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "not running" in err
    assert not (tmp_path / "sandbox" / "data" / "PG_VERSION").exists()


def test_sandbox_url_and_status(sandbox, capfd):
    assert main(["sandbox", "url", "staging"]) == 0
    url = capfd.readouterr().out.strip()
    with psycopg.connect(url) as conn:
        assert conn.execute("SELECT current_database()").fetchone()[0] == "staging"
    assert main(["sandbox", "status"]) == 0
    assert "running" in capfd.readouterr().out


def test_list_is_a_short_table_and_one_runbook_shows_its_parameters(capfd, monkeypatch):
    monkeypatch.setenv("COLUMNS", "100")  # a terminal of 100 columns: one line per runbook
    assert main(["list"]) == 0
    out = capfd.readouterr().out.splitlines()
    for nb in (ROOT / "runbooks").glob("*.ipynb"):
        assert [x for x in out if re.match(rf"{nb.stem}\s+\S", x)], nb.stem
    assert len(out) <= 20 and max(map(len, out)) <= 100  # fits a terminal
    assert main(["list", "health"]) == 0
    one = capfd.readouterr().out
    assert "pool_limit (int, default 0)" in one and max(map(len, one.splitlines())) <= 100
    assert main(["list", "helth"]) == 3
    assert "health" in capfd.readouterr().err  # the nearest name


def test_a_run_without_a_target_is_on_the_sandbox_as_list_says():

    assert build_parser().parse_args(["run", "status"]).target == "sandbox"


def test_a_missing_confirmation_gives_the_exact_command(sandbox, capfd):
    """seed takes --confirm, a runbook -p confirm: the refusal gives back the command to run."""
    assert main(["seed", "--target", "production", "--mode", "development", "--users", "5"]) == 3
    err = capfd.readouterr().err.strip()
    assert err.endswith(
        "run `pgrunbook seed --target production --mode development --users 5 --confirm production`"
    ), err
    assert (
        main(["run", "migrate", "-t", "production", "-p", "mode", "apply", "-p", "confirm", "prod"])
        == 3
    )  # a wrong confirmation is replaced in the command given back
    err = capfd.readouterr().err.strip()
    assert err.endswith(
        "run `pgrunbook run migrate -t production -p mode apply -p confirm production`"
    ), err


def test_debug_shows_the_traceback():
    proc = subprocess.run(
        [sys.executable, "-m", "pgrunbook.cli", "--debug", "run", "nope", "--target", "sandbox"],
        capture_output=True,
        text=True,
    )
    assert proc.returncode != 0 and "Traceback" in proc.stderr


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    blocks = re.findall(r"```sh\n(python3 -m venv[^\n]+)\n```", readme)
    assert len(blocks) == 2 and "pgrunbook demo" in blocks[0] and "pytest" in blocks[1]
    assert blocks[1] in ci


def test_sandbox_down_then_up_in_one_process(tmp_path, monkeypatch, capfd):
    monkeypatch.setenv("PGRUNBOOK_STATE_DIR", str(tmp_path))
    assert main(["sandbox", "up"]) == 0
    try:
        assert main(["sandbox", "down"]) == 0
        assert main(["sandbox", "up"]) == 0
        assert "running" in capfd.readouterr().out
        assert main(["run", "status", "--target", "staging", "--no-progress"]) == 0
    finally:
        main(["sandbox", "down"])


@pytest.mark.parametrize("command", [["list"], ["sandbox", "status"], ["doctor", "-t", "sandbox"]])
def test_every_command_behaves_in_a_pipe(sandbox, command):
    """`pgrunbook ... | head -1`: the first line, and no error when the reader leaves."""
    pgrunbook = str(Path(sys.executable).parent / "pgrunbook")
    done = subprocess.run(
        ["bash", "-c", '"$@" | head -1', "pipe", pgrunbook, *command],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.stdout.count("\n") == 1 and done.stderr == "", done.stderr


def test_lab_opens_the_runbooks_and_runs_as_root_too(tmp_path):
    """`pgrunbook lab` is JupyterLab on the runbooks folder; as root (CI, containers) it passes
    --allow-root, without which Jupyter refuses to start, and says so."""
    import json
    import os
    import socket
    import time
    import urllib.request

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "JUPYTER_RUNTIME_DIR": str(tmp_path / "runtime")}
    lab = subprocess.Popen(
        [sys.executable, "-m", "pgrunbook", "lab", "--", "--no-browser", f"--port={port}",
         "--ServerApp.ip=127.0.0.1", "--IdentityProvider.token="],
        env=env, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        listed, deadline = None, time.monotonic() + 90
        while listed is None and time.monotonic() < deadline and lab.poll() is None:
            try:
                with urllib.request.urlopen(
                    f"http://127.0.0.1:{port}/api/contents", timeout=5
                ) as r:
                    listed = {c["name"] for c in json.load(r)["content"]}
            except OSError:
                time.sleep(0.5)
        assert listed is not None, "JupyterLab did not answer"
        assert {"health.ipynb", "backup.ipynb", "restore.ipynb"} <= listed
    finally:
        lab.terminate()
        _, err = lab.communicate(timeout=30)
    if os.geteuid() == 0:
        assert b"running as root: JupyterLab is started with --allow-root" in err


def test_notify_test_without_channels_says_how_to_add_one(capsys, tmp_path, monkeypatch):
    from pgrunbook.cli import main

    config = tmp_path / "no-channels.toml"
    config.write_text("rpo_h = 24\n")
    monkeypatch.setenv("PGRUNBOOK_CONFIG", str(config))
    assert main(["notify", "test"]) == 3
    err = capsys.readouterr().err.strip()
    assert "None" not in err and "[notify.channels.NAME]" in err and "\n" not in err, err


def test_list_fits_the_terminal_and_never_breaks_or_cuts_a_word():
    """`pgrunbook list` at 80 columns: each title whole (wrapped, not cut with ...), and no word
    of a parameter's help broken across lines."""
    pgrunbook = str(Path(sys.executable).parent / "pgrunbook")
    env = {**os.environ, "COLUMNS": "80"}
    listed = subprocess.run([pgrunbook, "list"], capture_output=True, text=True, env=env).stdout
    assert "..." not in listed and "two databases compared" in " ".join(listed.split())
    one = subprocess.run(
        [pgrunbook, "list", "integrity"], capture_output=True, text=True, env=env
    ).stdout
    assert "assertions,compare}" in one and "compa\n" not in one, one
    words = " ".join(one.split())
    assert "re-proven, corruption looked for, two databases compared" in words

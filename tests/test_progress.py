"""Progress of long work as a person at a terminal sees it: the step's name and, for a dump or a
restore, bytes done of the total with a rate and an estimate; nothing when not a terminal."""

from __future__ import annotations

import fcntl
import json
import os
import pty
import re
import struct
import subprocess
import sys
import termios
import threading
import time

import psycopg
from psycopg import sql

from pgrunbook.base import progress

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def test_the_meter_counts_what_the_child_programs_write(tmp_path, monkeypatch):
    """Real child processes (a parallel dump's workers; here a writer of 24 MiB that ends while
    another goes on to 48 MiB): readings rise, and the ended one's bytes stay counted."""
    readings = tmp_path / "progress.jsonl"
    monkeypatch.setenv(progress.ENV, str(readings))
    writer = (
        "import os, sys, time\n"
        "out = os.open(os.devnull, os.O_WRONLY)\n"
        "for _ in range(int(sys.argv[1])):\n"
        "    os.write(out, bytes(1 << 20)); time.sleep(0.05)\n"
        "time.sleep(0.8)\n"  # read once more before it ends
    )
    with progress.meter("pg_dump", total=48 << 20, direction="write"):
        short = subprocess.Popen([sys.executable, "-c", writer, "24"])
        time.sleep(0.2)
        long = subprocess.Popen([sys.executable, "-c", writer, "48"])
        short.wait()
        long.wait()  # it wrote half of its 48 MiB after the short one ended
    lines = [json.loads(x) for x in readings.read_text().splitlines()]
    done = [x["done"] for x in lines]
    assert lines[0]["done"] == 0 and lines[-1]["final"] and lines[-1]["what"] == "pg_dump"
    assert done == sorted(done) and len(lines) >= 4
    assert done[-1] >= (24 + 48) << 20  # the short writer's 24 MiB were not lost when it ended
    assert all(x["total"] == 48 << 20 for x in lines)


def _at_a_terminal(args: list[str], env: dict[str, str]) -> tuple[int, str]:
    """Run a command with a terminal (120 columns) as its stdout and stderr; what it drew."""
    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
    proc = subprocess.Popen(args, stdout=follower, stderr=follower, stdin=subprocess.DEVNULL,
                            env=env)  # fmt: skip
    os.close(follower)
    drawn = bytearray()

    def read() -> None:
        while True:
            try:
                chunk = os.read(leader, 65536)
            except OSError:  # the terminal closed with the last process holding it
                return
            if not chunk:
                return
            drawn.extend(chunk)

    reader = threading.Thread(target=read)
    reader.start()
    code = proc.wait(timeout=300)
    reader.join(timeout=30)
    os.close(leader)
    return code, drawn.decode("utf-8", "replace")


def test_a_restore_at_a_terminal_shows_its_step_and_bytes_and_nothing_in_a_pipe(sandbox, tmp_path):
    name = "pgrb_progress_" + os.urandom(4).hex()
    with psycopg.connect(sandbox.url("postgres"), autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    url = psycopg.conninfo.make_conninfo(sandbox.url("postgres"), dbname=name)
    try:
        with psycopg.connect(url, autocommit=True) as conn:  # ~40 MiB: a restore of seconds
            conn.execute(
                "CREATE TABLE t (id int PRIMARY KEY, a text, b text);"
                "INSERT INTO t SELECT g, md5(g::text), md5((g * 7)::text)"
                " FROM generate_series(1, 1000000) g"
            )
        config = tmp_path / "big.toml"
        config.write_text('[targets.big]\nurl_env = "BIG_URL"\n')
        env = {
            **os.environ,
            "PGRUNBOOK_CONFIG": str(config),
            "BIG_URL": url,
            "PGRUNBOOK_REPORTS_DIR": str(tmp_path / "reports"),
            "PGRUNBOOK_BACKUPS_DIR": str(tmp_path / "backups"),
            progress.EVERY_ENV: "0.05",  # read often: a fast machine restores this in a second
        }
        command = [sys.executable, "-m", "pgrunbook", "run"]
        subprocess.run([*command, "backup", "--target", "big"], env=env, check=True,
                       capture_output=True)  # fmt: skip

        code, drawn = _at_a_terminal([*command, "restore", "--target", "big"], env)
        assert code == 0, drawn[-2000:]
        frames = [ANSI.sub("", f) for f in re.split(r"[\r\n]", drawn)]
        # the step's name, bytes done of the total, the time left and the rate
        moving = [
            f
            for f in frames
            if "pg_restore:" in f
            and re.search(r"[1-9][\d.]*[kM]?/[\d.]+M \[\d\d:\d\d<\d\d:\d\d, +[\d.]+[kMG]?B/s\]", f)
        ]
        assert moving, drawn[-3000:]
        assert all(f.startswith("Step 2 - Restore beside the target") for f in moving), moving
        # between the bytes, the step being run: one of the runbook's own headings
        steps = [f.split(":")[0] for f in frames if "cell/s" in f]
        assert steps and all(
            s == "starting" or s.startswith(("Restore", "Step ", "Result")) for s in steps
        ), steps

        piped = subprocess.run([*command, "restore", "--target", "big"], env=env,
                               capture_output=True, text=True)  # fmt: skip
        assert piped.returncode == 0
        assert (
            "B/s" not in piped.stderr
            and "\r" not in piped.stderr
            and "cell/s" not in (piped.stderr)
        )
    finally:
        with psycopg.connect(sandbox.url("postgres"), autocommit=True) as conn:
            for (db,) in conn.execute(
                "SELECT datname FROM pg_database WHERE datname LIKE %s", [name + "%"]
            ).fetchall():
                conn.execute(
                    sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(db))
                )

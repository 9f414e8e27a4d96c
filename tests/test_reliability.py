"""Reliability under faults: concurrent runs, crashes at chosen moments, private files, atomic records."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PGRUNBOOK = str(Path(sys.executable).with_name("pgrunbook"))


def test_eight_runs_started_together_all_pass_and_leave_no_socket(sandbox, tmp_path):
    runs = [("status", []), ("health", []), ("integrity", ["-p", "checks", "fk,sequences"]),
            ("security", []), ("performance", ["-p", "explain", "false"]), ("migrate", []),
            ("staging_refresh", []), ("status", ["-p", "pool_limit", "30"])]
    env = {**os.environ, "TMPDIR": str(tmp_path)}
    procs = []
    for runbook, extra in runs:
        target = ["--target", "staging" if runbook == "staging_refresh" else "sandbox"]
        procs.append(subprocess.Popen([PGRUNBOOK, "run", runbook, *target, *extra, "--no-progress"], env=env,
                                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    outputs = [(p.wait(timeout=600), p.stdout.read()) for p in procs]
    failed = [(name, code, out[-600:]) for (name, _), (code, out) in zip(runs, outputs)
              if code not in (0, 1) or "FAILED" in out]
    assert not failed
    assert not list((ROOT / "runbooks").glob("kernel-ipc-*"))
    assert not list(tmp_path.glob("pgrunbook-kernel-*"))

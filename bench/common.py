"""What every benchmark needs: a temporary sandbox of its own, removed afterwards."""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))


@contextmanager
def temporary_sandbox(**env: str):
    """A started sandbox in a temp folder (state, reports and backups inside it); stopped and
    deleted after."""
    tmp = Path(tempfile.mkdtemp(prefix="pgrb-bench-"))
    os.environ.update(
        PGRUNBOOK_STATE_DIR=str(tmp / "state"),
        PGRUNBOOK_REPORTS_DIR=str(tmp / "reports"),
        PGRUNBOOK_BACKUPS_DIR=str(tmp / "backups"),
        **env,
    )
    from pgrunbook.procedures.sandbox import Sandbox

    box = Sandbox.default()
    try:
        box.ensure(demo_users=10)
        yield box, tmp
    finally:
        if box.running:
            box.down()
        shutil.rmtree(tmp, ignore_errors=True)


def timed(fn) -> float:
    """Seconds `fn()` took."""
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0

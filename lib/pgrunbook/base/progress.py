"""Progress of long work, from a run's kernel to the terminal that started the run.

A step that moves bytes (a dump, a restore) is measured from outside its programs: the bytes
the kernel's child processes (pg_dump, pg_restore and their parallel workers) have written or
read, from the operating system's own counters (psutil), against the total expected (the
backup's size; for a dump, the previous backup's). The kernel appends one JSON line per
reading, at most twice a second, to the file `PGRUNBOOK_PROGRESS` names; the runner sets it only
when a person watches a terminal, and draws the step's name, a bar, the rate and an estimate
(`console`). A run elsewhere (JupyterLab, plain papermill, cron) measures nothing.
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
import time
from collections.abc import Iterator

ENV = "PGRUNBOOK_PROGRESS"
EVERY_ENV = "PGRUNBOOK_PROGRESS_EVERY_S"  # how often to read and draw (tests: faster)


def watched() -> bool:
    """Whether a person watches this run's progress (the runner named a file for readings)."""
    return bool(os.environ.get(ENV))


def every_s(default: float = 0.5) -> float:
    try:
        return float(os.environ.get(EVERY_ENV, default))
    except ValueError:
        return default


def _children_bytes(direction: str) -> dict[int, int]:
    """Bytes each live child process of the kernel has read or written (its rchar or wchar)."""
    import psutil  # here: only a measured step needs it

    found = {}
    for child in psutil.Process().children(recursive=True):
        try:
            io = child.io_counters()
        except (psutil.Error, AttributeError):  # ended meanwhile, or not ours to read
            continue
        found[child.pid] = io.write_chars if direction == "write" else io.read_chars
    return found


def _append(path: str, reading: dict) -> None:
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(reading) + "\n")


@contextlib.contextmanager
def meter(what: str, *, total: int | None, direction: str) -> Iterator[None]:
    """Measure the bytes the kernel's child programs move while the block runs (`direction`:
    "write" for a dump, "read" for a restore), as `what`, against `total` (None: unknown)."""
    path = os.environ.get(ENV)
    if not path:
        yield
        return
    stop = threading.Event()
    done, seen = 0, {}  # by process: a worker that ended keeps what it moved

    def reading(final: bool = False) -> dict:
        return {"what": what, "done": done, "total": total, "t": time.time(), "final": final}

    def sample() -> None:
        nonlocal done
        while not stop.wait(every_s()):
            seen.update(_children_bytes(direction))
            done = sum(seen.values())
            _append(path, reading())

    _append(path, reading())
    thread = threading.Thread(target=sample, name="pgrunbook-progress", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
        _append(path, reading(final=True))

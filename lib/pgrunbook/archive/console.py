"""What a person at a terminal sees while a run works: the step it is on and, for a step that
moves bytes (a dump, a restore), the bytes done of the total with a rate and an estimate.

The step is read from the executed notebook papermill saves as each cell starts (the heading
above the running cell); the bytes from the readings the kernel appends (`base.progress`). The
bars are tqdm's. Only drawn on a terminal: the runner starts none otherwise.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import TextIO

from ..base import progress


def running_step(notebook: Path) -> tuple[str, int, int] | None:
    """(the heading of the step being run, the running cell's place, the number of code cells)
    of a notebook papermill is executing; None while it cannot be read (being written)."""
    try:
        cells = json.loads(notebook.read_text(encoding="utf-8"))["cells"]
    except (OSError, ValueError, KeyError):
        return None
    heading, step, place, count = "", "", 0, 0
    for cell in cells:
        if cell.get("cell_type") == "markdown":
            text = "".join(cell.get("source", ""))
            lines = [x for x in text.splitlines() if x.startswith("#")]
            if lines:
                heading = lines[0].lstrip("#").strip()
            continue
        if cell.get("cell_type") != "code":
            continue
        count += 1
        # the running cell; between two cells, the one that completed last
        if cell.get("metadata", {}).get("papermill", {}).get("status") in ("running", "completed"):
            step, place = heading, count
    return step, place, count


def last_reading(readings: Path) -> dict | None:
    try:
        with readings.open("rb") as f:
            f.seek(max(0, f.seek(0, 2) - 4096))
            lines = f.read().decode("utf-8", "replace").splitlines()
    except OSError:
        return None
    for line in reversed(lines):
        try:
            return json.loads(line)
        except ValueError:
            continue
    return None


def _short(step: str, width: int = 40) -> str:
    return step if len(step) <= width else step[: width - 1] + "…"


class Display:
    """Draws the run's progress on `stream` from a thread, while its `with` block runs."""

    def __init__(self, notebook: Path, readings: Path, stream: TextIO):
        self.notebook, self.readings, self.stream = notebook, readings, stream
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="pgrunbook-console", daemon=True)
        self._bar = None
        self._shape: tuple = ()

    def __enter__(self) -> Display:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        if self._bar is not None:
            self._bar.close()

    def _loop(self) -> None:
        step, seen = ("", 0, 0), None
        while not self._stop.wait(progress.every_s() / 2):
            try:
                changed = self.notebook.stat().st_mtime_ns
            except OSError:
                changed = None
            if changed != seen:  # read again only when papermill saved it (a cell started)
                if (found := running_step(self.notebook)) is not None:  # not mid-write
                    step, seen = found, changed
            self._draw(step, last_reading(self.readings))

    def _draw(self, step: tuple[str, int, int], reading: dict | None) -> None:
        from tqdm import tqdm  # here: only a run at a terminal draws

        name, place, count = step
        if reading and not reading.get("final"):
            total = reading.get("total") or None
            shape = ("bytes", name, reading["what"], total)
            if shape != self._shape:
                self._new(
                    tqdm(
                        total=total, unit="B", unit_scale=True, unit_divisor=1024,
                        desc=f"{_short(name)}: {reading['what']}" if name else reading["what"],
                        file=self.stream, leave=False, dynamic_ncols=True,
                    ),
                    shape,
                )  # fmt: skip
            done = reading["done"] if total is None else min(reading["done"], total)
            self._bar.update(max(done - self._bar.n, 0))  # tqdm's own rate and estimate
        else:
            shape = ("step", count)
            if shape != self._shape:
                self._new(
                    tqdm(total=count, initial=max(place - 1, 0), unit="cell", file=self.stream,
                         leave=False, dynamic_ncols=True, desc=_short(name) or "starting"),
                    shape,
                )  # fmt: skip
            self._bar.set_description_str(_short(name) or "starting", refresh=False)
            self._bar.update(max(place - 1 - self._bar.n, 0))
        self._bar.refresh()

    def _new(self, bar, shape: tuple) -> None:
        if self._bar is not None:
            self._bar.close()
        self._bar, self._shape = bar, shape

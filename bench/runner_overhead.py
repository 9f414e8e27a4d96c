"""Runner overhead: `pgrunbook run` of a runbook that does nothing, against a bare papermill run.

Both execute the same notebook (a parameters cell, a Findings() and record())
in this process, alternating, after one warm-up each; the ratio of medians is
the runner's fixed cost (parameter checks, target and connection pre-flight,
metadata, redaction, the HTML report, index, index.html). The same for a real runbook with
charts and tables (performance): what rendering its report costs over papermill's own run.
Goals: under 1.2x, and under 0.3 s.

    python bench/runner_overhead.py [--runs 7] [--runbooks noop,performance]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import time
from pathlib import Path

from common import temporary_sandbox

ROOT = Path(__file__).resolve().parents[1]
NOOP = """%%md
# Noop: a runbook that does nothing

For measuring the runner's own cost.
%%parameters
target: str = "sandbox"  # environment
%%code
from pgrunbook.base.findings import Findings

findings = Findings("noop", target)
%%md
## Result
%%code
findings.record()
"""


def make_home(tmp: Path, *runbooks: str) -> Path:
    """A project home holding the noop runbook, copies of the project's `runbooks`, and its
    config."""
    import nbformat
    from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

    home = tmp / "home"
    (home / "runbooks").mkdir(parents=True)
    shutil.copy(ROOT / "pyproject.toml", home / "pyproject.toml")
    (home / "migrations").symlink_to(ROOT / "migrations")
    nb = new_notebook(
        metadata={
            "kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}
        }
    )
    for chunk in NOOP.strip().split("\n%%"):
        kind, _, body = chunk.lstrip("%").partition("\n")
        cell = new_markdown_cell(body) if kind == "md" else new_code_cell(body)
        if kind == "parameters":
            cell.metadata["tags"] = ["parameters"]
        nb.cells.append(cell)
    nbformat.write(nb, home / "runbooks" / "noop.ipynb")
    for name in runbooks:
        shutil.copy(ROOT / "runbooks" / f"{name}.ipynb", home / "runbooks" / f"{name}.ipynb")
    return home


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument(
        "--runbooks", default="noop,performance", help="comma-separated: noop and/or real ones"
    )
    args = parser.parse_args()
    import papermill

    from pgrunbook.archive import runner

    names = [n for n in args.runbooks.split(",") if n]
    with temporary_sandbox() as (box, tmp):
        home = make_home(tmp, *(n for n in names if n != "noop"))
        os.environ["PGRUNBOOK_HOME"] = str(home)
        for name in names:
            measure(papermill, runner, home / "runbooks" / f"{name}.ipynb", tmp, args.runs)


def measure(papermill, runner, source: Path, tmp: Path, runs: int) -> None:
    name = source.stem

    def bare() -> float:
        t0 = time.perf_counter()
        papermill.execute_notebook(
            str(source),
            str(tmp / "bare.ipynb"),
            parameters={"target": "sandbox"},
            progress_bar=False,
            cwd=str(source.parent),
        )
        return time.perf_counter() - t0

    def run() -> float:
        t0 = time.perf_counter()
        result = runner.run(name, "sandbox", progress=False)
        assert result.outcome != "FAILED", result
        return time.perf_counter() - t0

    bare(), run()  # warm-up: imports, templates, kernel spec lookup
    times: dict[str, list[float]] = {"bare papermill": [], "pgrunbook run": []}
    for _ in range(runs):
        times["bare papermill"].append(bare())
        times["pgrunbook run"].append(run())
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"{name}:")
    for k, v in times.items():
        print(f"  {k:<15} median {med[k]:.3f} s  (min {min(v):.3f}, max {max(v):.3f}, n={len(v)})")
    ratio = med["pgrunbook run"] / med["bare papermill"]
    cost = med["pgrunbook run"] - med["bare papermill"]
    print(
        f"  runner overhead: {ratio:.3f}x, {cost:.3f} s over papermill's own run (goals < 1.2x and"
        f" < 0.3 s)  [{sys.platform}, {os.cpu_count()} cpus]"
    )


if __name__ == "__main__":
    main()

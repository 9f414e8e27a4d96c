"""The archive's site over a large archive: `reports site` (full: every file verified, every page
written) and the incremental rewrite of index.html that follows each run.

The archive is generated: one real run of each of four runbooks on a sandbox, then N index
lines (default 10,000) over hard links to those reports, chained exactly as the runner chains
them, with runbooks, targets, outcomes, incidents, times and health figures varied. Baselines in
the same process: for the full build, hashing every indexed file once (the floor of a
verification); for the incremental build, reading and parsing the index.
Goals: full under 5 s, incremental under 0.5 s.

    python bench/site_scale.py [--runs 10000] [--repeat 3]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from common import temporary_sandbox
from runner_overhead import make_home

RUNBOOKS = ("status", "health", "security", "backup")


def generate(root: Path, real: dict[str, object], n: int) -> None:
    """N index lines over hard links to the real reports, chained as `reports.append_index`
    chains them; the head record written last."""
    from pgrunbook.archive import reports
    from pgrunbook.base.fileio import sha256_file
    from pgrunbook.facts.history import index_path

    rnd = random.Random(1)
    digests = {
        rb: {kind: sha256_file(path) for kind, path in (("ipynb", r.notebook), ("html", r.html))}
        for rb, r in real.items()
    }
    start = datetime(2026, 1, 1, tzinfo=UTC)
    prev, lines = reports.GENESIS, []
    for i in range(n):
        rb = RUNBOOKS[i % len(RUNBOOKS)]
        target = f"tenant{rnd.randrange(200):03d}"
        when = start + timedelta(minutes=5 * i)
        stem = f"{when:%Y%m%dT%H%M%SZ}_{target}"
        folder = root / rb
        folder.mkdir(exist_ok=True)
        for kind in ("ipynb", "html"):
            os.link(
                getattr(real[rb], "notebook" if kind == "ipynb" else "html"),
                folder / f"{stem}.{kind}",
            )
        outcome = rnd.choices(["OK", "WARN", "CRIT", "UNKNOWN"], [90, 6, 3, 1])[0]
        entry = {
            "id": f"{rb}/{stem}",
            "runbook": rb,
            "target": target,
            "outcome": outcome,
            "exit_code": ["OK", "WARN", "CRIT", "UNKNOWN"].index(outcome),
            "incident": f"INC-{i // 500}" if rnd.random() < 0.05 else None,
            "operator": "bench",
            "host": "bench",
            "start": when.isoformat(timespec="seconds"),
            "end": (when + timedelta(seconds=3)).isoformat(timespec="seconds"),
            "duration_s": 3.0,
            "summary": {"OK": 10, "WARN": 0, "CRIT": 0, "UNKNOWN": 0},
            "figures": {"storage": rnd.random() * 100, "connections": rnd.randrange(20)}
            if rb == "health"
            else {},
            "files": {
                kind: {"path": f"{rb}/{stem}.{kind}", "sha256": digests[rb][kind]}
                for kind in ("ipynb", "html")
            },
            "prev": prev,
        }
        line = json.dumps(entry, sort_keys=True)
        lines.append(line)
        prev = reports._line_hash(line)
    index_path().write_text("".join(line + "\n" for line in lines))
    reports._write_head(len(lines), lines[-1])


def timed(fn, repeat: int) -> list[float]:
    out = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()

    with temporary_sandbox() as (box, tmp):
        os.environ["PGRUNBOOK_HOME"] = str(make_home(tmp, *RUNBOOKS))
        from pgrunbook.archive import runner, site
        from pgrunbook.base.fileio import sha256_file
        from pgrunbook.facts import history

        sample = tmp / "sample"
        os.environ["PGRUNBOOK_REPORTS_DIR"] = str(sample)
        real = {rb: runner.run(rb, "sandbox", progress=False) for rb in RUNBOOKS}
        root = tmp / "archive"
        os.environ["PGRUNBOOK_REPORTS_DIR"] = str(root)
        root.mkdir()
        shutil.rmtree(tmp / "state" / "site", ignore_errors=True)
        t0 = time.perf_counter()
        generate(root, real, args.runs)
        size = sum(p.stat().st_size for p in root.rglob("*.*") if p.suffix in (".ipynb", ".html"))
        print(
            f"archive: {args.runs:,} runs, {size / 1e9:.2f} GB of reports"
            f" (generated in {time.perf_counter() - t0:.1f} s)"
        )

        def hash_all() -> None:
            for e in history.entries():
                for f in e["files"].values():
                    sha256_file(root / f["path"])

        def parse_index() -> None:
            history.entries()

        def full() -> None:
            shutil.rmtree(root / site.PAGES, ignore_errors=True)
            site.build(full=True)

        hash_all()  # warm the page cache: every figure below reads from memory
        results = {
            "hash every file (floor)": timed(hash_all, args.repeat),
            "reports site (full)": timed(full, args.repeat),
            "parse the index (floor)": timed(parse_index, args.repeat * 2),
            "index.html after a run": timed(lambda: site.build(full=False), args.repeat * 2),
        }
        med = {k: statistics.median(v) for k, v in results.items()}
        for k, v in results.items():
            print(
                f"{k:<26} median {med[k]:.3f} s  (min {min(v):.3f}, max {max(v):.3f}, n={len(v)})"
            )
        full_s, floor_s = med["reports site (full)"], med["hash every file (floor)"]
        print(f"full build: {full_s:.2f} s, {full_s / floor_s:.2f}x its floor (goal < 5 s)")
        print(
            f"incremental: {med['index.html after a run']:.3f} s, "
            f"{med['index.html after a run'] / med['parse the index (floor)']:.2f}x its floor"
            f" (goal < 0.5 s)  [{sys.platform}, {os.cpu_count()} cpus]"
        )


if __name__ == "__main__":
    main()

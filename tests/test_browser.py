"""What a person looks at, in a real browser: a report and the archive's front page in headless
Chromium (Debian's `chromium`; `.ci/run` installs it). Screenshots go to tests/artifacts/."""

from __future__ import annotations

import io
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from PIL import Image

from pgrunbook.archive import runner
from pgrunbook.cli import main

ARTIFACTS = Path(__file__).resolve().parent / "artifacts"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")

if not CHROMIUM:
    if os.environ.get("PGRUNBOOK_TEST_BROWSER") == "required":
        raise RuntimeError("Chromium is required here (PGRUNBOOK_TEST_BROWSER=required)")
    pytest.skip("no chromium on this machine (apt-get install chromium)", allow_module_level=True)


def _chromium(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [CHROMIUM, "--headless=new", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", *args],
        capture_output=True,
        text=True,
        timeout=120,
    )


def dom(url: str) -> str:
    """The page as the browser holds it once loaded (its scripts run)."""
    done = _chromium("--virtual-time-budget=2000", "--dump-dom", url)
    assert done.returncode == 0 and "<body" in done.stdout, done.stderr[-2000:]
    return done.stdout


def screenshot(url: str, name: str, height: int = 2400) -> Image.Image:
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / name
    done = _chromium(f"--screenshot={path}", f"--window-size=1280,{height}", url)
    assert done.returncode == 0 and path.exists(), done.stderr[-2000:]
    return Image.open(io.BytesIO(path.read_bytes())).convert("L")


def visible_text(page: str) -> str:
    """The body's text without folded code, styles and scripts."""
    body = page[page.index("<body") :]
    for tag in ("details", "style", "script"):
        body = re.sub(rf"<{tag}\b.*?</{tag}>", " ", body, flags=re.S)
    return re.sub(r"<[^>]+>", " ", body)


def test_a_report_in_the_browser(sandbox, tmp_path, monkeypatch):
    monkeypatch.setenv("PGRUNBOOK_REPORTS_DIR", str(tmp_path / "reports"))
    result = runner.run("health", "sandbox", incident="INC-1", progress=False)
    url = result.html.as_uri()
    page = dom(url)
    text = visible_text(page)
    for field in ("health on sandbox", "INC-1", "PostgreSQL 18", "the embedded sandbox"):
        assert field in text, field
    for raw in ("<Figure", "Finding(", "Limits(", "NaN", "In [", "In&nbsp;["):
        assert raw not in text, raw
    folded = re.findall(r"<details class=\"pgrb-code\"( open)?>", page)
    assert folded and not any(folded)  # code is there, folded: one click shows it
    charts = re.findall(r'<img [^>]*src="data:image/png;base64,', page)
    assert len(charts) == 1
    shot = screenshot(url, "report-health.png")
    assert len(set(shot.getdata())) > 64  # a page was drawn, not a blank window


def test_the_archive_page_in_the_browser(sandbox, tmp_path, monkeypatch):
    monkeypatch.setenv("PGRUNBOOK_REPORTS_DIR", str(tmp_path / "reports"))
    for runbook in ("status", "health", "status"):
        runner.run(runbook, "sandbox", progress=False)
    assert main(["reports", "site"]) == 0
    index = tmp_path / "reports" / "index.html"
    every = dom(index.as_uri())
    assert len(re.findall(r"<tr data-runbook=", every)) == 3
    assert not re.findall(r"<tr [^>]*hidden", every)
    health = dom(index.as_uri() + "#runbook=health")  # the filters narrow the list in the page
    rows = re.findall(r"<tr data-runbook=\"(\w+)\"[^>]*?( hidden=\"\")?>", health)
    assert [r for r, hidden in rows if not hidden] == ["health"]
    assert "1 shown" in health
    shot = screenshot(index.as_uri(), "archive.png", height=900)
    assert len(set(shot.getdata())) > 64

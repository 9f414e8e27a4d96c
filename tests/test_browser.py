"""What a person looks at, in a real browser: three reports and the archive's front page in
headless Chromium (Debian's `chromium` and `chromium-driver`, driven by Selenium; `.ci/run`
installs them). Screenshots go to tests/artifacts/ (git-ignored)."""

from __future__ import annotations

import base64
import io
import os
import shutil
from pathlib import Path

import pytest
from PIL import Image

from pgrunbook.archive import runner
from pgrunbook.cli import main

ARTIFACTS = Path(__file__).resolve().parent / "artifacts"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver")

if not (CHROMIUM and DRIVER):
    if os.environ.get("PGRUNBOOK_TEST_BROWSER") == "required":
        raise RuntimeError("Chromium and its driver are required here (PGRUNBOOK_TEST_BROWSER)")
    pytest.skip(
        "no chromium / chromedriver here (apt-get install chromium chromium-driver)",
        allow_module_level=True,
    )

from selenium import webdriver  # noqa: E402  (only where a browser is)
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import Select  # noqa: E402

RAW = ("<Figure", "Finding(", "Limits(", "Status.", "NaN", "NaT", "None", "In [", "Out[")


@pytest.fixture(scope="module")
def browser():
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--hide-scrollbars"):
        options.add_argument(arg)
    options.add_argument("--window-size=1280,1600")
    driver = webdriver.Chrome(options=options, service=webdriver.ChromeService(DRIVER))
    yield driver
    driver.quit()


def screenshot(browser, name: str) -> Image.Image:
    """The whole page as drawn, kept as an artifact."""
    ARTIFACTS.mkdir(exist_ok=True)
    height = browser.execute_script("return document.body.scrollHeight")
    browser.set_window_size(1280, min(max(height, 600), 8000))
    path = ARTIFACTS / name
    browser.save_screenshot(str(path))
    browser.set_window_size(1280, 1600)
    return Image.open(io.BytesIO(path.read_bytes())).convert("L")


def not_blank(png: bytes) -> bool:
    pixels = Image.open(io.BytesIO(png)).convert("RGB")
    return len(set(pixels.getdata())) > 16  # axes, labels and bars, not one flat colour


def charts(browser) -> list[bytes]:
    """Each chart image the page shows, checked loaded by the browser itself."""
    found = browser.execute_script(
        "return [...document.images].filter(i => i.src.startsWith('data:image/png'))"
        ".map(i => [i.complete && i.naturalWidth > 0 && i.naturalHeight > 0, i.src])"
    )
    assert all(loaded for loaded, _ in found), "a chart did not load"
    return [base64.b64decode(src.split(",", 1)[1]) for _, src in found]


@pytest.mark.parametrize(
    ("runbook", "expected_charts"),
    [("health", 1), ("performance", 1), ("security", 1)],
)
def test_a_report_in_the_browser(sandbox, tmp_path, monkeypatch, browser, runbook, expected_charts):
    monkeypatch.setenv("PGRUNBOOK_REPORTS_DIR", str(tmp_path / "reports"))
    result = runner.run(runbook, "sandbox", incident="INC-1", progress=False)
    browser.get(result.html.as_uri())
    assert browser.title.startswith(f"{runbook} on sandbox, ")
    header = browser.find_element(By.ID, "pgrb-header").text
    for field in (f"{runbook} on sandbox", "INC-1", "PostgreSQL 18", "the embedded sandbox"):
        assert field in header, field
    text = browser.find_element(By.TAG_NAME, "body").text  # what is visible, no more
    for raw in RAW:
        assert raw not in text, raw
    images = charts(browser)
    assert len(images) >= expected_charts and all(map(not_blank, images))

    # code is folded away, and one click shows it
    fold = browser.find_elements(By.CSS_SELECTOR, "details.pgrb-code")[0]
    code = fold.find_element(By.CSS_SELECTOR, ".jp-InputArea, .input_area, pre")
    assert fold.get_attribute("open") is None and not code.is_displayed()
    fold.find_element(By.TAG_NAME, "summary").click()
    assert code.is_displayed()

    # each finding of the summary links to the row its step showed
    link = browser.find_elements(By.CSS_SELECTOR, "#pgrb-findings a")[-1]
    anchor = link.get_attribute("href").split("#", 1)[1]
    link.click()
    row = browser.find_element(By.ID, anchor)
    assert browser.execute_script("return location.hash") == f"#{anchor}"
    assert row.is_displayed() and link.text in _step_of(browser, row)
    assert len(set(screenshot(browser, f"report-{runbook}.png").getdata())) > 64
    pdf = base64.b64decode(browser.print_page())  # the page is also the PDF
    assert pdf.startswith(b"%PDF") and len(pdf) > 20_000
    (ARTIFACTS / f"report-{runbook}.pdf").write_bytes(pdf)


def _step_of(browser, element) -> str:
    """The heading of the step whose output holds `element`."""
    return browser.execute_script(
        "let cell = arguments[0].closest('.jp-Cell');"
        "for (let c = cell; c; c = c.previousElementSibling) {"
        "  const h = c.querySelector('h1, h2, h3'); if (h) return h.textContent; }"
        "return '';",
        element,
    )


def test_the_archive_page_in_the_browser(sandbox, tmp_path, monkeypatch, browser):
    monkeypatch.setenv("PGRUNBOOK_REPORTS_DIR", str(tmp_path / "reports"))
    for runbook in ("status", "health", "status", "health"):
        runner.run(runbook, "sandbox", progress=False)
    assert main(["reports", "site"]) == 0
    index = tmp_path / "reports" / "index.html"
    browser.get(index.as_uri())
    rows = browser.find_elements(By.CSS_SELECTOR, "tr[data-runbook]")
    assert len(rows) == 4 and all(r.is_displayed() for r in rows)

    # the runbook filter, chosen as a person does, narrows the list in the page
    choose = Select(browser.find_element(By.CSS_SELECTOR, "select[data-filter='runbook']"))
    choose.select_by_value("health")
    shown = [r.get_attribute("data-runbook") for r in rows if r.is_displayed()]
    assert shown == ["health", "health"]
    assert "2 shown" in browser.find_element(By.TAG_NAME, "body").text

    # a link to the page with a filter in its address opens filtered
    browser.get(index.as_uri() + "#runbook=status")
    rows = browser.find_elements(By.CSS_SELECTOR, "tr[data-runbook]")
    assert sorted(r.get_attribute("data-runbook") for r in rows if r.is_displayed()) == [
        "status",
        "status",
    ]
    browser.get(index.as_uri())
    assert len(set(screenshot(browser, "archive.png").getdata())) > 64

    # a target's page draws its health figures across runs
    assert main(["reports", "site"]) == 0
    browser.get(index.as_uri())
    browser.find_element(By.LINK_TEXT, "sandbox").click()
    trends = browser.find_elements(By.CSS_SELECTOR, "svg.trend")
    assert trends and all(t.is_displayed() and t.size["width"] > 300 for t in trends)
    assert len(set(screenshot(browser, "target.png").getdata())) > 16


def test_a_report_that_is_not_ok_opens_with_what_to_do_first(
    sandbox, tmp_path, monkeypatch, browser
):
    """Production without a verified backup: right after the verdict, an ordered list of what to
    do, the worst first, each with the one thing to do."""
    monkeypatch.setenv("PGRUNBOOK_REPORTS_DIR", str(tmp_path / "reports"))
    monkeypatch.setenv("PGRUNBOOK_BACKUPS_DIR", str(tmp_path / "backups"))  # none
    monkeypatch.setenv("DATABASE_URL", sandbox.url("production"))
    result = runner.run("health", "production", progress=False)
    assert result.outcome == "CRIT"
    browser.get(result.html.as_uri())
    verdict = browser.find_element(By.CSS_SELECTOR, "#pgrb-header h1")
    actions = browser.find_element(By.ID, "pgrb-actions")
    following = browser.execute_script(
        "return arguments[0].nextElementSibling === arguments[1]", verdict, actions
    )
    assert following and actions.is_displayed()  # the first thing after the verdict
    items = actions.find_elements(By.TAG_NAME, "li")
    assert items[0].text.startswith("CRIT backup: take and verify one now")
    assert "pgrunbook run backup --target production" in items[0].text
    screenshot(browser, "report-actions.png")

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
    # a check that is OK is named, its step in the link's title; one that is not: its step
    step = link.get_attribute("title") or link.text
    assert row.is_displayed() and step in _step_of(browser, row)
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
    # each chart says its unit; the storage chart draws its WARN and CRIT levels, labelled
    headings = {
        t.find_element(By.XPATH, "preceding-sibling::h2[1]").text: t for t in trends
    }  # fmt: skip
    assert "storage (%)" in headings and "long transactions (s)" in headings, list(headings)
    storage = headings["storage (%)"]
    drawn = storage.find_elements(By.CSS_SELECTOR, "line.threshold")
    assert sorted(d.get_attribute("class") for d in drawn) == ["threshold CRIT", "threshold WARN"]
    assert all(0 <= float(d.get_attribute("y1")) <= 120 for d in drawn)  # within the chart
    labels = [t.text for t in storage.find_elements(By.CSS_SELECTOR, "text.tick")]
    assert "WARN 80" in labels and "CRIT 90" in labels, labels
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


# what a person must never meet in a report: Python reprs, ISO times with their T and offset
REPRS = ("datetime.", "{'", "Decimal(", "Timestamp(", "Traffic(", "+00:00")
NUMBER_COLUMNS_NOT_RIGHT_ALIGNED = """
const number = /^-?[0-9][0-9,]*(\\.[0-9]+)?( ?(B|kB|MB|GB|TB|%))?$/;
const wrong = [];
for (const table of document.querySelectorAll('table.pgrb-table')) {
  const rows = [...table.querySelectorAll('tbody tr')].filter(r => r.offsetParent !== null);
  const width = Math.max(0, ...rows.map(r => r.cells.length));
  for (let i = 0; i < width; i++) {
    const cells = rows.map(r => r.cells[i]).filter(c => c && c.innerText.trim() !== '');
    if (cells.length && cells.every(c => number.test(c.innerText.trim()))) {
      for (const c of cells) {
        if (getComputedStyle(c).textAlign !== 'right') wrong.push(c.innerText);
      }
    }
  }
}
return wrong.slice(0, 5);
"""
EVERY_RUNBOOK = [
    ("status", "sandbox", {}),
    ("health", "sandbox", {}),
    ("performance", "sandbox", {}),
    ("security", "sandbox", {}),
    ("integrity", "sandbox", {}),
    ("migrate", "sandbox", {}),
    ("seed", "sandbox", {}),
    ("backup", "sandbox", {}),
    ("restore", "sandbox", {}),
    ("staging_refresh", "staging", {}),
    ("dr_drill", "sandbox", {}),
]


def test_every_report_reads_as_a_person_writes(sandbox, tmp_path, monkeypatch, browser):
    """Each runbook's report, as the browser draws it: no Python repr or raw time in what is
    visible, headers in words (a name from the data, such as a table in a grants matrix, is
    marked as such), numbers right-aligned, each finding shown in full once in its step (and,
    when it is not OK, listed in the header), the limits folded into an appendix."""
    monkeypatch.setenv("PGRUNBOOK_REPORTS_DIR", str(tmp_path / "reports"))
    monkeypatch.setenv("PGRUNBOOK_BACKUPS_DIR", str(tmp_path / "backups"))
    for runbook, target, parameters in EVERY_RUNBOOK:
        result = runner.run(runbook, target, parameters, progress=False)
        assert result.outcome in ("OK", "WARN"), (runbook, result.outcome)
        browser.get(result.html.as_uri())
        text = browser.find_element(By.TAG_NAME, "body").text
        for raw in (*RAW, *REPRS):
            assert raw not in text, (runbook, raw, text[text.find(raw) - 200 : text.find(raw) + 50])
        headers = [
            h.text
            for h in browser.find_elements(By.CSS_SELECTOR, "th:not(.pgrb-name)")
            if h.is_displayed()
        ]
        assert headers and not [h for h in headers if "_" in h], (runbook, headers)
        # a column of numbers (and of sizes) reads right-aligned
        left = browser.execute_script(NUMBER_COLUMNS_NOT_RIGHT_ALIGNED)
        assert not left, (runbook, left)
        # each finding in full once in its step; one not OK also in the header's list
        expected: dict[str, int] = {}
        for f in result.findings:
            expected[f.summary] = expected.get(f.summary, 0) + (1 if f.status.name == "OK" else 2)
        cells = browser.execute_script(
            "return [...document.querySelectorAll('td')].filter(c => c.offsetParent !== null)"
            ".map(c => c.innerText.trim())"
        )
        for summary, most in expected.items():
            assert 1 <= cells.count(summary) <= most, (runbook, summary, cells.count(summary))
        # every limit in force, folded away (each finding shows the threshold it used)
        for folded in browser.find_elements(By.CSS_SELECTOR, "details.pgrb-limits"):
            assert folded.get_attribute("open") is None
            assert not folded.find_element(By.TAG_NAME, "table").is_displayed()
        if runbook == "performance":
            screenshot(browser, "report-performance-tables.png")


def test_an_integrity_crit_shows_the_offending_rows_and_the_query_for_all(
    sandbox, tmp_path, monkeypatch, browser
):
    """12 orders whose customer is missing: under the CRIT, in its step, the first orders by their
    key and the query that lists all 12, which gives them when run."""
    import psycopg
    from psycopg import sql

    name = "pgrb_shop_" + tmp_path.name[-8:].replace("-", "_").lower()
    with psycopg.connect(sandbox.url("postgres"), autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    url = psycopg.conninfo.make_conninfo(sandbox.url("postgres"), dbname=name)
    try:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(
                "CREATE TABLE customers (id int PRIMARY KEY);"
                "CREATE TABLE orders (order_no int PRIMARY KEY, customer_id int);"
                "INSERT INTO customers SELECT generate_series(1, 5);"
                "INSERT INTO orders SELECT g, 1 + g % 5 FROM generate_series(1, 40) g;"
                "UPDATE orders SET customer_id = 900 + order_no WHERE order_no % 3 = 0"
                " AND order_no <= 36;"
                "ALTER TABLE orders ADD CONSTRAINT orders_customer FOREIGN KEY (customer_id)"
                " REFERENCES customers NOT VALID"
            )
        config = tmp_path / "shop.toml"
        config.write_text('[targets.shop]\nurl_env = "SHOP_URL"\n')
        monkeypatch.setenv("PGRUNBOOK_CONFIG", str(config))
        monkeypatch.setenv("SHOP_URL", url)
        monkeypatch.setenv("PGRUNBOOK_REPORTS_DIR", str(tmp_path / "reports"))
        result = runner.run("integrity", "shop", {"checks": "fk"}, progress=False)
        assert result.outcome == "CRIT"
        browser.get(result.html.as_uri())
        first = browser.find_element(By.CSS_SELECTOR, "#pgrb-actions li").text
        assert first.startswith("CRIT foreign key orders_customer: list the orphans with the query")
        crit = browser.find_element(By.XPATH, "//tr[starts-with(@id, 'pgrb-finding-')][td='CRIT']")
        assert "12 orphans in public.orders(customer_id)" in crit.text
        evidence = crit.find_element(By.XPATH, "following-sibling::tr[1]")
        assert evidence.get_attribute("class") == "pgrb-evidence" and evidence.is_displayed()
        keys = [li.text for li in evidence.find_elements(By.TAG_NAME, "li")]
        assert keys[:2] == ["order_no=3, customer_id=903", "order_no=6, customer_id=906"]
        assert len(keys) == 10 and "the first 10 of 12" in evidence.text
        query = evidence.find_element(By.TAG_NAME, "pre").text
        with psycopg.connect(url) as conn:
            rows = conn.execute(query).fetchall()
        assert rows == [(n, 900 + n) for n in range(3, 37, 3)]
        screenshot(browser, "report-integrity-evidence.png")
    finally:
        with psycopg.connect(sandbox.url("postgres"), autocommit=True) as conn:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )

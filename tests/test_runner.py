"""The runner and the archive: real papermill runs against the session sandbox."""

import json
import subprocess
import sys
from pathlib import Path

import nbformat
import psycopg
import pytest

from pgrunbook.archive import reports, runner
from pgrunbook.cli import main
from pgrunbook.facts import history

ROOT = Path(__file__).resolve().parents[1]

METADATA = (
    "runbook",
    "runbook_version",
    "parameters",
    "target",
    "server_version",
    "operator",
    "host",
    "start",
    "end",
    "duration_s",
    "outcome",
    "findings",
    "incident",
)


def test_status_run_archives_report_html_and_metadata(sandbox, reports_dir):
    result = runner.run(
        "status", "sandbox", {"pool_limit": "25"}, incident="INC-42", progress=False
    )
    assert result.exit_code == 0 and result.outcome == "OK"
    assert result.notebook.parent == reports_dir / "status"
    assert result.notebook.name.endswith("_sandbox.ipynb") and result.html.exists()
    meta = nbformat.read(result.notebook, as_version=4).metadata["pgrunbook"]
    assert all(key in meta for key in METADATA)
    assert meta["parameters"] == {"pool_limit": 25, "target": "sandbox"}
    assert meta["incident"] == "INC-42" and meta["server_version"].startswith("18")
    assert {f["check"] for f in meta["findings"]} >= {"connectivity", "connections", "migrations"}
    assert "connectivity" in result.html.read_text()
    assert history.find(str(result.notebook))["outcome"] == "OK"
    _a_report_a_person_reads(result.html.read_text())


def _a_report_a_person_reads(page: str) -> None:
    """The header first (what ran where, how it ended, the findings worst first), then the
    steps with their code folded away; no prompts, no parameter cells, no Python reprs."""
    import html
    import re

    title = re.search(r"<title>(.*)</title>", page)[1]
    assert re.fullmatch(r"status on sandbox, \d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC: OK", title), title
    header = page.index('id="pgrb-header"')
    first_step = page.index('class="jp-Cell ', page.index("<main>"))
    assert header < page.index('id="pgrb-findings"') < first_step  # the summary comes first
    head = page[header : page.index("</section>", header)]
    for field in ("INC-42", "PostgreSQL 18", "pool_limit = 25", "operator", "started"):
        assert field in head, field
    assert "the embedded sandbox&#39;s sandbox database" in head or (
        "the embedded sandbox's sandbox database" in head
    )
    body = page[page.index("<main>") :]
    assert "In&nbsp;[" not in body and "Out[" not in body
    assert "pool_limit: int = 0" not in body  # the parameters cell is not repeated
    assert body.count('<details class="pgrb-code">') >= 5  # every step's code, folded
    assert "Finding(" not in body and "<Figure size" not in body.replace("&lt;", "<")
    # each finding in the summary links to the row of the step that made it
    # (a finding that is not OK is a row naming its step; one that is OK, its check's name
    # with the step as the link's title)
    links = re.findall(r'<a href="#(pgrb-finding-\d+)"(?: title="([^"]+)")?>([^<]+)</a>', head)
    assert len(links) >= 5 and len({a for a, _, _ in links}) == len(links)
    for anchor, title, text in links:
        step = html.unescape(title or text)
        row = body.index(f'id="{anchor}"')
        assert body.rfind(step, 0, row) > body.rfind("<h2", 0, row) - 200  # under its heading
    # tables in human units, without the index column or NaN
    assert 'class="dataframe pgrb-table"' in body and "NaN" not in body
    assert "<th></th>" not in body and " MB<" in body or " kB<" in body


def test_warnings_go_to_the_metadata_not_the_report(sandbox, tmp_path, monkeypatch):
    """A library warning printed by a step: kept in the run's metadata, out of the report."""
    import shutil

    home = tmp_path / "home"
    (home / "runbooks").mkdir(parents=True)
    shutil.copy(ROOT / "pyproject.toml", home)
    shutil.copytree(ROOT / "migrations", home / "migrations")
    nb = nbformat.read(ROOT / "runbooks" / "status.ipynb", as_version=4)
    cell = next(c for c in nb.cells if "status.database_size(conn)" in c.source)
    cell.source = (
        "import warnings\nwarnings.warn('Tight layout not applied', UserWarning)\n" + cell.source
    )
    nbformat.write(nb, home / "runbooks" / "status.ipynb")
    monkeypatch.setenv("PGRUNBOOK_HOME", str(home))
    result = runner.run("status", "sandbox", progress=False)
    assert result.outcome == "OK", result.error
    archived = nbformat.read(result.notebook, as_version=4)
    streams = [o for c in archived.cells for o in c.get("outputs", []) if o.output_type == "stream"]
    assert not [o for o in streams if o.name == "stderr"]
    [kept] = archived.metadata["pgrunbook"]["warnings"]
    assert "Tight layout not applied" in kept["text"]
    assert archived.cells[kept["cell"]].source.startswith("import warnings")
    page = result.html.read_text()
    assert "UserWarning: Tight layout" not in page and "1 step(s) wrote warnings" in page


def test_verify_passes_then_names_the_changed_report(sandbox, capsys):
    result = runner.run("status", "sandbox", progress=False)
    assert reports.verify().ok
    data = bytearray(result.html.read_bytes())
    data[len(data) // 2] ^= 0x01
    result.html.write_bytes(bytes(data))
    check = reports.verify()
    assert not check.ok and check.changed == [
        str(result.html.relative_to(history.index_path().parent))
    ]
    assert main(["reports", "verify"]) == 2
    assert result.html.name in capsys.readouterr().out
    data[len(data) // 2] ^= 0x01  # put the byte back: the archive verifies again
    result.html.write_bytes(bytes(data))
    assert reports.verify().ok


def test_an_edited_index_line_breaks_the_chain(sandbox):
    runner.run("status", "sandbox", progress=False)
    runner.run("status", "sandbox", progress=False)
    path = history.index_path()
    original = path.read_text()
    lines = original.splitlines()
    entry = json.loads(lines[-2])
    entry["outcome"] = "CRIT"
    lines[-2] = json.dumps(entry, sort_keys=True)
    path.write_text("\n".join(lines) + "\n")
    try:
        assert reports.verify().broken_chain == [len(lines)]
    finally:
        path.write_text(original)


def test_a_failed_run_is_archived_with_the_failing_cell(sandbox, tmp_path, monkeypatch):
    """A step that raises: the run is archived as FAILED, with the failing cell and its error."""
    import shutil

    home = tmp_path / "home"
    (home / "runbooks").mkdir(parents=True)
    shutil.copy(ROOT / "pyproject.toml", home)
    nb = nbformat.read(ROOT / "runbooks" / "status.ipynb", as_version=4)
    cell = next(c for c in nb.cells if "status.database_size(conn)" in c.source)
    cell.source = 'raise RuntimeError("the disk went away")'
    nbformat.write(nb, home / "runbooks" / "status.ipynb")
    monkeypatch.setenv("PGRUNBOOK_HOME", str(home))
    result = runner.run("status", "sandbox", progress=False)
    assert result.outcome == "FAILED" and result.exit_code == 3
    assert "RuntimeError: the disk went away" in result.error
    nb = nbformat.read(result.notebook, as_version=4)
    failing = [
        c for c in nb.cells if any(o.get("output_type") == "error" for o in c.get("outputs", []))
    ]
    assert len(failing) == 1 and "the disk went away" in failing[0].source
    assert nb.metadata["pgrunbook"]["outcome"] == "FAILED"
    assert history.find(str(result.notebook))["outcome"] == "FAILED"


def test_the_kernels_own_output_stays_off_the_terminal_and_names_its_death(
    sandbox, tmp_path, monkeypatch, capfd
):
    """What the kernel process itself writes (not a cell's output) goes to the run's kernel log,
    not onto the terminal where runs side by side would mix; a kernel that dies leaves its last
    line in the run's error."""
    import shutil

    home = tmp_path / "home"
    (home / "runbooks").mkdir(parents=True)
    shutil.copy(ROOT / "pyproject.toml", home)
    nb = nbformat.read(ROOT / "runbooks" / "status.ipynb", as_version=4)
    cell = next(c for c in nb.cells if "status.database_size(conn)" in c.source)
    cell.source = (
        "import os, signal\nos.write(2, b'the kernel process speaks\\n')\n"
        "os.kill(os.getpid(), signal.SIGKILL)"
    )
    nbformat.write(nb, home / "runbooks" / "status.ipynb")
    monkeypatch.setenv("PGRUNBOOK_HOME", str(home))
    result = runner.run("status", "sandbox", progress=False)
    assert result.outcome == "FAILED" and result.exit_code == 3
    assert "(kernel: the kernel process speaks)" in result.error
    out, err = capfd.readouterr()
    assert "the kernel process speaks" not in out + err


@pytest.fixture
def extra_connection(sandbox):
    with psycopg.connect(sandbox.url("sandbox")) as conn:
        conn.execute("SELECT 1")
        yield conn


def test_crit_findings_exit_2_from_the_runner(extra_connection):
    result = runner.run("status", "sandbox", {"pool_limit": "1"}, progress=False)
    assert result.exit_code == 2 and result.outcome == "CRIT"
    assert [f.check for f in result.findings if f.status.name == "CRIT"] == ["connections"]


def test_plain_papermill_runs_status_and_fails_on_crit(extra_connection, tmp_path):
    root = Path(runner.config.settings().runbooks_dir)
    ok = subprocess.run(
        [
            sys.executable,
            "-m",
            "papermill",
            str(root / "status.ipynb"),
            str(tmp_path / "ok.ipynb"),
            "-p",
            "target",
            "sandbox",
        ],
        capture_output=True,
    )
    assert ok.returncode == 0, ok.stderr[-2000:]
    crit = subprocess.run(
        [
            sys.executable,
            "-m",
            "papermill",
            str(root / "status.ipynb"),
            str(tmp_path / "crit.ipynb"),
            "-p",
            "target",
            "sandbox",
            "-p",
            "pool_limit",
            "1",
        ],
        capture_output=True,
    )
    assert crit.returncode != 0 and b"RunbookCritical" in crit.stderr


def test_reports_list_filters(sandbox):
    runner.run("status", "staging", incident="INC-7", progress=False)
    assert all(e["target"] == "staging" for e in history.select(target="staging"))
    assert [e["incident"] for e in history.select(incident="INC-7")] == ["INC-7"]
    assert history.select(runbook="status", outcome="ok")
    assert not history.select(until="2000-01-01")
    today = history.select(incident="INC-7")[0]["start"][:10]
    assert history.select(since=today, incident="INC-7")


@pytest.fixture(scope="module")
def _three_runs(sandbox, tmp_path_factory):
    """An archive with three status runs, made once: each test damages a copy of it."""
    folder = tmp_path_factory.mktemp("archive") / "reports"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PGRUNBOOK_REPORTS_DIR", str(folder))
        runs = [runner.run("status", "sandbox", progress=False) for _ in range(3)]
    return folder, runs


@pytest.fixture
def own_archive(_three_runs, tmp_path, monkeypatch):
    """A copy of the three-run archive, with its own head record."""
    import shutil

    folder, runs = _three_runs
    shutil.copytree(folder, tmp_path / "reports")
    monkeypatch.setenv("PGRUNBOOK_REPORTS_DIR", str(tmp_path / "reports"))
    lines = history.index_path().read_text().splitlines()
    reports._write_head(len(lines), lines[-1])
    assert reports.verify().ok and reports.verify().checked == 6
    return [tmp_path / "reports" / r.notebook.relative_to(folder) for r in runs]


def _cut(path, keep):
    lines = path.read_text().splitlines(keepends=True)
    path.write_text("".join(lines[:keep]))


@pytest.mark.parametrize(
    "damage, said",
    [
        (lambda p: _cut(p, 2), "the head record counts 3"),
        (lambda p: p.write_text(""), "the head record counts 3"),
        (lambda p: p.unlink(), "index is missing"),
        (lambda p: p.write_text(p.read_text()[:-40]), "not a whole JSON record"),
    ],
)
def test_verify_names_a_cut_emptied_or_removed_index(own_archive, damage, said, capsys):
    damage(history.index_path())
    check = reports.verify()
    assert not check.ok and said in "\n".join(check.lines())
    assert main(["reports", "verify"]) == 2
    assert main(["reports", "list"]) == 0  # listing reads what it can, never crashes


def test_a_rechained_index_is_caught_by_its_key(own_archive, monkeypatch):
    monkeypatch.setenv(reports.KEY_ENV, "k3y-kept-apart")
    runner.run("status", "sandbox", progress=False)  # from here on the chain is keyed
    path = history.index_path()
    lines = path.read_text().splitlines()
    del lines[1]  # remove a run, then recompute every link as someone without the key would
    rebuilt = []
    for line in lines:
        entry = json.loads(line)
        entry["prev"] = reports._line_hash(rebuilt[-1], keyed=False) if rebuilt else reports.GENESIS
        rebuilt.append(json.dumps(entry, sort_keys=True))
    path.write_text("\n".join(rebuilt) + "\n")
    reports.head_path().unlink()  # and the head record too
    check = reports.verify()
    assert not check.ok and "no index line is chained under it" in "\n".join(check.lines())
    monkeypatch.delenv(reports.KEY_ENV)
    plain = (
        reports.verify()
    )  # without the key the chain itself looks whole; only the orphaned files tell
    assert plain.broken_chain == [] and plain.index == [] and len(plain.unindexed) == 2


def test_verify_names_a_report_that_a_killed_run_left_unindexed(own_archive):
    stray = own_archive[0].with_name("20260101T000000Z_sandbox.ipynb")
    stray.touch()  # what a killed run leaves: its reserved, never archived report
    check = reports.verify()
    assert not check.ok and check.unindexed == [str(stray.relative_to(history.index_path().parent))]


def test_an_archive_with_reports_but_no_index_is_not_ok(own_archive):
    history.index_path().unlink()
    reports.head_path().unlink()
    check = reports.verify()
    assert not check.ok and "no index" in "\n".join(check.lines())


def test_the_archive_as_a_site(sandbox, tmp_path, monkeypatch, capsys):
    """Every run rewrites index.html; `reports site` adds a page per incident and per target,
    with the target's health figures drawn across runs, and verify still names nothing."""
    import json
    import re

    monkeypatch.setenv("PGRUNBOOK_REPORTS_DIR", str(tmp_path / "reports"))
    runs = [
        runner.run("health", "sandbox", incident="INC-9", progress=False),
        runner.run("status", "sandbox", incident="INC-9", progress=False),
        runner.run("health", "sandbox", progress=False),
    ]
    index = tmp_path / "reports" / "index.html"

    def listed() -> list[dict]:
        data = re.search(r'<script type="application/json" id="runs-data">(.*?)</script>', page)
        return json.loads(data[1])

    page = index.read_text()  # written by the runs themselves
    assert [r["runbook"] for r in listed()] == ["health", "status", "health"]
    assert listed()[0]["html"].endswith(runs[-1].html.name)  # newest first
    assert main(["reports", "site"]) == 0
    page = index.read_text()
    rows = listed()
    links = [r["html"] for r in rows] + [f"_site/targets/{r['target_page']}" for r in rows]
    links += [f"_site/incidents/{r['incident_page']}" for r in rows if r["incident"]]
    assert all((index.parent / link).is_file() for link in links), links
    assert [r["state"] for r in rows] == ["verified"] * 3 and 'data-filter="incident"' in page
    incident = next(index.parent / link for link in links if "/incidents/" in link)
    shown = incident.read_text()
    assert "Incident INC-9" in shown and shown.count("<tr><td>") == 2
    target = (index.parent / links[3]).read_text()
    charts = re.findall(
        r'<svg class="trend" [^>]*aria-label="([^"]+)">.*?<polyline class="line" points="([^"]+)"',
        target,
        flags=re.S,
    )
    assert charts and any(label.startswith("storage ") for label, _ in charts)
    for _, line in charts:
        points = [tuple(map(float, p.split(","))) for p in line.split()]
        assert len(points) == 2 and points[0][0] == 0 and points[-1][0] == 600  # across the width
    assert reports.verify().ok  # the site's pages are not runs the index lacks


def test_the_site_data_cannot_close_its_script():
    """An incident id is the operator's text: in index.html's data it can end nothing."""
    import json

    from pgrunbook.archive import site

    nasty = {"incident": "</script><img src=x onerror=alert(1)> & more"}
    text = site._json_for_script([nasty])
    assert "<" not in text and ">" not in text and "&" not in text
    assert json.loads(text) == [nasty]

"""Runbook notebooks follow the contract: one parameters cell, safe defaults, thin cells."""

from pathlib import Path

import nbformat
import pytest

from pgrunbook.archive import runner

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "runbooks").glob("*.ipynb"))


@pytest.fixture(params=NOTEBOOKS, ids=lambda p: p.stem)
def nb(request):
    return nbformat.read(request.param, as_version=4), request.param.stem


def test_there_are_runbooks():
    assert {"status", "seed"} <= {p.stem for p in NOTEBOOKS}


def test_one_parameters_cell_first_after_the_title(nb):
    notebook, _ = nb
    tagged = [i for i, c in enumerate(notebook.cells) if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1
    assert notebook.cells[0].cell_type == "markdown" and notebook.cells[0].source.startswith("# ")
    first_code = next(i for i, c in enumerate(notebook.cells) if c.cell_type == "code")
    assert tagged == [first_code]


def test_every_parameter_has_a_default_help_and_no_secret(nb):
    _, name = nb
    params = runner.parameters(name)
    # the sandbox by default; a staging refresh copies production into staging (in plan mode: reads
    # only)
    if name == "fleet_report":  # reads the archive only: no target
        assert "target" not in params
    else:
        assert params["target"].default == (
            '"staging"' if name == "staging_refresh" else '"sandbox"'
        )
    for p in params.values():
        assert p.default not in ("", None) and p.help, p.name
        assert not any(word in p.name for word in ("password", "url", "dsn", "secret"))


def test_outputs_are_stripped(nb):
    notebook, _ = nb
    for cell in notebook.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None


def test_steps_are_headings_and_cells_stay_thin(nb):
    notebook, _ = nb
    headings = [
        c.source for c in notebook.cells if c.cell_type == "markdown" and c.source.startswith("## ")
    ]
    assert len(headings) >= 3 and headings[-1] == "## Result"
    for cell in notebook.cells:
        if cell.cell_type == "code" and "parameters" not in cell.metadata.get("tags", []):
            code = [line for line in cell.source.splitlines() if not line.startswith("%")]
            assert len(code) <= 6, cell.source  # IPython magics (display set-up) aside
            for word in ("try:", "except", "SELECT ", "for ", "while ", "def "):
                assert word not in cell.source, (word, cell.source)
    assert "findings.record()" in [c for c in notebook.cells if c.cell_type == "code"][-1].source

"""The library's shape: layers import only downward, and every threshold is a Limits field."""

import ast
import math
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from pgrunbook.base import limits
from pgrunbook.base.errors import ConfigError
from pgrunbook.base.findings import Status
from pgrunbook.base.limits import Limits, level

LIB = Path(__file__).resolve().parents[1] / "lib" / "pgrunbook"
LAYERS = [
    "base",
    "facts",
    "checks",
    "procedures",
    "archive",
]  # each may import only those before it


def _imports(path: Path) -> list[tuple[int, str]]:
    """(line, layer) of every pgrunbook module that `path` imports, at any depth in the file."""
    package = ["pgrunbook", *path.relative_to(LIB).parent.parts]
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if not isinstance(node, ast.ImportFrom):
            continue
        if node.level:
            base = package[: len(package) - node.level + 1]
            name = [*base, *(node.module or "").split(".")] if node.module else base
        else:
            name = (node.module or "").split(".")
        if name[0] == "pgrunbook":
            found.append((node.lineno, name[1] if len(name) > 1 and name[1] in LAYERS else "top"))
    return found


@pytest.mark.parametrize("layer", LAYERS)
def test_a_layer_imports_only_the_layers_below_it(layer):
    allowed = set(LAYERS[: LAYERS.index(layer) + 1])
    upward = [
        f"{path.relative_to(LIB)}:{line} imports {to}"
        for path in sorted((LIB / layer).rglob("*.py"))
        for line, to in _imports(path)
        if to not in allowed and to != "top" or to == "top" and layer != "archive"
    ]
    assert not upward, upward


def test_no_status_is_decided_outside_level():
    """Checks turn figures into statuses through limits.level only: no inline comparisons."""
    inline = re.compile(r"Status\.(OK|WARN|CRIT) if [^\n]*[<>]=?")
    offenders = [
        f"{p.relative_to(LIB)}:{n}"
        for p in LIB.rglob("*.py")
        if p.name != "limits.py"
        for n, line in enumerate(p.read_text().splitlines(), 1)
        if inline.search(line)
    ]
    assert not offenders, offenders


def test_level_rising_and_falling():
    assert [level(v, 80, 90) for v in (79.9, 80, 90)] == [Status.OK, Status.WARN, Status.CRIT]
    assert level(95, 90) is Status.WARN  # no crit: at worst WARN
    assert [level(v, 99, falling=True) for v in (99, 98.9)] == [Status.OK, Status.WARN]
    assert level(10, 99, 50, falling=True) is Status.CRIT


def test_limits_default_to_the_guide_and_refuse_nonsense(tmp_path, monkeypatch):
    d = Limits()
    assert (
        d.pool_limit,
        d.storage_warn_pct,
        d.storage_crit_pct,
        d.slow_ms,
        d.rpo_h,
        d.rto_min,
        d.keep_h,
        d.retention_days,
    ) == (20, 80, 90, 100, 24, 15, 48, 7)
    assert (
        d.with_values({"slow_ms": 250, "rpo_h": 0}, where="test").slow_ms == 250
    )  # 0: as configured
    with pytest.raises(ConfigError, match="storage_warn_pct = 95 is above storage_crit_pct"):
        d.with_values({"storage_warn_pct": 95}, where="test")
    for bad in (-1, math.nan, "x", True):
        with pytest.raises(ConfigError, match="give a positive number"):
            d.with_values({"keep_h": bad}, where="test")
    (tmp_path / "pyproject.toml").write_text(
        "[tool.pgrunbook]\nslow_ms = 50\n"
        '[tool.pgrunbook.targets.staging]\nurl_env = "X"\nslow_ms = 70\n'
    )
    monkeypatch.setenv("PGRUNBOOK_HOME", str(tmp_path))
    from pgrunbook.base import config

    config.settings.cache_clear() if hasattr(config.settings, "cache_clear") else None
    assert limits.for_target("production").slow_ms == 50
    assert limits.for_target("staging").slow_ms == 70
    assert limits.for_target("staging", slow_ms=90).slow_ms == 90


def test_ruff_passes_on_the_project():
    """The project's own [tool.ruff] rules and format hold everywhere (it runs with the suite)."""
    root = LIB.parents[1]
    ruff = shutil.which("ruff", path=str(Path(sys.executable).parent)) or shutil.which("ruff")
    assert ruff, "ruff is installed with the test extra: pip install -e '.[test]'"
    for args in (["check", "."], ["format", "--check", "."]):
        done = subprocess.run([ruff, *args], cwd=root, capture_output=True, text=True)
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-1000:]

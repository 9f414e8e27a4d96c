"""The documentation's commands are true: every `pgrunbook` command in a shell block of the
README and of docs/ parses, names a runbook that exists and parameters it has; the README's
five-minute tour runs on the sandbox, in order, as written."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from pgrunbook.archive import runner
from pgrunbook.cli import build_parser, main

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def shell_blocks(text: str) -> list[str]:
    return re.findall(r"```sh\n(.*?)```", text, re.S)


def commands(block: str) -> list[list[str]]:
    """The `pgrunbook` commands of a shell block, as words (comments and continuations read as
    the shell reads them)."""
    found = []
    for line in block.replace("\\\n", " ").splitlines():
        words = shlex.split(line, comments=True)
        if words[:1] == ["pgrunbook"]:
            found.append(words[1:])
    return found


DOCUMENTED = [
    (page.name, words)
    for page in PAGES
    for b in shell_blocks(page.read_text())
    for words in commands(b)
]


def test_the_pages_hold_commands_and_link_only_to_pages_that_exist():
    assert len(DOCUMENTED) > 40 and {page for page, _ in DOCUMENTED} >= {
        "README.md", "runbooks.md", "backups.md", "reports.md", "migrations.md", "fleets.md",
    }  # fmt: skip
    for page in PAGES:
        for link in re.findall(r"\]\(([^)#:]+\.(?:md|png))\)", page.read_text()):
            assert (page.parent / link).exists(), (page.name, link)


def _id(x) -> str:
    return x if isinstance(x, str) else " ".join(x)[:60]


@pytest.mark.parametrize(("page", "words"), DOCUMENTED, ids=_id)
def test_each_documented_command_parses_and_names_what_exists(page, words):
    try:
        args = build_parser().parse_args(words)
    except SystemExit as e:
        raise AssertionError(f"{page}: pgrunbook {shlex.join(words)} does not parse") from e
    runbook = getattr(args, "runbook", None)
    if args.command in ("run", "fleet", "list") and runbook:
        assert runbook in runner.available(), (page, runbook)
        known = runner.parameters(runbook)
        for name, _ in getattr(args, "parameter", None) or []:
            assert name in known, f"{page}: {runbook} has no parameter {name!r}"


def test_every_command_and_action_is_documented():
    text = "\n".join(p.read_text() for p in PAGES)
    choices = build_parser()._subparsers._group_actions[0].choices
    for name, parser in choices.items():
        assert f"pgrunbook {name}" in text, name
        for action in parser._actions:
            if action.choices and action.dest == "action":
                for choice in action.choices:
                    assert re.search(rf"pgrunbook {name}[^\n]*\b{choice}\b", text), (
                        f"{name} {choice}"
                    )


def test_the_five_minute_tour_runs_as_written(sandbox, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("PGRUNBOOK_REPORTS_DIR", str(tmp_path / "reports"))
    monkeypatch.setenv("PGRUNBOOK_BACKUPS_DIR", str(tmp_path / "backups"))
    readme = (ROOT / "README.md").read_text()
    tour = readme.split("## Five minutes on the sandbox", 1)[1]
    steps = commands(shell_blocks(tour)[0])
    assert len(steps) >= 8
    *ordinary, refused = steps
    for words in ordinary:
        code = main([*words, "--no-progress"] if words[0] == "run" else words)
        assert code in (0, 1), (words, code, capsys.readouterr().err[-500:])  # OK or WARN
    assert (tmp_path / "reports" / "index.html").exists()
    capsys.readouterr()
    assert main(refused) == 3  # production is protected: refused, and the way to confirm given
    said = capsys.readouterr().err
    assert f"run `pgrunbook {shlex.join(refused)} -p confirm production`" in said, said

"""The documentation: the command-line reference is written from the parser, the site builds with
`mkdocs build --strict` (a broken link or include fails), and the README stays short."""

import argparse
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

from probe.cli import build_parser
from probe.cli.markdown import cli_markdown

ROOT = Path(__file__).resolve().parents[1]


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    return next(a.choices for a in parser._actions if isinstance(a, argparse._SubParsersAction))


def _section(markdown: str, command: str) -> str:
    return markdown.split(f"## probe {command}\n", 1)[1].split("\n## probe ", 1)[0]


def test_every_flag_of_every_subcommand_is_in_its_section():
    parser = build_parser()
    markdown = cli_markdown(parser)
    for name, sub in _subparsers(parser).items():
        section = _section(markdown, name)
        for action in sub._actions:
            for flag in action.option_strings:
                if flag not in ("-h", "--help"):
                    assert f"`{flag}`" in section, (name, flag)
            for choice in action.choices or ():
                if not isinstance(action, argparse._SubParsersAction):
                    assert f"`{choice}`" in section, (name, choice)


def test_a_new_flag_appears_without_editing_the_docs():
    parser = build_parser()
    _subparsers(parser)["grid"].add_argument("--a-flag-added-later", type=int, default=7, help="a new setting")
    section = _section(cli_markdown(parser), "grid")
    assert "`--a-flag-added-later` `A_FLAG_ADDED_LATER`" in section
    assert "a new setting (default: `7`)" in section


def test_the_cli_page_is_the_parser_s_output_not_typed_by_hand():
    page = (ROOT / "docs" / "reference" / "cli.md").read_text()
    assert "`--" not in page  # no flag is written into the page itself
    spec = importlib.util.spec_from_file_location("docs_hooks", ROOT / "docs" / "hooks.py")
    hooks = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(hooks)
    built = hooks.on_page_markdown(page, None, None, None)
    assert hooks.CLI_MARKER not in built and "## probe grid" in built and "`--dry-run`" in built


def test_the_site_builds_strictly(tmp_path):
    result = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
                            cwd=ROOT, capture_output=True, text=True, env={**os.environ,
                                                                          "NO_MKDOCS_2_WARNING": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    assert (tmp_path / "site" / "reference" / "cli" / "index.html").is_file()
    assert (tmp_path / "site" / "results" / "grid" / "table1-large" / "figures" / "iou.png").is_file()


def test_the_readme_is_short_and_starts_with_the_two_commands():
    lines = (ROOT / "README.md").read_text().splitlines()
    assert len(lines) <= 150
    text = "\n".join(lines[:60])
    assert "make demo" in text and "make test" in text


def test_include_blocks_copy_their_files_and_every_page_is_up_to_date(tmp_path):
    from analysis.includes import IncludeError, pages_with_includes, rendered

    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "table.md").write_text("| a |\n|---|\n| 1 |\n")
    page = tmp_path / "README.md"
    page.write_text("Intro.\n\n<!-- include: data/table.md -->\nstale, typed by hand\n<!-- end include -->\n\nEnd.\n")
    assert rendered(page) == ("Intro.\n\n<!-- include: data/table.md -->\n| a |\n|---|\n| 1 |\n<!-- end include -->"
                              "\n\nEnd.\n")
    (tmp_path / "data" / "scores.csv").write_text("task,score,n\ndigits,0.123456,40\n")
    page.write_text("<!-- include: data/scores.csv -->\n<!-- end include -->\n")
    assert rendered(page) == ("<!-- include: data/scores.csv -->\n| task | score | n |\n|---|---|---|\n"
                              "| digits | 0.1235 | 40 |\n<!-- end include -->\n")
    page.write_text("<!-- include: data/missing.md -->\n<!-- end include -->\n")
    with pytest.raises(IncludeError, match="missing.md, which does not exist"):
        rendered(page)
    pages = pages_with_includes()
    assert any(p.name == "README.md" and p.parent.name == "reference-large" for p in pages)
    stale = [str(p) for p in pages if rendered(p) != p.read_text()]
    assert not stale, f"run python -m analysis.includes: {stale}"

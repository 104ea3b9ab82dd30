"""MkDocs hooks: the pages written from the code and the stored results.

- ``<!-- cli-reference -->`` in a page becomes the command-line reference, written from ``probe``'s parser;
- the stored results' Markdown tables and figures (``results/**/*.md``, ``*.png``) are added to the site
  under their repository paths, so pages link and include them where they are.

The tutorials are the notebooks executed in quick mode (``docs/tutorials.py`` writes them).
"""

from __future__ import annotations

import os
from pathlib import Path

from mkdocs.plugins import event_priority
from mkdocs.structure.files import File, Files

ROOT = Path(__file__).resolve().parents[1]
CLI_MARKER = "<!-- cli-reference -->"
ADDED = {"results": ("*.md", "*.png")}


@event_priority(100)
def on_files(files: Files, config) -> Files:  # noqa: ANN001
    for folder, patterns in ADDED.items():
        for pattern in patterns:
            for path in sorted((ROOT / folder).rglob(pattern)):
                uri = path.relative_to(ROOT).as_posix()
                if files.get_file_from_path(uri) is None:
                    files.append(File(uri, src_dir=str(ROOT), dest_dir=config["site_dir"],
                                      use_directory_urls=config["use_directory_urls"]))
    return files


def on_page_markdown(markdown: str, page, config, files) -> str:  # noqa: ANN001
    if CLI_MARKER in markdown:
        os.environ.setdefault("COLUMNS", "100")  # argparse wraps usage lines to the terminal's width
        from probe.cli import build_parser
        from probe.cli.markdown import cli_markdown

        markdown = markdown.replace(CLI_MARKER, cli_markdown(build_parser()))
    return markdown

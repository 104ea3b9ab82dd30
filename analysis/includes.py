"""Generated files copied into Markdown pages between include markers, so that the numbers a README
quotes are the files' own:

    <!-- include: ../grid/table1-large/table1_findings.md -->
    (the file's text, written by this module)
    <!-- end include -->

The path is relative to the page. A Markdown file is copied as it is; a CSV file becomes a Markdown table
(numbers to four significant digits). ``python -m analysis.includes PAGE...`` rewrites every block from
its file; a test checks that every page with blocks is up to date, so a block edited by hand fails it.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

from probe.errors import ProbeError

BLOCK = re.compile(r"(<!-- include: (?P<path>[^ ]+) -->\n)(?P<body>.*?)(<!-- end include -->)", re.DOTALL)
ROOT = Path(__file__).resolve().parent.parent


class IncludeError(ProbeError):
    """An include block whose file does not exist."""


def included_paths(page: Path) -> list[Path]:
    """The files a page's include blocks copy, resolved against the page's folder."""
    return [(page.parent / m.group("path")).resolve() for m in BLOCK.finditer(page.read_text())]


def rendered(page: Path) -> str:
    """The page's text with every include block holding its file's current text."""
    def fill(match: re.Match) -> str:
        source = page.parent / match.group("path")
        if not source.is_file():
            raise IncludeError(f"{page}: the include block names {match.group('path')}, which does not exist")
        body = csv_markdown(source) if source.suffix == ".csv" else source.read_text()
        if not body.endswith("\n"):
            body += "\n"
        return match.group(1) + body + match.group(4)

    return BLOCK.sub(fill, page.read_text())


def csv_markdown(path: Path) -> str:
    """A CSV file as a Markdown table, numbers to four significant digits."""
    import pandas as pd

    frame = pd.read_csv(path)
    cells = [[f"{v:.4g}" if isinstance(v, float) else str(v) for v in row] for row in frame.itertuples(index=False)]
    lines = ["| " + " | ".join(map(str, frame.columns)) + " |", "|" + "---|" * len(frame.columns)]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in cells]) + "\n"


def pages_with_includes(root: Path = ROOT) -> list[Path]:
    """Every Markdown page of the project (README, docs, results) that holds an include block."""
    candidates = [root / "README.md", *sorted((root / "docs").rglob("*.md")), *sorted((root / "results").rglob("*.md"))]
    return [p for p in candidates if p.is_file() and BLOCK.search(p.read_text())]


def main(argv: list[str] | None = None) -> int:
    pages = [Path(p) for p in (argv if argv is not None else sys.argv[1:])] or pages_with_includes()
    for page in pages:
        text = rendered(page)
        if text != page.read_text():
            page.write_text(text)
            print(f"updated {page}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

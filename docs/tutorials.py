"""Execute the notebooks in quick mode into ``docs/tutorials/``, the site's tutorial pages (outputs kept).

    python docs/tutorials.py                 # every notebook (a few minutes on a CPU)
    python docs/tutorials.py 01_reproduce_table1

Each notebook runs in a fresh temporary folder (its ``runs/`` stay there) with its parameter cell set to
``QUICK = True``; the executed copy is written atomically, so a failed run leaves the old page in place.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

import nbformat
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / "notebooks"
TUTORIALS = ROOT / "docs" / "tutorials"


def quick_mode(book: nbformat.NotebookNode) -> None:
    """Set the notebook's one parameter cell (tagged ``parameters``) from ``QUICK = False`` to ``QUICK = True``."""
    cells = [c for c in book.cells if "parameters" in c.metadata.get("tags", [])]
    if len(cells) != 1 or "QUICK = False" not in cells[0].source:
        raise ValueError("a notebook needs one parameter cell holding QUICK = False")
    cells[0].source = cells[0].source.replace("QUICK = False", "QUICK = True")


def execute(path: Path, workdir: Path, timeout: int = 1200) -> nbformat.NotebookNode:
    """The notebook at ``path`` run top to bottom in quick mode, in ``workdir``."""
    book = nbformat.read(path, as_version=4)
    quick_mode(book)
    os.environ["PYTHONPATH"] = os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])
    client = NotebookClient(book, timeout=timeout, kernel_name="python3",
                            resources={"metadata": {"path": str(workdir)}})
    client.execute()
    return book


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", help="notebook names without .ipynb (default: all)")
    args = parser.parse_args(argv)
    paths = [NOTEBOOKS / f"{n}.ipynb" for n in args.names] or sorted(NOTEBOOKS.glob("*.ipynb"))
    TUTORIALS.mkdir(exist_ok=True)
    for path in paths:
        print(f"executing {path.name} ...", flush=True)
        with tempfile.TemporaryDirectory() as workdir:
            book = execute(path, Path(workdir))
        target = TUTORIALS / path.name
        partial = target.with_suffix(".ipynb.partial")
        nbformat.write(book, partial)
        partial.replace(target)
        print(f"wrote {target.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

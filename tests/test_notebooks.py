"""Every notebook runs top to bottom in quick mode (its parameter cell set to QUICK = True: a tiny model,
a handful of items), and its figures render inline."""

import os
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOKS = sorted((Path(__file__).parent.parent / "notebooks").glob("*.ipynb"))


def test_there_are_notebooks():
    assert len(NOTEBOOKS) == 4


def _set_quick(book: nbformat.NotebookNode) -> None:
    cells = [c for c in book.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(cells) == 1 and "QUICK = False" in cells[0].source, "one parameter cell, QUICK = False committed"
    cells[0].source = cells[0].source.replace("QUICK = False", "QUICK = True")


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs(path, tmp_path, monkeypatch):
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(path.parent.parent), os.environ.get("PYTHONPATH", "")]))
    book = nbformat.read(path, as_version=4)
    assert all(not cell.get("outputs") for cell in book.cells if cell.cell_type == "code"), "commit notebooks stripped"
    _set_quick(book)
    NotebookClient(book, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    outputs = [o for cell in book.cells if cell.cell_type == "code" for o in cell.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    assert not [o for o in outputs if o.output_type == "stream" and "ipywidgets" in o.text]
    for cell in (c for c in book.cells if c.cell_type == "code" and "plot_" in c.source.splitlines()[-1]):
        shown = [o for o in cell.outputs if o.output_type in ("display_data", "execute_result")]
        assert any("image/png" in o.get("data", {}) for o in shown), f"no inline figure for:\n{cell.source}"
        assert not any(o.get("data", {}).get("text/plain", "").startswith("<Figure") and "image/png" not in o.data
                       for o in shown)

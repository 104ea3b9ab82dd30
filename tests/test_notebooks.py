"""Every notebook runs top to bottom in quick mode (its parameter cell set to QUICK = True: the reference model,
a handful of items), its figures render inline, and the site's tutorial pages are the notebooks executed."""

import os
import subprocess
import sys
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


TUTORIALS = Path(__file__).parent.parent / "docs" / "tutorials"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_each_tutorial_page_is_its_notebook_executed_in_quick_mode(path):
    # the site's tutorials (docs/tutorials.py writes them): the same cells, the parameter cell in quick
    # mode, every code cell run without an error
    source = nbformat.read(path, as_version=4)
    _set_quick(source)
    page = nbformat.read(TUTORIALS / path.name, as_version=4)
    assert [(c.cell_type, c.source) for c in page.cells] == [(c.cell_type, c.source) for c in source.cells], \
        f"{path.name} changed since its tutorial was executed: run python docs/tutorials.py {path.stem}"
    code = [c for c in page.cells if c.cell_type == "code"]
    assert all(c.execution_count is not None for c in code)
    assert not [o for c in code for o in c.outputs if o.output_type == "error"]


def test_the_set_up_installs_jupyterlab():
    jupyter = Path(sys.executable).parent / "jupyter"
    result = subprocess.run([str(jupyter), "lab", "--version"], capture_output=True, text=True)
    assert result.returncode == 0 and result.stdout.strip()[0].isdigit(), result.stderr

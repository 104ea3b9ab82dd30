"""Interruptions that must not be lost: Ctrl-C swallowed by a library at several moments of a grid, and a
writer killed with SIGKILL while its checkpoint was half-written."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from probe.cli import main
from probe.core import manifest
from probe.experiments.grid import cell as grid_cell
from probe.experiments.grid import plan as grid_plan

OUT = "--out"
GRID = "model: tiny:llava\ntasks: digits,quote_completion\nlimit: 2\nnsamples: 2\nsparsities: [0.5]\n" \
       "pathways: [text]\npools: [text]\n"


class _CollectedWhileInterrupted:
    """An object whose ``__del__`` receives Ctrl-C: Python prints the KeyboardInterrupt as "Exception
    ignored" and goes on, as it does when the signal lands in a ``datasets.Dataset`` being collected."""

    swallowed: list[bool] = []

    def __del__(self) -> None:
        try:
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(2)  # the handler runs by now; its exception cannot leave __del__
        except KeyboardInterrupt:
            self.swallowed.append(True)
            raise


def _swallowed_on_call(monkeypatch, name: str, number: int) -> list[int]:
    """Wrap ``<name>`` where the grid calls it: its ``number``-th call first receives a swallowed Ctrl-C, then runs."""
    module = grid_plan if name == "capture_calibration" else grid_cell
    real = getattr(module, name)
    calls = []

    def wrapped(*args, **kwargs):
        calls.append(1)
        if len(calls) == number:
            _CollectedWhileInterrupted()  # collected at once
        return real(*args, **kwargs)

    monkeypatch.setattr(module, name, wrapped)
    return calls


# (function receiving the Ctrl-C, which call, cells finished when the grid stops, what the message says)
MOMENTS = [
    ("capture_calibration", 1, set(), "interrupted before any cell finished: no results were written"),
    ("evaluate_with_items", 1, set(), "interrupted before any cell finished: no results were written"),
    ("evaluate_with_items", 2, set(), "interrupted before any cell finished; the tasks already scored are kept"),
    ("prune_pathway", 1, {"dense"}, "the 1 finished cell(s) are kept (1 in"),
    ("append_cell_rows", 1, {"dense"}, "the 1 finished cell(s) are kept (1 in"),
]


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")  # the swallowed interrupt
@pytest.mark.parametrize(("name", "number", "finished", "message"), MOMENTS)
def test_a_swallowed_ctrl_c_still_stops_the_grid(tmp_path, capsys, monkeypatch, name, number, finished, message):
    config = tmp_path / "g.yaml"
    config.write_text(GRID)
    out = tmp_path / "grid"
    calls = _swallowed_on_call(monkeypatch, name, number)
    _CollectedWhileInterrupted.swallowed.clear()
    assert main(["grid", str(config), OUT, str(out), "--no-progress"]) == 130
    assert _CollectedWhileInterrupted.swallowed == [True]  # the interrupt was swallowed where it landed ...
    assert len(calls) == number  # ... and the grid stopped at its next step, not after running on
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith("probe: interrupted") and message in last  # ... and the grid stopped all the same
    results = out / "results.csv"
    assert (set(pd.read_csv(results).cell) if results.is_file() else set()) == finished
    monkeypatch.undo()
    assert main(["grid", str(config), OUT, str(out), "--no-progress"]) == 0  # the same command resumes
    assert set(pd.read_csv(results).cell) == {"dense", "text/text/0.5"}


def test_sigint_outside_a_grid_is_left_to_python(tmp_path):
    from probe.core.interrupts import interruptible, raise_if_interrupted

    before = signal.getsignal(signal.SIGINT)
    with interruptible():
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(2)
        with pytest.raises(KeyboardInterrupt):
            raise_if_interrupted()  # remembered until the context ends
    raise_if_interrupted()  # forgotten after it
    assert signal.getsignal(signal.SIGINT) is before


WRITER = """
import sys, time
from pathlib import Path
from probe.core.manifest import write_dir_atomic

def fill(folder):
    (folder / "model.safetensors").write_bytes(b"x" * 1000)
    print("writing", flush=True)
    time.sleep(120)

write_dir_atomic(Path(sys.argv[1]), fill)
"""


def _dead_pid() -> int:
    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    return int(done.stdout)


def test_a_checkpoint_writer_killed_mid_write_leaves_nothing_for_the_next_one(tmp_path, capsys):
    out = tmp_path / "ck"
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(out)], stdout=subprocess.PIPE, text=True,
                              cwd=Path(__file__).resolve().parent.parent)
    assert writer.stdout.readline().strip() == "writing"
    writer.send_signal(signal.SIGKILL)
    writer.wait()
    stale = [p.name for p in tmp_path.iterdir()]
    assert len(stale) == 1 and stale[0].startswith(f".ck.new-{manifest.HOST_TAG}-{writer.pid}.")

    # another writer's folder, still running (this process), is left alone
    live = tmp_path / f".ck.new-{manifest.HOST_TAG}-{os.getpid()}.abcd1234"
    live.mkdir()
    assert main(["prune", "tiny:llava", "--nsamples", "2", "--no-progress", OUT, str(out)]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == [live.name, "ck"]
    assert (out / "manifest.json").is_file()


def test_a_checkpoint_moved_aside_by_a_killed_writer_is_put_back(tmp_path):
    """Killed between moving the old checkpoint aside and moving the new one in: the old one comes back."""
    out = tmp_path / "ck"
    pid = _dead_pid()
    aside = tmp_path / f".ck.old-{manifest.HOST_TAG}-{pid}.abcd1234"
    aside.mkdir()
    (aside / "manifest.json").write_text("{}")
    unfinished = tmp_path / f".ck.new-{manifest.HOST_TAG}-{pid}.efgh5678"
    unfinished.mkdir()
    other_host = tmp_path / f".ck.new-000000-{pid}.ijkl9012"
    other_host.mkdir()
    assert sorted(manifest.remove_stale_temporaries(out)) == sorted([aside, unfinished])
    assert (out / "manifest.json").read_text() == "{}"
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["ck", other_host.name])


def _killed_when(path_exists, config: Path, out: Path) -> None:
    """Start ``probe grid`` in a process of its own and SIGKILL it once ``path_exists(out)`` holds."""
    grid = subprocess.Popen([sys.executable, "-m", "probe.cli", "grid", str(config), OUT, str(out), "--no-progress"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            cwd=Path(__file__).resolve().parent.parent)
    try:
        deadline = time.monotonic() + 300
        while not path_exists(out):
            assert grid.poll() is None, "the grid ended before the moment to kill it"
            assert time.monotonic() < deadline
            time.sleep(0.05)
    finally:
        grid.send_signal(signal.SIGKILL)
        grid.wait()


KILL_MOMENTS = {
    "after its manifest": lambda out: (out / "manifest.json").is_file(),
    "with a task of a cell scored": lambda out: any((out / "partial").glob("*/*.scores.csv")),
    "after its first cell": lambda out: (out / "results.csv").is_file(),
}


@pytest.mark.parametrize("moment", KILL_MOMENTS)
def test_a_grid_killed_outright_resumes_with_every_cell_once(tmp_path, moment):
    config = tmp_path / "g.yaml"
    config.write_text(GRID)
    out = tmp_path / "grid"
    _killed_when(KILL_MOMENTS[moment], config, out)
    assert main(["grid", str(config), OUT, str(out), "--no-progress"]) == 0  # the lock went with the process
    results = pd.read_csv(out / "results.csv")
    assert sorted(results.cell) == sorted(["dense", "dense", "text/text/0.5", "text/text/0.5"])  # two tasks each
    assert not results.duplicated(["cell", "task"]).any()
    assert not (out / "partial").exists() and not (out / "driver.json").exists()

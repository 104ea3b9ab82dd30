"""Grid cells as cluster jobs, on the real engines run locally: submitit's local executor (each cell a
subprocess) and a local Ray instance. Results equal the in-process run's; killed jobs and concurrent
writers lose nothing and duplicate nothing; failures are retried, then reported."""

import multiprocessing
import time

import pandas as pd
import pytest

from probe.cli import main
from probe.errors import ProbeError
from probe.experiments import executors
from probe.experiments.executors import ExecutorError, RayExecutor, Resources, SlurmExecutor
from probe.experiments.grid import GridConfig, GridRunError, append_cell_rows, cells, plan_grid, run_grid

BASE = dict(model="tiny:llava", tasks="digits", pathways=["text"], pools=["text", "visual"], limit=3, nsamples=3,
            sparsities=[0.5])
KEY = ["cell", "task"]


@pytest.fixture(scope="module")
def ray_instance():
    ray = pytest.importorskip("ray", reason="the dev set-up installs ray")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def local_results(tmp_path_factory):
    out = tmp_path_factory.mktemp("grid") / "local"
    return run_grid(GridConfig(out=str(out), **BASE), show_progress=False)


def _scores(frame: pd.DataFrame) -> pd.DataFrame:
    return frame.sort_values(KEY).reset_index(drop=True)[[*KEY, "score", "n"]]


def _once_per_cell(frame: pd.DataFrame, config: GridConfig) -> bool:
    counts = frame.groupby("cell").size()
    return set(counts.index) == {c.cell_id for c in cells(config)} and (counts == 1).all()  # one task: one row


def test_slurm_jobs_through_submitit_give_the_local_results(tmp_path, local_results):
    config = GridConfig(out=str(tmp_path / "grid"), **BASE)
    executor = SlurmExecutor(Resources(poll_seconds=0.2), tmp_path / "logs", cluster="local")
    results = run_grid(config, show_progress=False, executor=executor)
    assert _scores(results).equals(_scores(local_results))
    assert _once_per_cell(results, config)
    assert (tmp_path / "grid" / "calibration.pt").is_file()  # captured once, shared by the jobs
    assert (tmp_path / "grid" / "mask_iou.csv").is_file()  # the driver's part after the cells


def test_ray_tasks_give_the_local_results(tmp_path, local_results, ray_instance):
    config = GridConfig(out=str(tmp_path / "grid"), **BASE)
    results = run_grid(config, show_progress=False, executor=RayExecutor(Resources(poll_seconds=0.2)))
    assert _scores(results).equals(_scores(local_results))
    assert _once_per_cell(results, config)


def test_a_job_killed_mid_cell_is_run_again_and_every_cell_lands_once(tmp_path):
    config = GridConfig(out=str(tmp_path / "grid"), **BASE)
    executor = SlurmExecutor(Resources(poll_seconds=0.2, retries=0), tmp_path / "logs", cluster="local")
    plan = plan_grid(config)
    victim = plan.todo[1]
    job = executor.submit(plan, victim, log_samples=False)
    time.sleep(1.0)  # the job is starting (importing torch): well inside the cell
    executor.cancel(job)
    while executor.outcome(job) is None:
        time.sleep(0.2)
    assert executor.outcome(job) != ""  # it did not finish
    assert not (tmp_path / "grid" / "results.csv").exists()
    results = run_grid(config, show_progress=False, executor=executor)
    assert _once_per_cell(results, config)
    again = run_grid(config, show_progress=False, executor=executor)  # a finished grid submits nothing
    assert again.equals(results)


def _writer(path: str, worker: int) -> None:
    from pathlib import Path

    for cell in range(12):
        rows = [{"cell": f"c{cell}", "task": task, "score": worker, "n": 1} for task in ("a", "b")]
        append_cell_rows(Path(path), f"c{cell}", rows)


def test_concurrent_writers_lose_nothing_and_duplicate_nothing(tmp_path):
    """Four processes (cluster jobs, or two drivers by mistake) write the same twelve cells at once."""
    path = tmp_path / "results.csv"
    context = multiprocessing.get_context("spawn")
    workers = [context.Process(target=_writer, args=(str(path), w)) for w in range(4)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(timeout=120)
    assert all(w.exitcode == 0 for w in workers)
    frame = pd.read_csv(path)
    assert sorted(frame.cell.unique()) == sorted(f"c{i}" for i in range(12))
    assert (frame.groupby("cell").size() == 2).all()  # each cell's two rows, written once
    assert (frame.groupby("cell").score.nunique() == 1).all()  # both rows from the same writer


def test_failed_cells_are_retried_then_reported_with_their_logs(tmp_path, ray_instance):
    from probe.models.loading import load_model

    broken = tmp_path / "broken"  # a model folder whose weights only fail once a job loads them
    tiny = load_model("tiny:llava")
    tiny.model.config.save_pretrained(broken)
    tiny.processor.save_pretrained(broken)
    (broken / "pytorch_model.bin").write_bytes(b"not a torch file")
    config = GridConfig(out=str(tmp_path / "grid"), **{**BASE, "model": str(broken)})
    submitted = []

    class Counting(RayExecutor):
        def submit(self, plan, cell, log_samples):
            submitted.append(cell.cell_id)
            return super().submit(plan, cell, log_samples)

    with pytest.raises(GridRunError) as failure:
        run_grid(config, show_progress=False, executor=Counting(Resources(poll_seconds=0.2, retries=1)))
    failed = failure.value.failures
    assert sorted(f.cell_id for f in failed) == sorted(c.cell_id for c in cells(config))
    assert sorted(submitted) == sorted(2 * [c.cell_id for c in cells(config)])  # one retry each
    assert all("UnpicklingError" in f.error for f in failed)
    assert all("UnpicklingError" in open(f.log).read() for f in failed)
    assert isinstance(failure.value, ProbeError) and "running the same command again" in str(failure.value)


def test_missing_engines_and_clusters_are_one_line_errors(tmp_path, monkeypatch, capsys):
    config = tmp_path / "g.yaml"
    config.write_text("model: tiny:llava\ntasks: digits\n")
    code = main(["grid", str(config), "--executor", "slurm", "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "no slurm cluster here" in err
    config.write_text("model: tiny:llava\ntasks: digits\ncluster: {gpus: 1}\n")
    code = main(["grid", str(config), "--executor", "ray", "--out", str(tmp_path / "o")])
    assert code == 2 and "unknown cluster setting(s) gpus" in capsys.readouterr().err

    def missing(name):
        raise ImportError(name)

    monkeypatch.setattr(executors.importlib, "import_module", missing)
    with pytest.raises(ExecutorError, match=r"needs the submitit package: pip install -e \.\[slurm\]"):
        SlurmExecutor(Resources(), tmp_path / "logs", cluster="local")
    with pytest.raises(ExecutorError, match=r"pip install -e \.\[ray\]"):
        RayExecutor(Resources())


def test_ray_addresses_that_do_not_answer_fail_within_the_stated_time(monkeypatch):
    """Ray itself retries an address that does not answer for ever; the grid says so in bounded time."""
    import socket
    import sys

    with socket.socket() as probe_socket:  # a port on this machine that nothing listens on
        probe_socket.bind(("127.0.0.1", 0))
        closed = probe_socket.getsockname()[1]
    with pytest.raises(ExecutorError, match=f"cannot reach the Ray cluster at 127.0.0.1:{closed}: Connection refused"):
        executors.check_ray_address(f"127.0.0.1:{closed}")
    with pytest.raises(ExecutorError, match="is not HOST:PORT, ray://HOST:PORT or auto"):
        executors.check_ray_address("bogus-host")
    monkeypatch.setattr(executors.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ExecutorError, match=r"needs the Ray client: pip install 'ray\[client\]'"):
        executors.check_ray_address(f"ray://127.0.0.1:{closed}")
    monkeypatch.undo()

    # something answers TCP there but never completes Ray's handshake (the connection attempt is a stand-in
    # that hangs, so nothing leaves this machine)
    monkeypatch.setattr(executors, "ray_probe_command", lambda address: [sys.executable, "-c",
                                                                          "import time; time.sleep(60)"])
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        port = listener.getsockname()[1]
        started = time.monotonic()
        with pytest.raises(ExecutorError, match=f"no Ray cluster answered at 127.0.0.1:{port} within 1 s"):
            executors.check_ray_address(f"127.0.0.1:{port}", seconds=1)
        assert time.monotonic() - started < 10

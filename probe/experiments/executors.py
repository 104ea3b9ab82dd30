"""Grid cells as jobs on a cluster: SLURM through submitit, or Ray tasks.

Each cell runs as its own job (:func:`run_cell_job`): it loads the model, takes the calibration set that
the grid's first job captured into the output folder (``calibration.pt``, written once under a file
lock), prunes, evaluates, and writes its record and its rows itself, the rows under a file lock that
also refuses a cell already there. The driver (:class:`ClusterExecutor`) only submits, watches and
retries: killed and started again, it resumes, and no finished cell runs twice.

Both engines are optional dependencies: ``pip install -e .[slurm]`` (submitit) or ``.[ray]``.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import socket
import subprocess
import sys
import time
import traceback
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from probe.core.interrupts import raise_if_interrupted
from probe.errors import ProbeError
from probe.experiments.grid import (
    Cell,
    CellFailure,
    GridConfig,
    GridPlan,
    calibration_selections,
    cell_path,
    finished_cells,
    heldout_conversations,
    open_context,
    run_cell,
)


class ExecutorError(ProbeError):
    """An executor that cannot run here: its package is missing, or no such cluster is reachable."""


def require(module: str, extra: str) -> Any:
    """Import ``module`` or raise an :class:`ExecutorError` naming the extra that installs it."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise ExecutorError(f"the {extra} executor needs the {module} package: pip install -e .[{extra}]") from None


@dataclass
class Resources:
    """What each cell's job asks for, and how the driver treats jobs."""

    gpus_per_cell: int = 0
    cpus_per_cell: int = 1
    mem_gb: int | None = None
    time_min: int = 120
    partition: str | None = None
    max_parallel: int = 0  # cells in flight at once; 0: all
    retries: int = 1  # a failed cell is tried again this many times before it is reported
    slurm_options: dict[str, str] = field(default_factory=dict)  # passed to sbatch as --KEY=VALUE
    poll_seconds: float = 2.0

    def __post_init__(self) -> None:
        for name, least in (("gpus_per_cell", 0), ("cpus_per_cell", 1), ("mem_gb", 1), ("time_min", 1),
                            ("max_parallel", 0), ("retries", 0)):
            value = getattr(self, name)
            if value is None and name == "mem_gb":
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value < least:
                raise ExecutorError(f"{name} should be a whole number of at least {least}, got {value!r}")
        if self.partition is not None and not isinstance(self.partition, str):
            raise ExecutorError(f"partition should be a name, got {self.partition!r}")
        if not isinstance(self.slurm_options, dict):
            raise ExecutorError(f"slurm_options should be a mapping of sbatch options, got {self.slurm_options!r}")
        if isinstance(self.poll_seconds, bool) or not isinstance(self.poll_seconds, (int, float)) \
                or not self.poll_seconds > 0:
            raise ExecutorError(f"poll_seconds should be a number above 0, got {self.poll_seconds!r}")

    @classmethod
    def from_mapping(cls, mapping: dict[str, Any]) -> Resources:
        """Resources from a grid config's ``cluster:`` mapping; unknown names are an :class:`ExecutorError`."""
        unknown = sorted(set(mapping) - set(cls.__dataclass_fields__))
        if unknown:
            raise ExecutorError(f"unknown cluster setting(s) {', '.join(unknown)}; "
                                f"known: {', '.join(cls.__dataclass_fields__)}")
        return cls(**mapping)


def run_cell_job(config: GridConfig, tasks: list[str], cell: Cell, log_samples: bool) -> str:
    """One cell as a job of its own (what SLURM and Ray run); returns the cell id."""
    if cell.cell_id in finished_cells(Path(config.out), config.metrics):  # a previous driver's job finished it
        return cell.cell_id
    selections = calibration_selections(config)
    plan = GridPlan(config, tasks, selections, [cell], heldout_conversations(config, selections))
    run_cell(open_context(plan, show_progress=False, shared_calibration=True), cell, show_progress=False,
             log_samples=log_samples)
    return cell.cell_id


class ClusterExecutor:
    """Submits cells as jobs, at most ``max_parallel`` at a time, retries failed ones, reports the rest."""

    def __init__(self, resources: Resources) -> None:
        self.resources = resources

    # --- what an engine provides ---------------------------------------------------------------
    def submit(self, plan: GridPlan, cell: Cell, log_samples: bool) -> Any:
        raise NotImplementedError

    def outcome(self, handle: Any) -> str | None:
        """None while the job runs; ``""`` when it succeeded; else why it failed (one line)."""
        raise NotImplementedError

    def log_path(self, handle: Any) -> str:
        raise NotImplementedError

    def cancel(self, handle: Any) -> None:
        raise NotImplementedError

    # --- the driver ----------------------------------------------------------------------------
    def run(self, plan: GridPlan, todo: list[Cell], show_progress: bool, log_samples: bool) -> list[CellFailure]:
        waiting, running, failures = list(todo), {}, []
        tries: dict[str, int] = {}
        done = 0
        last = None
        with self._cancel_on_interrupt(running):
            while waiting or running:
                limit = self.resources.max_parallel or len(todo)
                while waiting and len(running) < limit:
                    cell = waiting.pop(0)
                    tries[cell.cell_id] = tries.get(cell.cell_id, 0) + 1
                    running[cell.cell_id] = (cell, self.submit(plan, cell, log_samples))
                for cell_id, (cell, handle) in list(running.items()):
                    outcome = self.outcome(handle)
                    if outcome is None:
                        continue
                    del running[cell_id]
                    if outcome == "":
                        done += 1
                    elif tries[cell_id] <= self.resources.retries:
                        waiting.append(cell)
                        _say(show_progress, f"cell {cell_id} failed ({outcome}); trying again")
                    else:
                        failures.append(CellFailure(cell_id, outcome, self.log_path(handle)))
                        _say(show_progress, f"cell {cell_id} failed: {outcome} (log: {self.log_path(handle)})")
                status = (done, len(running), len(failures), len(waiting))
                if status != last:
                    _say(show_progress, "cells: {} done, {} running, {} failed, {} waiting".format(*status))
                    last = status
                if running:
                    time.sleep(self.resources.poll_seconds)
                raise_if_interrupted()
        return failures

    @contextlib.contextmanager
    def _cancel_on_interrupt(self, running: dict) -> Iterator[None]:
        """Ctrl-C on the driver cancels the jobs it started (finished cells stay); a rerun resumes."""
        try:
            yield
        except KeyboardInterrupt:
            for _, handle in running.values():
                self.cancel(handle)
            raise


def _say(enabled: bool, line: str) -> None:
    if enabled:
        print(line, flush=True)


class SlurmExecutor(ClusterExecutor):
    """One SLURM job per cell through submitit. ``cluster="local"`` runs the jobs as local subprocesses
    (submitit's local executor), which is how the tests run it."""

    def __init__(self, resources: Resources, folder: Path, cluster: str = "slurm") -> None:
        super().__init__(resources)
        submitit = require("submitit", "slurm")
        try:
            self.executor = submitit.AutoExecutor(folder=folder, cluster=cluster)
        except (RuntimeError, ValueError) as exc:
            raise ExecutorError(f"no {cluster} cluster here ({exc}); is sbatch on the PATH?") from None
        parameters: dict[str, Any] = {
            "name": "probe-grid", "timeout_min": resources.time_min, "cpus_per_task": resources.cpus_per_cell,
            "gpus_per_node": resources.gpus_per_cell, "slurm_additional_parameters": dict(resources.slurm_options)}
        if resources.mem_gb:
            parameters["mem_gb"] = resources.mem_gb
        if resources.partition:
            parameters["slurm_partition"] = resources.partition
        self.executor.update_parameters(**parameters)

    def submit(self, plan: GridPlan, cell: Cell, log_samples: bool) -> Any:
        return self.executor.submit(run_cell_job, plan.config, plan.tasks, cell, log_samples)

    def outcome(self, handle: Any) -> str | None:
        if not handle.done():
            return None
        error = handle.exception()
        return "" if error is None else _first_line(error)

    def log_path(self, handle: Any) -> str:
        return str(handle.paths.stderr)

    def cancel(self, handle: Any) -> None:
        handle.cancel(check=False)


class RayExecutor(ClusterExecutor):
    """One Ray task per cell, with the resources of :class:`Resources`, on the cluster at ``address``
    (or a local Ray instance when none is given and none is running). Each task's output goes to
    ``logs/<cell>.log`` in the grid's folder."""

    def __init__(self, resources: Resources, address: str | None = None) -> None:
        super().__init__(resources)
        self.ray = require("ray", "ray")
        if not self.ray.is_initialized():
            if address not in (None, "auto", "local"):
                check_ray_address(address)
            try:
                self.ray.init(address=address, include_dashboard=False, log_to_driver=False)
            except (ConnectionError, ValueError) as exc:  # ValueError: ray:// without the Ray client installed
                raise ExecutorError(f"cannot reach the Ray cluster at {address}: {_first_line(exc)}") from None
        self.task = self.ray.remote(num_cpus=resources.cpus_per_cell, num_gpus=resources.gpus_per_cell,
                                    max_retries=0)(_logged_cell_job)
        self._logs: dict[Any, str] = {}

    def submit(self, plan: GridPlan, cell: Cell, log_samples: bool) -> Any:
        log = str(cell_path(plan.out, cell.cell_id, "logs", ".log").resolve())
        handle = self.task.remote(plan.config, plan.tasks, cell, log_samples, log)
        self._logs[handle] = log
        return handle

    def outcome(self, handle: Any) -> str | None:
        ready, _ = self.ray.wait([handle], timeout=0)
        if not ready:
            return None
        try:
            self.ray.get(handle)
        except Exception as exc:  # Ray wraps the task's error (or its cancellation) in its own types
            return _first_line(exc)
        return ""

    def log_path(self, handle: Any) -> str:
        return self._logs.get(handle, "")

    def cancel(self, handle: Any) -> None:
        self.ray.cancel(handle, force=True)


RAY_CONNECT_SECONDS = 60.0  # how long a Ray address may take to answer before the grid gives up


def ray_probe_command(address: str) -> list[str]:
    """A command that connects to the Ray cluster at ``address`` and leaves; exit status 0 when it could."""
    return [sys.executable, "-c", "import sys, ray; ray.init(address=sys.argv[1], include_dashboard=False, "
            "log_to_driver=False); ray.shutdown()", address]


def check_ray_address(address: str, seconds: float | None = None) -> None:
    """Raise :class:`ExecutorError` unless a Ray cluster answers at ``address`` (``HOST:PORT`` or
    ``ray://HOST:PORT``) within ``seconds`` (default :data:`RAY_CONNECT_SECONDS`): Ray itself retries an
    address that does not answer for ever. A closed port fails at once; anything else is tried in a
    child process, which is stopped when the time is up."""
    seconds = RAY_CONNECT_SECONDS if seconds is None else seconds
    if address.startswith("ray://") and importlib.util.find_spec("grpc") is None:
        raise ExecutorError(f"the address {address} needs the Ray client: pip install 'ray[client]'")
    host, sep, port = address.removeprefix("ray://").rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ExecutorError(f"--ray-address {address!r} is not HOST:PORT, ray://HOST:PORT or auto")
    try:
        socket.create_connection((host, int(port)), timeout=seconds).close()
    except OSError as exc:
        raise ExecutorError(f"cannot reach the Ray cluster at {address}: {exc.strerror or exc}") from None
    try:
        done = subprocess.run(ray_probe_command(address), capture_output=True, text=True, timeout=seconds)
    except subprocess.TimeoutExpired:
        raise ExecutorError(f"no Ray cluster answered at {address} within {seconds:g} s") from None
    if done.returncode != 0:
        lines = [line for line in done.stderr.splitlines() if line.strip()]
        raise ExecutorError(f"cannot reach the Ray cluster at {address}: {lines[-1] if lines else 'it refused'}")


def _logged_cell_job(config: GridConfig, tasks: list[str], cell: Cell, log_samples: bool, log: str) -> str:
    Path(log).parent.mkdir(parents=True, exist_ok=True)
    with open(log, "a", encoding="utf-8") as fh, contextlib.redirect_stdout(fh), contextlib.redirect_stderr(fh):
        try:
            return run_cell_job(config, tasks, cell, log_samples)
        except BaseException:
            traceback.print_exc()  # into the cell's log; Ray hands the error itself back to the driver
            raise


def _first_line(error: BaseException) -> str:
    lines = [line for line in str(error).strip().splitlines() if line.strip()]
    return f"{type(error).__name__}: {lines[-1] if lines else ''}".strip()


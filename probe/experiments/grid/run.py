"""Run a grid: the cells in waves, in this process or through an executor, failures reported at the end."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import pandas as pd

from probe.core.interrupts import raise_if_interrupted
from probe.errors import ProbeError
from probe.experiments.grid.cell import run_cell
from probe.experiments.grid.config import Cell, GridConfig, cells, needs_earlier_cell
from probe.experiments.grid.plan import GridContext, GridPlan, open_context, plan_grid, select_cells
from probe.experiments.grid.status import CellClock, banner
from probe.experiments.grid.store import driver_lock, finished_cells, read_csv_or_empty, write_iou

log = logging.getLogger("probe.experiments.grid")


def finish_grid(config: GridConfig) -> pd.DataFrame:
    """After the cells: the mask IoU of a table1 grid; returns the results frame."""
    out = Path(config.out)
    if config.grid == "table1":
        write_iou(config, out)
    return read_csv_or_empty(out / "results.csv")


def run_grid(config: GridConfig, show_progress: bool = True, log_samples: bool = False,
             executor: CellExecutor | None = None, only: Sequence[str] | None = None) -> pd.DataFrame:
    """Run (or resume) the grid; returns the results frame (one row per finished cell and task). With
    ``log_samples``, what the model answered for every item goes to ``samples/<cell>.jsonl``; with
    ``only`` (cell ids such as ``wanda/50%``), just those cells run now, in that order, and a later run
    without it does the rest.

    ``executor`` runs the cells (default: one after another in this process, sharing one loaded model
    and calibration capture); :mod:`probe.experiments.executors` runs them as SLURM jobs or Ray tasks. Cells that
    depend on another (fixed-budget ATV cells) run after the others. A failed cell is reported in
    :class:`GridRunError` after every other cell had its turn.
    """
    plan = plan_grid(config, only)
    done = finished_cells(plan.out, config.metrics)
    planned = [c.cell_id for c in (select_cells(cells(config), only, done) if only else cells(config))]
    log.info(banner(config.grid, config.model, config.out, planned, done, [c.cell_id for c in plan.todo]))
    with driver_lock(plan.out):
        if plan.todo:
            executor = executor or InProcessExecutor()
            failures = []
            later = [c for c in plan.todo if needs_earlier_cell(c)]
            for wave in ([c for c in plan.todo if c not in later], later):
                if wave:
                    failures += executor.run(plan, wave, show_progress=show_progress, log_samples=log_samples)
            if failures:
                raise GridRunError(failures)
        return finish_grid(config)


class CellExecutor(Protocol):
    """Runs some cells of a planned grid; returns the cells that failed (after any retries)."""

    def run(self, plan: GridPlan, todo: list[Cell], show_progress: bool, log_samples: bool) -> list[CellFailure]:
        ...


@dataclass(frozen=True)
class CellFailure:
    """A cell that failed on every try: why, and where its log is."""

    cell_id: str
    error: str
    log: str = ""


class GridRunError(ProbeError):
    """Cells of a grid that failed on every try; the others finished and a rerun retries these."""

    def __init__(self, failures: list[CellFailure]) -> None:
        self.failures = failures
        named = "; ".join(f"{f.cell_id}: {f.error}" + (f" (log: {f.log})" if f.log else "") for f in failures)
        super().__init__(f"{len(failures)} cell(s) failed: {named}; the other cells finished, and running the "
                         "same command again retries the failed ones")


class InProcessExecutor:
    """Cells one after another in this process, sharing one loaded model, calibration and vision cache.
    An error stops the grid at once (finished cells are kept)."""

    def __init__(self) -> None:
        self._context: tuple[GridPlan, GridContext] | None = None

    def run(self, plan: GridPlan, todo: list[Cell], show_progress: bool, log_samples: bool) -> list[CellFailure]:
        if self._context is None or self._context[0] is not plan:  # the model is loaded once per grid
            self._context = (plan, open_context(plan, show_progress=show_progress))
        ctx = self._context[1]
        clock = CellClock([c.cell_id for c in todo])
        clock.start()
        for cell in todo:
            raise_if_interrupted()
            run_cell(ctx, cell, show_progress=show_progress, log_samples=log_samples)
            log.info(clock.finished(cell.cell_id))
        return []



"""Experiment grids, every cell evaluated, resumable, nothing lost.

- ``table1`` (the sensitivity grid): the dense model, then pathway x pool x sparsity, each cell
  pruning one MoT pathway with Wanda statistics from its pool while the other pathway stays dense.
  Masks of the ``text``- and ``visual``-pool cells of a pathway are kept (packed) so the IoU between
  them is recorded per linear (the paper's Fig. 1b).
- ``table2`` (the method comparison): the dense model, then method x setting (a sparsity such as
  ``0.5`` or an N:M pattern such as ``2:4``) on the whole model.

Each finished cell appends its rows (one per task) to ``results.csv`` through an atomic rewrite and
writes its pruning record to ``cells/``, so a killed run loses at most the cell in progress and a
rerun skips finished cells.

The package's parts, in the order a run goes through them: :mod:`~probe.experiments.grid.config` (settings
and cells), :mod:`~probe.experiments.grid.plan` (checks and the shared context), :mod:`~probe.experiments.grid.cell`
(one cell), :mod:`~probe.experiments.grid.run` (the loop), :mod:`~probe.experiments.grid.store` (the folder's
files) and :mod:`~probe.experiments.grid.status` (what the run prints).
"""

from probe.experiments.grid.cell import run_cell, setting_columns
from probe.experiments.grid.config import (
    QUICK,
    Cell,
    GridConfig,
    GridConfigError,
    cells,
    needs_earlier_cell,
    parse_setting,
    setting_label,
)
from probe.experiments.grid.plan import (
    GridCheck,
    GridContext,
    GridPlan,
    calibration_selections,
    check_grid,
    heldout_conversations,
    open_context,
    plan_grid,
    select_cells,
)
from probe.experiments.grid.run import CellFailure, GridRunError, InProcessExecutor, finish_grid, run_grid
from probe.experiments.grid.store import append_cell_rows, cell_path, driver_lock, finished_cells

__all__ = [
    "QUICK", "Cell", "CellFailure", "GridCheck", "GridConfig", "GridConfigError", "GridContext", "GridPlan",
    "GridRunError", "InProcessExecutor", "append_cell_rows", "calibration_selections", "cell_path", "cells",
    "check_grid", "driver_lock", "finish_grid", "finished_cells", "heldout_conversations", "needs_earlier_cell",
    "open_context", "parse_setting", "plan_grid", "run_cell", "run_grid", "select_cells", "setting_columns",
    "setting_label",
]

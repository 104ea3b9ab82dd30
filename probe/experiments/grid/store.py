"""The grid's output folder: result tables written atomically under file locks, cell records, packed
masks, the mask IoU, and the lock that lets one driver run a folder at a time."""

from __future__ import annotations

import contextlib
import io
import itertools
import json
import os
import re
import socket
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from filelock import FileLock, Timeout

from probe.core.manifest import (
    write_json_atomic,
    write_text_atomic,
)
from probe.core.record import kept_visual_total
from probe.experiments.grid.config import IOU_POOLS, PROXY_FILE, Cell, GridConfig, GridConfigError, needs_earlier_cell
from probe.pruning.sparsity.masks import mask_iou


def read_csv_or_empty(path: Path) -> pd.DataFrame:
    return pd.read_csv(path) if path.is_file() else pd.DataFrame()


def save_masks(path: Path, masks: dict[str, torch.Tensor]) -> None:
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **{k: np.packbits(v.numpy()) for k, v in masks.items()},
                        **{f"{k}.shape": np.array(v.shape) for k, v in masks.items()})
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.npz")
    tmp.write_bytes(buffer.getvalue())
    tmp.replace(path)


def load_masks(path: Path) -> dict[str, torch.Tensor]:
    data = np.load(path)
    names = [k for k in data.files if not k.endswith(".shape")]
    out = {}
    for name in names:
        shape = tuple(data[f"{name}.shape"])
        out[name] = torch.from_numpy(np.unpackbits(data[name])[: int(np.prod(shape))].reshape(shape).astype(bool))
    return out


def cell_path(out: Path, cell_id: str, folder: str = "cells", suffix: str = ".json") -> Path:
    """Where a cell's pruning record (or another per-cell file) goes: a file name made of letters,
    digits, - and _."""
    return out / folder / (re.sub(r"[^A-Za-z0-9_-]+", "_", cell_id.replace(":", "-")).strip("_") + suffix)


def adaptive_total(out: Path, cell: Cell) -> int:
    """For an ATV cell with ``budget=fixed``: the visual tokens the plain ``atv`` cell of the same setting
    kept (that cell runs first, see :func:`needs_earlier_cell`)."""
    if not needs_earlier_cell(cell):
        return 1
    path = cell_path(out, f"atv/{cell.setting}")
    if not path.is_file():
        raise GridConfigError(f"{cell.cell_id} keeps as many visual tokens as the 'atv' cell of its setting, "
                              f"which has no record in {out / 'cells'}")
    return kept_visual_total(path)


def finished_cells(out: Path, metrics: Sequence[str] = ("tasks",)) -> set[str]:
    """The cells scored by every one of ``metrics``: with rows in ``out/results.csv`` (tasks) and in
    ``out/proxy.csv`` (kl)."""
    files = {"tasks": "results.csv", "kl": PROXY_FILE}
    found = [set(read_csv_or_empty(out / files[m]).get("cell", pd.Series(dtype=str))) for m in metrics]
    return set.intersection(*found) if found else set()


def append_cell_rows(path: Path, cell_id: str, rows: list[dict]) -> bool:
    """Add one cell's rows to the results CSV, atomically and under a file lock, unless the file already
    holds that cell: concurrent writers (cluster jobs, two drivers) lose nothing and duplicate nothing.
    Returns whether the rows were added."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(path) + ".lock"):
        frame = read_csv_or_empty(path)
        if "cell" in frame and cell_id in set(frame.cell):
            return False
        write_text_atomic(path, pd.concat([frame, pd.DataFrame(rows)], ignore_index=True).to_csv(index=False))
        return True


DRIVER_FILE = "driver.json"  # who drives the grid in a folder now: host, pid, start time


@contextlib.contextmanager
def driver_lock(out: Path) -> Iterator[None]:
    """Hold the grid folder ``out`` for this process: a second driver on the same folder is refused with
    one line naming the holder (``driver.json``). The lock is the operating system's, so a killed driver
    leaves none behind."""
    lock = FileLock(str(out / ".driver.lock"), timeout=0)
    try:
        lock.acquire()
    except Timeout:
        holder = out / DRIVER_FILE
        try:
            who = json.loads(holder.read_text())
            named = f"process {who['pid']} on {who['host']}, started {who['started']}"
        except (OSError, ValueError, KeyError, TypeError):
            named = "another process"
        raise GridConfigError(f"{out} is in use by another probe grid ({named}); wait for it to end, or run "
                              "into another folder") from None
    try:
        write_json_atomic(out / DRIVER_FILE, {"host": socket.gethostname(), "pid": os.getpid(),
                                              "started": time.strftime("%Y-%m-%d %H:%M:%S %Z")})
        yield
    finally:
        (out / DRIVER_FILE).unlink(missing_ok=True)
        lock.release()


def write_iou(config: GridConfig, out: Path) -> None:
    """IoU per linear between the text-pool and visual-pool masks of the same pathway and sparsity."""
    rows = []
    for pathway, sparsity in itertools.product(config.pathways, config.sparsities):
        paths = [out / "masks" / f"{pathway}-{pool}-{sparsity:g}.npz" for pool in IOU_POOLS]
        if not all(p.is_file() for p in paths):
            continue
        text, visual = (load_masks(p) for p in paths)
        for name in text:
            rows.append({"pathway": pathway, "sparsity": sparsity, "linear": name,
                         "iou": mask_iou(text[name], visual[name])})
    if rows:
        write_text_atomic(out / "mask_iou.csv", pd.DataFrame(rows).to_csv(index=False))

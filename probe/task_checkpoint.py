"""Per-task checkpoints of a grid cell's evaluation, so that a cell stopped part-way loses at most the
task in progress.

A rerun prunes the cell again (pruning is deterministic given its calibration and seed), checks that
the pruned weights match the ones the finished tasks were scored on (:func:`weights_fingerprint`),
and scores only the tasks that have no checkpoint. Checkpoints whose fingerprint differs are dropped
and their tasks scored again.
"""

from __future__ import annotations

import hashlib
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch

from probe.manifest import write_text_atomic

log = logging.getLogger(__name__)


def weights_fingerprint(model: torch.nn.Module) -> str:
    """A short hash of every parameter's name, shape, zero count and sum (accumulated in float64): equal
    for a model pruned again the same way, different after a change to its masks or weights (a change
    that leaves every sum and zero count as it was goes unseen)."""
    digest = hashlib.sha256()
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            values = parameter.detach()
            stats = (int((values == 0).sum()), float(values.sum(dtype=torch.float64)))
            digest.update(f"{name}:{tuple(values.shape)}:{stats!r};".encode())
    return digest.hexdigest()[:16]


@dataclass(frozen=True)
class TaskCheckpoint:
    """The finished tasks of one cell: ``<folder>/<task>.scores.csv``, ``.items.csv`` and, with logged
    samples, ``.samples.jsonl`` (and ``.tokens.jsonl``), plus ``fingerprint`` naming the weights."""

    folder: Path
    fingerprint: str

    def open(self) -> TaskCheckpoint:
        """Keep the folder's checkpoints if they were scored on these weights, else start it empty."""
        stamp = self.folder / "fingerprint"
        if stamp.is_file() and stamp.read_text().strip() != self.fingerprint:
            log.warning("%s: the pruned weights differ from those its finished tasks were scored on; "
                        "scoring every task again", self.folder)
            shutil.rmtree(self.folder)
        if not stamp.is_file():
            write_text_atomic(stamp, self.fingerprint + "\n")
        return self

    def _path(self, task: str, kind: str) -> Path:
        return self.folder / f"{task}.{kind}"

    def samples_path(self, task: str) -> Path:
        """Where the task's logged answers go (``<task>.samples.jsonl``)."""
        return self._path(task, "samples.jsonl")

    def finished(self) -> list[str]:
        """The tasks with a checkpoint."""
        return sorted(p.name.removesuffix(".scores.csv") for p in self.folder.glob("*.scores.csv"))

    def load(self, task: str) -> tuple[pd.DataFrame, pd.DataFrame] | None:
        """The task's (scores, items), or None if it has no checkpoint."""
        scores, items = self._path(task, "scores.csv"), self._path(task, "items.csv")
        if not (scores.is_file() and items.is_file()):
            return None
        return pd.read_csv(scores), pd.read_csv(items)

    def save(self, task: str, scores: pd.DataFrame, items: pd.DataFrame) -> None:
        """Write the task's items, then its scores (whose presence marks the task finished)."""
        write_text_atomic(self._path(task, "items.csv"), items.to_csv(index=False))
        write_text_atomic(self._path(task, "scores.csv"), scores.to_csv(index=False))

    def joined_lines(self, tasks: list[str], suffix: str) -> str:
        """The tasks' ``<task>.<suffix>`` files (logged samples or token records), one after another."""
        return "".join(p.read_text() for t in tasks if (p := self._path(t, suffix)).is_file())

    def clear(self) -> None:
        """Remove the checkpoints once the cell's results are written."""
        shutil.rmtree(self.folder, ignore_errors=True)
        if self.folder.parent.is_dir() and not any(self.folder.parent.iterdir()):
            self.folder.parent.rmdir()

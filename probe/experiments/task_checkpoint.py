"""Per-task checkpoints of a grid cell's evaluation, so that a cell stopped part-way loses at most the
task in progress.

A rerun prunes the cell again (pruning is deterministic given its calibration and seed), checks that
the pruned weights match the ones the finished tasks were scored on, and scores only the tasks that
have no checkpoint. Weights match when their fingerprints (:func:`weights_fingerprint`) are equal, or
when every parameter has the same name, shape and zero count and a sum within :data:`NOISE` (relative)
of the recorded one: the floating-point noise of another thread count or summation order. Weights that
differ beyond that are refused (:class:`WeightsChangedError`) rather than scored beside the others.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch

from probe.core.manifest import write_text_atomic
from probe.errors import ProbeError

log = logging.getLogger(__name__)
NOISE = 1e-6  # the largest relative change of a parameter's sum still taken for floating-point noise
COMPARED = f"parameter names, shapes and zero counts equal, sums within {NOISE:g} relative"


class WeightsChangedError(ProbeError):
    """A cell pruned again into weights other than those its finished tasks were scored on."""


ParameterStats = dict[str, tuple[tuple[int, ...], int, float]]


def parameter_stats(model: torch.nn.Module) -> ParameterStats:
    """Every parameter's shape, zero count and sum (accumulated in float64), by name."""
    stats: ParameterStats = {}
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            values = parameter.detach()
            stats[name] = (tuple(values.shape), int((values == 0).sum()), float(values.sum(dtype=torch.float64)))
    return stats


def weights_fingerprint(model: torch.nn.Module | ParameterStats) -> str:
    """A short hash of every parameter's name, shape, zero count and sum: equal for a model pruned again
    the same way, different after a change to its masks or weights (a change that leaves every sum and
    zero count as it was goes unseen). Takes the model or its :func:`parameter_stats`."""
    stats = model if isinstance(model, dict) else parameter_stats(model)
    digest = hashlib.sha256()
    for name, (shape, zeros, total) in stats.items():
        digest.update(f"{name}:{shape}:{(zeros, total)!r};".encode())
    return digest.hexdigest()[:16]


def largest_sum_change(before: ParameterStats, after: ParameterStats) -> float | None:
    """The largest relative change of a parameter's sum between two models whose parameters have the same
    names, shapes and zero counts (0.0 if none changed); None where those differ."""
    if before.keys() != after.keys():
        return None
    largest = 0.0
    for name, (shape, zeros, total) in before.items():
        other_shape, other_zeros, other_total = after[name]
        if tuple(shape) != tuple(other_shape) or zeros != other_zeros:
            return None
        if other_total != total:
            largest = max(largest, abs(other_total - total) / max(abs(total), abs(other_total), 1e-30))
    return largest


def describe_weight_change(before: ParameterStats, after: ParameterStats) -> str:
    """How two models' parameter statistics differ, in one line: how many parameters changed their zero
    count (pruning masks of another size) and how many only their sum (other masks of the same size, or
    other kept values), with the largest relative change of a sum. Differences in the last bits alone
    usually mean floating-point noise in the calibration statistics, e.g. from another CPU."""
    if before.keys() != after.keys() or any(before[n][0] != after[n][0] for n in before):
        return "the parameters' names or shapes differ"
    zeros = [n for n in before if before[n][1] != after[n][1]]
    sums = [n for n in before if before[n][1] == after[n][1] and before[n][2] != after[n][2]]
    parts = [f"{len(zeros)} of {len(before)} parameters have another zero count "
             f"({sum(before[n][1] for n in before):,} zeros before, {sum(after[n][1] for n in after):,} now)"]
    if sums:
        largest = max(abs(after[n][2] - before[n][2]) / max(abs(before[n][2]), 1e-30) for n in sums)
        parts.append(f"{len(sums)} more have the same zero count and another sum "
                     f"(largest relative change {largest:.1e})")
    return "; ".join(parts)


@dataclass
class TaskCheckpoint:
    """The finished tasks of one cell: ``<folder>/<task>.scores.csv``, ``.items.csv`` and, with logged
    samples, ``.samples.jsonl`` (and ``.tokens.jsonl``), plus ``fingerprint`` naming the weights and
    ``parameters.json`` with the statistics it hashes (to say how other weights differ). After
    :meth:`open`, ``resumed`` says which finished tasks were kept and how the weights were compared."""

    folder: Path
    parameters: ParameterStats
    resumed: dict | None = None

    @property
    def fingerprint(self) -> str:
        """The hash of :attr:`parameters` (:func:`weights_fingerprint`)."""
        return weights_fingerprint(self.parameters)

    def open(self) -> TaskCheckpoint:
        """Keep the folder's checkpoints if they were scored on these weights (up to floating-point noise);
        a folder of other weights with finished tasks is a :class:`WeightsChangedError`."""
        stamp, record = self.folder / "fingerprint", self.folder / "parameters.json"
        if stamp.is_file() and stamp.read_text().strip() != self.fingerprint:
            earlier = None
            if record.is_file():
                earlier = {name: (tuple(shape), zeros, total)
                           for name, (shape, zeros, total) in json.loads(record.read_text()).items()}
            change = largest_sum_change(earlier, self.parameters) if earlier is not None else None
            if not self.finished():
                shutil.rmtree(self.folder)  # nothing scored on the other weights: nothing to keep
            elif change is None or change > NOISE:
                why = describe_weight_change(earlier, self.parameters) if earlier is not None else "no record"
                raise WeightsChangedError(
                    f"{self.folder.name}: pruned again, the weights differ from those its finished tasks "
                    f"({', '.join(self.finished())}) were scored on ({why}); the settings, calibration samples "
                    f"and versions are the same, so this machine computes other masks: remove {self.folder} to "
                    "score the cell's tasks again here")
            else:
                log.info("%s: the pruned weights equal those its finished tasks were scored on up to "
                         "floating-point noise (largest relative change of a sum %.1e)", self.folder, change)
                self.resumed = {"tasks": self.finished(), "compared": COMPARED, "largest_relative_change": change}
                return self
        if stamp.is_file() and self.finished():
            self.resumed = {"tasks": self.finished(), "compared": "weights fingerprint equal",
                            "largest_relative_change": 0.0}
        if not stamp.is_file():
            write_text_atomic(record, json.dumps({name: [list(shape), zeros, total] for name, (shape, zeros, total)
                                                  in self.parameters.items()}, indent=0) + "\n")
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

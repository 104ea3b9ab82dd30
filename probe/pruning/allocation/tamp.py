"""TAMP's layer-wise sparsity (its ``--sparsity_ratio_granularity layer --score_method density_sum``).

In a dense pre-pass, every linear's outputs are compared across modalities per sample (cosine
similarities of the L2-normalised output rows, :func:`probe.pruning.sparsity.amia.modality_similarities`): the
linear's score is ``|3 - (vv + tt + vt)|`` with each similarity averaged over the samples, so linears
whose outputs are less redundant keep more weights. The run's kept weights are then shared out in
proportion to the scores, each linear keeping at least ``1 - max_sparsity`` of its weights, where
``max_sparsity = target + max_extra`` (TAMP's scripts use 0.1): every round gives each linear that still
has room ``ceil(score / sum(scores) * rest)`` more, until the total is reached. The upstream code can
overshoot the total by the rounding of the last round, and its correction adds instead of removing;
here the excess is taken back from the linears that keep the most.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from probe.calibration.capture import CapturedSample
from probe.core.record import linear_key
from probe.pruning.allocation.base import Allocation, AllocationError
from probe.pruning.sparsity.amia import modality_similarities


def proportional_keep(scores: list[float], sizes: list[int], total_keep: int, max_sparsity: float) -> list[int]:
    """Weights each group keeps: at least ``ceil(size * (1 - max_sparsity))``, the rest by score (see the
    module docstring); the counts sum to ``total_keep`` and none exceeds its size."""
    n = len(sizes)
    keep = [math.ceil(size * (1 - max_sparsity)) for size in sizes]
    weight = [max(float(s), 0.0) for s in scores]
    if sum(weight) <= 0:
        weight = [1.0] * n
    while sum(keep) < total_keep:
        rest = total_keep - sum(keep)
        total = sum(weight)
        add = [math.ceil(w / total * rest) if total > 0 else 0 for w in weight]
        keep = [k + a for k, a in zip(keep, add)]
        weight = [0.0 if k >= size else w for k, size, w in zip(keep, sizes, weight)]
        keep = [min(k, size) for k, size in zip(keep, sizes)]
        if sum(add) == 0:  # no score left: fill the groups with room, in order
            for i in range(n):
                extra = min(total_keep - sum(keep), sizes[i] - keep[i])
                keep[i] += max(extra, 0)
    excess = sum(keep) - total_keep
    floor = [math.ceil(size * (1 - max_sparsity)) for size in sizes]
    for i in sorted(range(n), key=lambda j: -keep[j]):
        if excess <= 0:
            break
        take = min(excess, keep[i] - floor[i])
        keep[i] -= take
        excess -= take
    return keep


@dataclass(frozen=True)
class TampAllocationSettings:
    max_extra: float = 0.1  # no linear is pruned beyond target + max_extra

    def __post_init__(self) -> None:
        if not self.max_extra >= 0:
            raise AllocationError(f"TAMP max_extra must be >= 0, got {self.max_extra}")


class TampAllocation(Allocation):
    name = "tamp"
    Settings = TampAllocationSettings
    needs_prepass = True

    def __init__(self, settings: TampAllocationSettings | None = None) -> None:
        super().__init__(settings)
        self._sums: dict[str, list[float]] = {}  # key -> [vv, tt, vt, samples]
        self.scores: dict[str, float] = {}
        self._chosen: dict[str, float] = {}

    def observe(self, block: int, name: str, sample: CapturedSample, inputs: torch.Tensor,
                linear: nn.Linear) -> None:
        bias = None if linear.bias is None else linear.bias.detach().double().to(inputs.device)
        outputs = nn.functional.linear(inputs.double(), linear.weight.detach().double().to(inputs.device), bias)
        unit = torch.nn.functional.normalize(outputs, dim=-1)
        sims = modality_similarities(unit, sample.visual_mask.to(unit.device))
        sums = self._sums.setdefault(linear_key(block, name), [0.0, 0.0, 0.0, 0.0])
        for i, value in enumerate(sims):
            sums[i] += value
        sums[3] += 1

    def finish_block(self, block: int, linears: dict[str, nn.Linear]) -> None:
        for name in linears:
            vv, tt, vt, count = self._sums.pop(linear_key(block, name))
            self.scores[linear_key(block, name)] = abs(3.0 - (vv + tt + vt) / count)

    def sparsities(self, target: float, sizes: dict[str, int]) -> dict[str, float]:
        keys = list(sizes)
        max_sparsity = min(target + self.settings.max_extra, 1.0)
        total_keep = int(sum(sizes.values()) * (1 - target))
        keep = proportional_keep([self.scores[k] for k in keys], [sizes[k] for k in keys], total_keep, max_sparsity)
        self._chosen = {k: 1.0 - kept / sizes[k] for k, kept in zip(keys, keep)}
        return dict(self._chosen)

    def record(self) -> dict[str, Any]:
        return {"score": dict(self.scores), "sparsity": dict(self._chosen)}

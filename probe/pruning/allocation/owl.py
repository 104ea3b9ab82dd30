"""OWL, outlier-weighted layer-wise sparsity (Yin et al., ICML 2024).

In a dense pre-pass, each block's outlier ratio ``D_b`` is the share of its Wanda scores
``|W_ij| * ||X_j||_2`` (over all its linears together) above ``m`` times their mean. The ratios are
scaled to ``[0, 2 * lam]`` by min-max, centred on their parameter-weighted mean, and subtracted from the
target: ``s_b = s - (z_b - mean_P(z))``. Blocks with more outliers keep more weights; the
parameter-weighted mean of the ``s_b`` is exactly ``s``, as in the upstream code (which averages without
weights, the same for equal blocks). The block sparsities span ``2 * lam`` (the largest minus the
smallest), placed around ``s`` as the ratios fall: ``s`` is the mean, not the middle, so a block can lie
up to almost ``2 * lam`` from ``s`` on either side (three equal blocks with outlier ratios 0, 1, 0 give
``s + 2 lam / 3, s - 4 lam / 3, s + 2 lam / 3``). Settings are checked up front against that bound:
``s - 2 lam >= 0`` and ``s + 2 lam <= 1``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from probe.calibration.capture import CapturedSample
from probe.core.record import block_of
from probe.pruning.allocation.base import Allocation, AllocationError
from probe.pruning.sparsity.stats import InputStats, wanda_scores


def outlier_ratio(scores: list[torch.Tensor], m: float) -> float:
    """Share of all ``scores`` above ``m`` times their mean (one matrix at a time: no joined copy)."""
    count = sum(s.numel() for s in scores)
    mean = sum(float(s.double().sum()) for s in scores) / count
    return sum(int((s.double() > mean * m).sum()) for s in scores) / count


def owl_sparsities(ratios: list[float], params: list[int], target: float, lam: float) -> list[float]:
    """Block sparsities from outlier ratios (see the module docstring)."""
    r = torch.tensor(ratios, dtype=torch.float64)
    p = torch.tensor(params, dtype=torch.float64)
    spread = float(r.max() - r.min())
    z = (r - r.min()) / spread * 2 * lam if spread > 0 else torch.zeros_like(r)
    return [float(v) for v in target - (z - (z * p).sum() / p.sum())]


@dataclass(frozen=True)
class OwlSettings:
    m: float = 5.0  # a score is an outlier above m times the block's mean score
    lam: float = 0.08  # block sparsities span 2 * lam, their parameter-weighted mean the target

    def __post_init__(self) -> None:
        if not self.m > 0:
            raise AllocationError(f"OWL m must be > 0, got {self.m}")
        if not 0 <= self.lam < 0.5:
            raise AllocationError(f"OWL lam must lie in [0, 0.5), got {self.lam}")


class OwlAllocation(Allocation):
    name = "owl"
    Settings = OwlSettings
    needs_prepass = True

    def __init__(self, settings: OwlSettings | None = None) -> None:
        super().__init__(settings)
        self._stats: dict[str, InputStats] = {}
        self.ratios: dict[int, float] = {}
        self._chosen: dict[int, float] = {}

    def check(self, sparsity: float, pattern) -> None:
        super().check(sparsity, pattern)
        lam = self.settings.lam
        if not (sparsity - 2 * lam >= 0 and sparsity + 2 * lam <= 1):
            raise AllocationError(f"OWL with lam {lam} at sparsity {sparsity}: block sparsities can lie up to 2 * lam "
                                  f"= {2 * lam:g} from the target, outside [0, 1); use a lam of at most "
                                  f"{min(sparsity, 1 - sparsity) / 2:g}")

    def observe(self, block: int, name: str, sample: CapturedSample, inputs: torch.Tensor,
                linear: nn.Linear) -> None:
        if name not in self._stats:
            self._stats[name] = InputStats.empty(inputs.shape[-1], inputs.device)
        self._stats[name].add(inputs)

    def finish_block(self, block: int, linears: dict[str, nn.Linear]) -> None:
        scores = [wanda_scores(lin.weight, self._stats[name].column_norms()) for name, lin in linears.items()]
        self.ratios[block] = outlier_ratio(scores, self.settings.m)
        self._stats = {}

    def sparsities(self, target: float, sizes: dict[str, int]) -> dict[str, float]:
        blocks = sorted(self.ratios)
        params = [sum(n for key, n in sizes.items() if block_of(key) == b) for b in blocks]
        chosen = owl_sparsities([self.ratios[b] for b in blocks], params, target, self.settings.lam)
        self._chosen = dict(zip(blocks, chosen))
        return {key: self._chosen[block_of(key)] for key in sizes}

    def record(self) -> dict[str, Any]:
        return {"outlier_ratio": {str(b): r for b, r in self.ratios.items()},
                "block_sparsity": {str(b): s for b, s in self._chosen.items()}}

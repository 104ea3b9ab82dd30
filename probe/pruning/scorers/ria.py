"""RIA, Relative Importance and Activations (Zhang et al., ICLR 2024).

``score_ij = (|W_ij| / sum_k |W_ik| + |W_ij| / sum_k |W_kj|) * ||X_j||_2 ** power``: a weight's share of
its output row plus its share of its input column, times the input column's activation norm
(``power`` 0.5 by default, the paper's ``a``). Unstructured pruning takes one threshold per matrix, as the
upstream code does by default; ``per_row`` prunes each output row alone (upstream ``--per_outneuron``).
N:M keeps the N highest scores of every M columns. The upstream channel reallocation and linear-sum
assignment for N:M are not part of it.

Two details differ from the upstream code on purpose. Per matrix, exactly ``int(numel * sparsity)``
weights are pruned (the lowest scores, ties broken by position); upstream prunes every score at or below
the value at that position, so tied scores there take one weight or more beyond the target. A weight in
an all-zero row or column (whose share upstream divides by zero, giving NaN) has a share of 0 in that
direction; its score comes from the other direction alone, and an all-zero weight scores 0 and is
pruned first.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from probe.pruning.scorers.base import Scorer, ScorerError
from probe.pruning.sparsity.masks import Pattern, mask_from_scores, matrix_mask
from probe.pruning.sparsity.stats import InputStats


def ria_scores(weight: torch.Tensor, column_norms: torch.Tensor, power: float = 0.5) -> torch.Tensor:
    """RIA scores (fp32); an all-zero row or column contributes a share of 0."""
    w = weight.abs().float()
    tiny = torch.finfo(torch.float32).tiny
    relative = w / w.sum(dim=1, keepdim=True).clamp(min=tiny) + w / w.sum(dim=0, keepdim=True).clamp(min=tiny)
    return relative * column_norms.float().to(w.device).pow(power).unsqueeze(0)


@dataclass(frozen=True)
class RiaSettings:
    power: float = 0.5  # exponent a of the activation norm
    per_row: bool = False  # unstructured: prune each output row alone instead of one threshold per matrix

    def __post_init__(self) -> None:
        if not self.power >= 0:
            raise ScorerError(f"RIA power must be >= 0, got {self.power}")


class RiaScorer(Scorer):
    name = "ria"
    Settings = RiaSettings

    def prune(self, weight: torch.Tensor, stats: InputStats | None, sparsity: float, pattern: Pattern
              ) -> torch.Tensor:
        scores = ria_scores(weight, stats.column_norms(), self.settings.power)
        if pattern.structured or self.settings.per_row:
            mask = mask_from_scores(scores, sparsity, pattern)
        else:
            mask = matrix_mask(scores, sparsity)
        return weight.masked_fill(mask.to(weight.device), 0)

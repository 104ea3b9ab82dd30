"""Wanda (Sun et al., ICLR 2024): scores ``|W_ij| * ||X_j||_2``, the lowest of each output row pruned.

``use_variant`` is the upstream code's variant: instead of a fixed count per row, each row prunes its
lowest scores whose cumulative sum stays within ``alpha`` times the row's total, with one ``alpha`` for
the whole matrix found by bisection so that the matrix's sparsity meets the target (within 0.001).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from probe.pruning.scorers.base import Scorer, ScorerError
from probe.pruning.sparsity.masks import Pattern, mask_from_scores
from probe.pruning.sparsity.stats import InputStats, wanda_scores

VARIANT_START, VARIANT_HIGH, VARIANT_TOLERANCE = 0.4, 0.8, 0.001


def cumulative_mass_mask(scores: torch.Tensor, alpha: float) -> torch.Tensor:
    """Per row, prune every score at or under the largest sorted score whose cumulative sum is within
    ``alpha`` times the row's sum (a row whose smallest score already exceeds that prunes nothing)."""
    ordered = torch.sort(scores, dim=1, stable=True).values
    within = torch.cumsum(ordered, dim=1) <= (scores.sum(dim=1) * alpha).unsqueeze(1)
    count = within.sum(dim=1, keepdim=True)
    threshold = torch.gather(ordered, 1, (count - 1).clamp(min=0))
    return (scores <= threshold) & (count > 0)


def variant_mask(scores: torch.Tensor, sparsity: float) -> tuple[torch.Tensor, float]:
    """Wanda's variant: bisect ``alpha`` in [0, 0.8] from 0.4 until the pruned fraction is within 0.001 of
    ``sparsity`` (or the interval is under 0.001 wide); returns the mask and the ``alpha`` it used."""
    alpha, low, high = VARIANT_START, 0.0, VARIANT_HIGH
    mask = cumulative_mass_mask(scores, alpha)
    achieved = float(mask.float().mean())
    while abs(achieved - sparsity) > VARIANT_TOLERANCE and high - low >= VARIANT_TOLERANCE:
        if achieved > sparsity:
            alpha, high = (alpha + low) / 2.0, alpha
        else:
            alpha, low = (alpha + high) / 2.0, alpha
        mask = cumulative_mass_mask(scores, alpha)
        achieved = float(mask.float().mean())
    return mask, alpha


@dataclass(frozen=True)
class WandaSettings:
    use_variant: bool = False  # per-row cumulative-score thresholds (unstructured only)


class WandaScorer(Scorer):
    name = "wanda"
    Settings = WandaSettings

    def check(self, pattern: Pattern) -> None:
        if self.settings.use_variant and pattern.structured:
            raise ScorerError(f"Wanda's use_variant chooses per-row thresholds; it has no {pattern} form")

    def prune(self, weight: torch.Tensor, stats: InputStats | None, sparsity: float, pattern: Pattern
              ) -> torch.Tensor:
        scores = wanda_scores(weight, stats.column_norms())
        if self.settings.use_variant:
            mask, _ = variant_mask(scores, sparsity)
        else:
            mask = mask_from_scores(scores, sparsity, pattern)
        return weight.masked_fill(mask.to(weight.device), 0)

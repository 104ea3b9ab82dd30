"""Magnitude pruning: the smallest ``|W|`` of each matrix go (no calibration)."""

from __future__ import annotations

import torch

from probe.pruning.scorers.base import Scorer
from probe.pruning.sparsity.masks import Pattern, magnitude_mask
from probe.pruning.sparsity.stats import InputStats


class MagnitudeScorer(Scorer):
    name = "magnitude"
    needs = "nothing"

    def prune(self, weight: torch.Tensor, stats: InputStats | None, sparsity: float, pattern: Pattern
              ) -> torch.Tensor:
        return weight.masked_fill(magnitude_mask(weight, sparsity, pattern), 0)

"""SparseGPT (Frantar & Alistarh, ICML 2023) as a scorer; its maths is in :mod:`probe.pruning.sparsity.sparsegpt`."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from probe.pruning.scorers.base import Scorer, ScorerError
from probe.pruning.sparsity.masks import Pattern
from probe.pruning.sparsity.sparsegpt import sparsegpt_prune
from probe.pruning.sparsity.stats import InputStats


@dataclass(frozen=True)
class SparseGptSettings:
    blocksize: int = 128  # columns per lazy-update block
    percdamp: float = 0.01  # dampening, as a fraction of the Hessian's mean diagonal

    def __post_init__(self) -> None:
        if self.blocksize < 1:
            raise ScorerError(f"SparseGPT blocksize must be at least 1, got {self.blocksize}")
        if not self.percdamp > 0:
            raise ScorerError(f"SparseGPT percdamp must be > 0, got {self.percdamp}")


class SparseGptScorer(Scorer):
    name = "sparsegpt"
    Settings = SparseGptSettings
    needs = "hessian"

    def check(self, pattern: Pattern) -> None:
        if pattern.structured and self.settings.blocksize % pattern.m:
            raise ScorerError(f"SparseGPT blocksize {self.settings.blocksize} is not a multiple of M in {pattern}")

    def prune(self, weight: torch.Tensor, stats: InputStats | None, sparsity: float, pattern: Pattern
              ) -> torch.Tensor:
        new, _ = sparsegpt_prune(weight, stats.hessian(), sparsity, pattern, self.settings.blocksize,
                                 self.settings.percdamp)
        return new

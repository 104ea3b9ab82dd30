"""The scorer protocol: given a weight, the statistics of its input and a sparsity, the new weight."""

from __future__ import annotations

from typing import Any, ClassVar, Literal

import torch

from probe.core.settings import NoSettings
from probe.errors import ProbeError
from probe.pruning.sparsity.masks import Pattern
from probe.pruning.sparsity.stats import InputStats

Needs = Literal["nothing", "norms", "hessian"]


class ScorerError(ProbeError):
    """Scorer settings that do not fit the run."""


class Scorer:
    """Decides which weights of one matrix go and what the kept ones become.

    ``needs`` says what the engine must gather over the selected tokens: ``nothing`` (no calibration),
    ``norms`` (``sum_t x_tj^2`` per input column) or ``hessian`` (``X^T X`` as well).
    """

    name: ClassVar[str] = ""
    Settings: ClassVar[type] = NoSettings
    needs: ClassVar[Needs] = "norms"

    def __init__(self, settings: Any = None) -> None:
        self.settings = settings if settings is not None else self.Settings()

    def check(self, pattern: Pattern) -> None:
        """Raise :class:`ScorerError` before any work if the settings do not fit ``pattern``."""

    def prune(self, weight: torch.Tensor, stats: InputStats | None, sparsity: float, pattern: Pattern
              ) -> torch.Tensor:
        """The pruned weight (any float dtype; zeros where pruned)."""
        raise NotImplementedError

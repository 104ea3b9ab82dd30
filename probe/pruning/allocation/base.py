"""The allocation protocol: how much sparsity each linear gets, given the run's target.

An allocation with ``needs_prepass`` watches a dense pass over the calibration set before any pruning:
for every block, sample and linear it receives the linear's input rows (every token of the sample) and
the linear (:meth:`Allocation.observe`), then the block's end (:meth:`Allocation.finish_block`). Afterwards
:meth:`Allocation.sparsities` gives every linear its sparsity.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import nn

from probe.calibration.capture import CapturedSample
from probe.core.settings import NoSettings
from probe.errors import ProbeError
from probe.pruning.sparsity.masks import Pattern


class AllocationError(ProbeError):
    """Allocation settings that do not fit the run."""


class Allocation:
    name: ClassVar[str] = ""
    Settings: ClassVar[type] = NoSettings
    needs_prepass: ClassVar[bool] = False

    def __init__(self, settings: Any = None) -> None:
        self.settings = settings if settings is not None else self.Settings()

    def check(self, sparsity: float, pattern: Pattern) -> None:
        """Raise :class:`AllocationError` before any work if the allocation cannot serve this target."""
        if self.needs_prepass and pattern.structured:
            raise AllocationError(f"allocation {self.name!r} varies the sparsity per layer; an N:M pattern "
                                  f"({pattern}) fixes it, so use it with unstructured sparsity")

    def observe(self, block: int, name: str, sample: CapturedSample, inputs: torch.Tensor,
                linear: nn.Linear) -> None:
        """One sample's input rows (tokens, d_in) of ``linear`` in the dense pre-pass."""

    def finish_block(self, block: int, linears: dict[str, nn.Linear]) -> None:
        """Every sample of ``block`` was observed; ``linears`` are its linears by name."""

    def sparsities(self, target: float, sizes: dict[str, int]) -> dict[str, float]:
        """Sparsity of every linear (by :func:`linear_key`; ``sizes`` gives their parameter counts)."""
        raise NotImplementedError

    def record(self) -> dict[str, Any]:
        """What the allocation measured and decided (for the run record)."""
        return {}

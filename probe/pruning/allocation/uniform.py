"""Every linear gets the target sparsity."""

from __future__ import annotations

from probe.pruning.allocation.base import Allocation


class UniformAllocation(Allocation):
    name = "uniform"

    def sparsities(self, target: float, sizes: dict[str, int]) -> dict[str, float]:
        return dict.fromkeys(sizes, target)

"""Token pools: which positions of each calibration sample feed a block's statistics.

A pool answers, per sample and block, a boolean mask over positions. The built-in pools depend only
on token modality (from the adapter's visual mask); dynamic pools such as ATV's refine this after the
block's dense pass (see :class:`Pool`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from probe.capture import CapturedSample


class PoolError(ValueError):
    """An unknown pool, or a pool that is empty for a sample."""


@dataclass(frozen=True)
class Pool:
    """A static pool selecting positions by modality."""

    name: str

    def positions(self, sample: CapturedSample, block: int) -> torch.Tensor:
        """Boolean mask (seq,) of the positions that enter this block's statistics."""
        visual = sample.visual_mask
        if self.name == "text":
            return ~visual
        if self.name == "visual":
            return visual.clone()
        return torch.ones_like(visual)


POOLS = ("text", "visual", "mixed")


def get_pool(name: str) -> Pool:
    """The built-in pool called ``name``."""
    if name not in POOLS:
        raise PoolError(f"unknown pool {name!r}; choose from {', '.join(POOLS)}")
    return Pool(name)


def check_not_empty(pool: Pool, samples: list[CapturedSample]) -> None:
    """Raise :class:`PoolError` naming the first sample whose pool is empty."""
    for sample in samples:
        if not bool(pool.positions(sample, 0).any()):
            raise PoolError(f"pool {pool.name!r} is empty for calibration sample {sample.sample_id!r}")

"""Token pools: which positions of each calibration sample feed a block's statistics.

A pool answers, per sample and block, which positions certainly enter the statistics
(:meth:`Pool.certain`). The built-in pools (``text``, ``visual``, ``mixed``) depend only on token
modality. A *dynamic* pool (ATV, :mod:`probe.atv`) also names positions that may enter
(:meth:`Pool.uncertain`); the engine keeps their inputs during the block's dense pass, shows the pool
the block's dense output (:meth:`Pool.rank`), then asks how many of each sample's ranked positions to
take (:meth:`Pool.choose`). That keeps pruning at two passes per block.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from probe.capture import CapturedSample
from probe.errors import ProbeError
from probe.names import MODALITY_POOLS


class PoolError(ProbeError):
    """An unknown pool, or a pool that is empty for a sample."""


class Pool:
    """Which positions feed a block's statistics; static unless ``dynamic``."""

    name: str = ""
    dynamic: ClassVar[bool] = False
    needs_attention: ClassVar[bool] = False  # rank() then receives the block's attention probabilities
    per_linear: ClassVar[bool] = False  # each linear selects its own positions (select_linear)

    def certain(self, sample: CapturedSample, block: int) -> torch.Tensor:
        """Boolean mask (seq,) of the positions that enter this block's statistics whatever happens."""
        raise NotImplementedError

    # --- dynamic pools override these ----------------------------------------------------------
    def start(self, n_blocks: int) -> None:
        """Called once before the first block."""

    def uncertain(self, sample: CapturedSample, block: int) -> torch.Tensor | None:
        """Boolean mask of positions that may join after the dense pass (None: none)."""
        return None

    def rank(self, index: int, sample: CapturedSample, block: int, x_in: torch.Tensor, x_out: torch.Tensor,
             attention: torch.Tensor | None = None) -> torch.Tensor:
        """Uncertain positions of sample ``index`` in order of preference, cut to the most that
        :meth:`choose` can take; sees the block's dense input and output (and attention probabilities
        (heads, queries, keys) if :attr:`needs_attention`)."""
        raise NotImplementedError

    def choose(self, block: int) -> list[int]:
        """After every sample was ranked: how many of each sample's ranked positions enter."""
        raise NotImplementedError

    def select_linear(self, sample: CapturedSample, outputs: torch.Tensor, attention: torch.Tensor | None
                      ) -> torch.Tensor:
        """For per-linear pools: positions whose inputs feed the statistics of the linear with these outputs."""
        raise NotImplementedError

    def block_record(self, block: int) -> dict[str, Any]:
        """What the pool decided at ``block`` (for the manifest)."""
        return {}


@dataclass(frozen=True)
class ModalityPool(Pool):
    """``text`` (every non-visual position), ``visual`` (image tokens) or ``mixed`` (all positions)."""

    name: str

    def certain(self, sample: CapturedSample, block: int) -> torch.Tensor:
        visual = sample.visual_mask
        if self.name == "text":
            return ~visual
        if self.name == "visual":
            return visual.clone()
        return torch.ones_like(visual)


POOLS = MODALITY_POOLS


def get_pool(name: str) -> Pool:
    """The built-in pool called ``name``."""
    if name not in POOLS:
        raise PoolError(f"unknown pool {name!r}; choose from {', '.join(POOLS)}")
    return ModalityPool(name)


def check_not_empty(pool: Pool, samples: list[CapturedSample]) -> None:
    """Raise :class:`PoolError` naming the first sample for which the pool cannot select anything."""
    if pool.per_linear:  # such pools always pick at least one token
        return
    for sample in samples:
        possible = pool.certain(sample, 0)
        extra = pool.uncertain(sample, 0)
        if extra is not None:
            possible = possible | extra
        if not bool(possible.any()):
            raise PoolError(f"pool {pool.name!r} is empty for calibration sample {sample.sample_id!r}")

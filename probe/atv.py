"""ATV-Pruning as a token pool: all text tokens plus a block-adaptive top-K of visual tokens.

Per block, from the block's dense pass over the calibration set:

1. drift of each visual token ``s_v = 1 - cos(x_in_v, x_out_v)``;
2. ``s_bar``: mean drift over every visual token of every sample (token-weighted);
3. per sample ``K = floor(alpha * s_bar * n_text)`` (``k_rule="paper"``) or
   ``round(min(1, alpha * s_bar) * n_text)`` (``"released"``, the public code), capped at its visual
   count; its top-K visual tokens by the selection signal join the pool;
4. the same pool feeds every linear of the block.

Ablations: ``signal="random"`` ranks visual tokens at random (seeded) instead of by drift;
``text_ratio < 1`` keeps only that fraction of each sample's text tokens, ranked by drift.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from probe.capture import CapturedSample
from probe.pools import Pool, PoolError
from probe.sparsity.selection import (
    K_RULES,
    budget_bound,
    kept_text_count,
    random_ranking,
    rank_descending,
    token_drift,
    visual_budget,
)

SIGNALS = ("drift", "random")


@dataclass(frozen=True)
class AtvSettings:
    """Validated settings of the ATV pool."""

    alpha: float = 1.0
    k_rule: str = "paper"
    signal: str = "drift"
    text_ratio: float = 1.0
    seed: int = 0

    def __post_init__(self) -> None:
        if not self.alpha >= 0:
            raise PoolError(f"ATV alpha must be >= 0, got {self.alpha}")
        if self.k_rule not in K_RULES:
            raise PoolError(f"unknown ATV budget rule {self.k_rule!r}; choose from {', '.join(K_RULES)}")
        if self.signal not in SIGNALS:
            raise PoolError(f"unknown ATV selection signal {self.signal!r}; choose from {', '.join(SIGNALS)}")
        if not 0.0 <= self.text_ratio <= 1.0:
            raise PoolError(f"ATV text ratio must lie in [0, 1], got {self.text_ratio}")
        if self.alpha == 0 and self.text_ratio == 0:
            raise PoolError("ATV with alpha 0 and text ratio 0 selects no token")


@dataclass
class _BlockState:
    drift_sum: float = 0.0
    drift_count: int = 0
    n_text: list[int] = field(default_factory=list)
    n_visual: list[int] = field(default_factory=list)
    n_text_kept: list[int] = field(default_factory=list)
    n_text_ranked: list[int] = field(default_factory=list)  # text tokens at the head of the ranked list
    record: dict[str, Any] = field(default_factory=dict)


class AtvPool(Pool):
    """The ATV pool; one instance serves one pruning run (it records what it chose per block)."""

    name = "atv"
    dynamic = True

    def __init__(self, settings: AtvSettings | None = None) -> None:
        self.settings = settings or AtvSettings()
        self._blocks: dict[int, _BlockState] = {}

    def _state(self, block: int) -> _BlockState:
        return self._blocks.setdefault(block, _BlockState())

    def certain(self, sample: CapturedSample, block: int) -> torch.Tensor:
        text = ~sample.visual_mask
        return text if self.settings.text_ratio == 1.0 else torch.zeros_like(text)

    def uncertain(self, sample: CapturedSample, block: int) -> torch.Tensor:
        visual = sample.visual_mask
        return visual.clone() if self.settings.text_ratio == 1.0 else torch.ones_like(visual)

    def rank(self, index: int, sample: CapturedSample, block: int, x_in: torch.Tensor, x_out: torch.Tensor
             ) -> torch.Tensor:
        state = self._state(block)
        if index != len(state.n_text):
            raise PoolError("ATV must see the samples of a block in order, once each")
        visual = sample.visual_mask.to(x_in.device)
        drift = token_drift(x_in, x_out)
        visual_positions = visual.nonzero().flatten()
        text_positions = (~visual).nonzero().flatten()
        state.drift_sum += float(drift[visual_positions].double().sum())
        state.drift_count += int(visual_positions.numel())
        n_text, n_visual = int(text_positions.numel()), int(visual_positions.numel())
        state.n_text.append(n_text)
        state.n_visual.append(n_visual)

        if self.settings.signal == "drift":
            visual_order = visual_positions[rank_descending(drift[visual_positions])]
        else:
            seed = self.settings.seed * 1_000_003 + block * 10_007 + index
            visual_order = visual_positions[random_ranking(n_visual, seed).to(visual_positions.device)]
        bound = budget_bound(n_text, n_visual, self.settings.alpha, self.settings.k_rule)
        if self.settings.text_ratio == 1.0:  # text tokens are certain, only visual ones are ranked
            state.n_text_kept.append(n_text)
            state.n_text_ranked.append(0)
            return visual_order[:bound].cpu()
        kept = kept_text_count(n_text, self.settings.text_ratio)
        text_order = text_positions[rank_descending(drift[text_positions])][:kept]
        state.n_text_kept.append(kept)
        state.n_text_ranked.append(kept)
        return torch.cat([text_order, visual_order[:bound]]).cpu()

    def choose(self, block: int) -> list[int]:
        state = self._state(block)
        mean_drift = state.drift_sum / max(state.drift_count, 1)
        budgets = [visual_budget(mean_drift, t, v, self.settings.alpha, self.settings.k_rule)
                   for t, v in zip(state.n_text, state.n_visual)]
        state.record = {
            "block": block, "mean_drift": mean_drift, "k_mean": sum(budgets) / max(len(budgets), 1),
            "k_min": min(budgets, default=0), "k_max": max(budgets, default=0), "visual_kept": sum(budgets),
            "visual_total": sum(state.n_visual), "text_kept": sum(state.n_text_kept),
        }
        return [ranked + k for ranked, k in zip(state.n_text_ranked, budgets)]

    def block_record(self, block: int) -> dict[str, Any]:
        return dict(self._state(block).record)

"""ATV-Pruning as a token selector: all text tokens plus a block-adaptive top-K of visual tokens.

Per block, from the block's dense pass over the calibration set:

1. drift of each visual token ``s_v = 1 - cos(x_in_v, x_out_v)``;
2. ``s_bar``: mean drift over every visual token of every sample (token-weighted);
3. per sample ``K = floor(alpha * s_bar * n_text)`` (``k_rule="paper"``) or
   ``round(min(1, alpha * s_bar) * n_text)`` (``"released"``, the public code), capped at its visual
   count; its top-K visual tokens by the selection signal join the pool;
4. the same pool feeds every linear of the block.

Ablations (the paper's Table 3, Fig. 4, Fig. 5):

- ``signal``: ``drift`` (the method); ``random`` (seeded random order, budget from drift); ``abs``
  (attention that text queries give each visual token, for budget and ranking); ``dbs`` (mean cosine
  distance of a visual token to the sample's other visual tokens for the budget, then max-min
  diversity selection over the block inputs);
- ``budget="fixed"`` with ``fixed_total``: every block keeps the same number of visual tokens
  (``fixed_total`` over all blocks and samples, e.g. the total an adaptive run kept, split evenly over
  blocks and over samples in proportion to their text length) instead of the adaptive budget;
- ``text_ratio < 1`` keeps only that fraction of each sample's text tokens, ranked by drift.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from probe.calibration.capture import CapturedSample
from probe.core.names import BUDGETS, SIGNALS
from probe.pruning.sparsity.selection import (
    K_RULES,
    attention_from_text,
    budget_bound,
    kept_text_count,
    max_min_diversity_order,
    mean_cosine_distance,
    random_ranking,
    rank_descending,
    split_total,
    token_drift,
    visual_budget,
)
from probe.pruning.tokens.base import RankingSelector, TokenSelectorError


@dataclass(frozen=True)
class AtvSettings:
    """Validated settings of the ATV token selector."""

    alpha: float = 1.0
    k_rule: str = "paper"
    signal: str = "drift"
    text_ratio: float = 1.0
    budget: str = "adaptive"
    fixed_total: int = 0  # visual tokens over all blocks and samples, for budget="fixed"
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("alpha", "text_ratio", "fixed_total", "seed"):
            value = getattr(self, name)
            whole = name in ("fixed_total", "seed")
            if isinstance(value, bool) or not isinstance(value, (int, float)) or (whole and value != int(value)):
                kind = "an integer" if whole else "a number"
                raise TokenSelectorError(f"ATV {name.replace('_', ' ')} must be {kind}, got {value!r}")
            if whole:
                object.__setattr__(self, name, int(value))
        if not self.alpha >= 0:
            raise TokenSelectorError(f"ATV alpha must be >= 0, got {self.alpha}")
        if self.k_rule not in K_RULES:
            raise TokenSelectorError(f"unknown ATV budget rule {self.k_rule!r}; choose from {', '.join(K_RULES)}")
        if self.signal not in SIGNALS:
            raise TokenSelectorError(f"unknown ATV selection signal {self.signal!r}; choose from {', '.join(SIGNALS)}")
        if not 0.0 <= self.text_ratio <= 1.0:
            raise TokenSelectorError(f"ATV text ratio must lie in [0, 1], got {self.text_ratio}")
        if self.budget not in BUDGETS:
            raise TokenSelectorError(f"unknown ATV budget {self.budget!r}; choose from {', '.join(BUDGETS)}")
        if self.budget == "fixed" and self.fixed_total <= 0:
            raise TokenSelectorError("a fixed ATV budget needs fixed_total > 0 (e.g. the visual tokens an adaptive "
                                     "run kept)")
        if self.alpha == 0 and self.text_ratio == 0:
            raise TokenSelectorError("ATV with alpha 0 and text ratio 0 selects no token")


@dataclass
class _BlockState:
    drift_sum: float = 0.0
    drift_count: int = 0
    n_text: list[int] = field(default_factory=list)
    n_visual: list[int] = field(default_factory=list)
    n_text_kept: list[int] = field(default_factory=list)
    n_text_ranked: list[int] = field(default_factory=list)  # text tokens at the head of the ranked list
    record: dict[str, Any] = field(default_factory=dict)


class AtvTokens(RankingSelector):
    """The ATV selector; one instance serves one pruning run (it records what it chose per block)."""

    name = "atv"
    Settings = AtvSettings

    def __init__(self, settings: AtvSettings | None = None) -> None:
        super().__init__(settings)
        self._blocks: dict[int, _BlockState] = {}
        self._n_blocks = 1

    @property
    def needs_attention(self) -> bool:  # type: ignore[override]
        return self.settings.signal == "abs"

    def start(self, n_blocks: int) -> None:
        self._n_blocks = n_blocks

    def _block_total(self, block: int) -> int:
        """The fixed budget's visual tokens at ``block``: ``fixed_total`` split evenly over blocks."""
        share, extra = divmod(self.settings.fixed_total, self._n_blocks)
        return share + int(block < extra)

    def _state(self, block: int) -> _BlockState:
        return self._blocks.setdefault(block, _BlockState())

    def certain(self, sample: CapturedSample, block: int) -> torch.Tensor:
        text = ~sample.visual_mask
        return text if self.settings.text_ratio == 1.0 else torch.zeros_like(text)

    def candidates(self, sample: CapturedSample, block: int) -> torch.Tensor:
        visual = sample.visual_mask
        return visual.clone() if self.settings.text_ratio == 1.0 else torch.ones_like(visual)

    def rank(self, index: int, sample: CapturedSample, block: int, x_in: torch.Tensor, x_out: torch.Tensor,
             attention: torch.Tensor | None = None) -> torch.Tensor:
        state = self._state(block)
        if index != len(state.n_text):
            raise TokenSelectorError("ATV must see the samples of a block in order, once each")
        settings = self.settings
        visual = sample.visual_mask.to(x_in.device)
        drift = token_drift(x_in, x_out)
        visual_positions = visual.nonzero().flatten()
        text_positions = (~visual).nonzero().flatten()
        n_text, n_visual = int(text_positions.numel()), int(visual_positions.numel())

        if settings.signal == "abs":
            if attention is None:
                raise TokenSelectorError("ABS selection needs the block's attention probabilities")
            score = attention_from_text(attention, ~visual, visual_positions)
            order = rank_descending(score)
        elif settings.signal == "dbs":
            features = x_in.reshape(-1, x_in.shape[-1])[visual_positions]
            score = mean_cosine_distance(features)
            first = int(rank_descending(score)[0]) if n_visual else 0
            order = max_min_diversity_order(features, first)
        else:
            score = drift[visual_positions]
            if settings.signal == "drift":
                order = rank_descending(score)
            else:
                order = random_ranking(n_visual, settings.seed * 1_000_003 + block * 10_007 + index)
        visual_order = visual_positions[order.to(visual_positions.device)]
        state.drift_sum += float(score.double().sum())
        state.drift_count += n_visual
        state.n_text.append(n_text)
        state.n_visual.append(n_visual)

        if settings.budget == "fixed":
            bound = min(n_visual, self._block_total(block))
        else:
            bound = budget_bound(n_text, n_visual, settings.alpha, settings.k_rule)
        if settings.text_ratio == 1.0:  # text tokens are certain, only visual ones are ranked
            state.n_text_kept.append(n_text)
            state.n_text_ranked.append(0)
            return visual_order[:bound].cpu()
        kept = kept_text_count(n_text, settings.text_ratio)
        text_order = text_positions[rank_descending(drift[text_positions])][:kept]
        state.n_text_kept.append(kept)
        state.n_text_ranked.append(kept)
        return torch.cat([text_order, visual_order[:bound]]).cpu()

    def choose(self, block: int) -> list[int]:
        state = self._state(block)
        settings = self.settings
        mean_score = state.drift_sum / max(state.drift_count, 1)
        if settings.budget == "fixed":
            budgets = split_total(self._block_total(block), [float(t) for t in state.n_text], state.n_visual)
        else:
            budgets = [visual_budget(mean_score, t, v, settings.alpha, settings.k_rule)
                       for t, v in zip(state.n_text, state.n_visual)]
        state.record = {
            "block": block, "mean_drift": mean_score, "k_mean": sum(budgets) / max(len(budgets), 1),
            "k_min": min(budgets, default=0), "k_max": max(budgets, default=0), "visual_kept": sum(budgets),
            "visual_total": sum(state.n_visual), "text_kept": sum(state.n_text_kept),
        }
        return [ranked + k for ranked, k in zip(state.n_text_ranked, budgets)]

    def block_record(self, block: int) -> dict[str, Any]:
        return dict(self._state(block).record)

"""FastV (Chen et al., ECCV 2024): after layer K-1, drop the fraction R of visual tokens that receive the
least attention from the last query token (mean over heads) at layer K-1; kept tokens keep their original
positions. The selection is made once, at the prefill, and decoding steps reuse the shortened caches
(FastV's KV-cache variant); its original cache-free code selects again at every decoding step."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from probe.token_pruning.base import (
    ATTENTION,
    Selection,
    StageView,
    TokenPruner,
    TokenPruningError,
    kept_count,
    with_text,
)


@dataclass(frozen=True)
class FastvSettings:
    k: int = 2  # tokens are dropped before decoder layer k
    ratio: float = 0.5  # the fraction of visual tokens dropped

    def __post_init__(self) -> None:
        if not 0.0 <= self.ratio <= 1.0:
            raise TokenPruningError(f"FastV ratio must lie in [0, 1], got {self.ratio}")


class FastvPruner(TokenPruner):
    name = "fastv"
    Settings = FastvSettings

    def stage_layers(self) -> list[int]:
        return [self.settings.k]

    def observe(self, layer: int) -> set[str]:
        return {ATTENTION} if layer == self.settings.k - 1 else set()

    def select(self, view: StageView) -> Selection:
        local = view.visual[view.alive].nonzero().flatten()
        count = kept_count(int(local.numel()), self.settings.ratio)
        scores = view.observed[ATTENTION][local]
        chosen = local[torch.sort(scores, descending=True, stable=True).indices[:count]]
        keep = with_text(view, view.alive[chosen])
        attention = view.observed[ATTENTION][torch.searchsorted(view.alive, keep)]
        visual = view.visual[keep]
        weights = torch.ones(keep.numel(), dtype=torch.float32)
        if visual.any():
            weights[visual.cpu()] = (attention[visual] / attention[visual].mean().clamp(min=1e-12)).float().cpu()
        return Selection(keep, weights)

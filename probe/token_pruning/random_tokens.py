"""The control every token-pruning paper reports: before layer K, drop a seeded random fraction R of the
visual tokens (the same draw for every request with as many visual tokens)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from probe.token_pruning.base import Selection, StageView, TokenPruner, TokenPruningError, kept_count, with_text


@dataclass(frozen=True)
class RandomSettings:
    k: int = 2
    ratio: float = 0.5
    seed: int = 0

    def __post_init__(self) -> None:
        if not 0.0 <= self.ratio <= 1.0:
            raise TokenPruningError(f"random token pruning ratio must lie in [0, 1], got {self.ratio}")


class RandomPruner(TokenPruner):
    name = "random"
    Settings = RandomSettings

    def stage_layers(self) -> list[int]:
        return [self.settings.k]

    def select(self, view: StageView) -> Selection:
        visual = view.alive[view.visual[view.alive]]
        count = kept_count(int(visual.numel()), self.settings.ratio)
        order = torch.randperm(int(visual.numel()), generator=torch.Generator().manual_seed(self.settings.seed))
        return Selection(with_text(view, visual[order[:count].to(visual.device)]))

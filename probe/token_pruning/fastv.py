"""FastV (Chen et al., ECCV 2024): after layer K-1, drop the fraction R of visual tokens that receive the
least attention from the last query token (mean over heads) at layer K-1; kept tokens keep their original
positions."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from probe.token_pruning.base import TokenPruner, TokenPruningError, kept_count


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
    needs_attention = True

    def layer(self) -> int:
        return self.settings.k

    def keep(self, visual: torch.Tensor, attention: torch.Tensor | None) -> torch.Tensor:
        count = kept_count(int(visual.numel()), self.settings.ratio)
        scores = attention[visual]
        chosen = torch.sort(scores, descending=True, stable=True).indices[:count]
        return torch.sort(visual[chosen]).values

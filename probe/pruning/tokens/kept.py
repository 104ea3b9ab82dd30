"""The ``kept`` token selector (joint weight + token pruning): a block's statistics come only from the
positions a token-pruning method keeps alive at that block (:mod:`probe.token_pruning.schedule`), so
the weights are calibrated on the tokens they will see. With every token alive it is the ``mixed``
selector. With ``weighted``, each token counts in the statistics by the method's saliency of it (FastV:
the attention it received, mean 1 over the visual tokens kept; methods without one count each once)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from probe.calibration.capture import SCHEDULE_KEY, WEIGHTS_KEY, CapturedSample
from probe.pruning.tokens.base import StaticSelector, TokenSelectorError


@dataclass(frozen=True)
class KeptSettings:
    weighted: bool = False  # count each token by the token method's saliency of it


class KeptTokens(StaticSelector):
    name = "kept"
    Settings = KeptSettings

    def weights(self, sample: CapturedSample, block: int) -> torch.Tensor | None:
        if not self.settings.weighted:
            return None
        self.positions(sample, block)  # the same clear error when there is no schedule
        return sample.meta[WEIGHTS_KEY][block].to(sample.visual_mask.device)

    def positions(self, sample: CapturedSample, block: int) -> torch.Tensor:
        schedule = sample.meta.get(SCHEDULE_KEY)
        if schedule is None:
            raise TokenSelectorError("the kept token selector needs a token-pruning method (e.g. --token-pruning "
                                     "fastv) whose alive tokens it follows")
        return schedule[block].to(sample.visual_mask.device)

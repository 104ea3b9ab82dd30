"""The ``kept`` token selector (joint weight + token pruning): a block's statistics come only from the
positions a token-pruning method keeps alive at that block (:mod:`probe.token_pruning.schedule`), so
the weights are calibrated on the tokens they will see. With every token alive it is the ``mixed``
selector."""

from __future__ import annotations

import torch

from probe.capture import CapturedSample
from probe.token_pruning.schedule import SCHEDULE_KEY
from probe.tokens.base import StaticSelector, TokenSelectorError


class KeptTokens(StaticSelector):
    name = "kept"

    def positions(self, sample: CapturedSample, block: int) -> torch.Tensor:
        schedule = sample.meta.get(SCHEDULE_KEY)
        if schedule is None:
            raise TokenSelectorError("the kept token selector needs a token-pruning method (e.g. --token-pruning "
                                     "fastv) whose alive tokens it follows")
        return schedule[block].to(sample.visual_mask.device)

"""The modality token selectors: ``text`` (every non-visual position), ``visual`` (image tokens) and
``mixed`` (every position)."""

from __future__ import annotations

import torch

from probe.calibration.capture import CapturedSample
from probe.pruning.tokens.base import StaticSelector


class TextTokens(StaticSelector):
    name = "text"

    def positions(self, sample: CapturedSample, block: int) -> torch.Tensor:
        return ~sample.visual_mask


class VisualTokens(StaticSelector):
    name = "visual"

    def positions(self, sample: CapturedSample, block: int) -> torch.Tensor:
        return sample.visual_mask.clone()


class MixedTokens(StaticSelector):
    name = "mixed"

    def positions(self, sample: CapturedSample, block: int) -> torch.Tensor:
        return torch.ones_like(sample.visual_mask)

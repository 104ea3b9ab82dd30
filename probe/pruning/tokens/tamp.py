"""TAMP (AMIA) as a token selector: each linear picks its own tokens from its outputs and the attention the
last query gives them (see :mod:`probe.pruning.sparsity.amia`); Wanda statistics come from those tokens."""

from __future__ import annotations

import torch

from probe.calibration.capture import CapturedSample
from probe.pruning.sparsity.amia import amia_select
from probe.pruning.tokens.base import PerLinearSelector


class TampTokens(PerLinearSelector):
    """Per-linear token selection; the engine shows it every linear's outputs and the block's attention."""

    name = "tamp"
    needs_attention = True

    def select_linear(self, sample: CapturedSample, outputs: torch.Tensor, attention: torch.Tensor) -> torch.Tensor:
        """Positions whose inputs enter the statistics of the linear that produced ``outputs``."""
        last_query = attention[:, -1, :].mean(dim=0)
        return amia_select(outputs, sample.visual_mask.to(outputs.device), last_query)

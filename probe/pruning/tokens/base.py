"""Token selectors: which positions of each calibration sample feed a block's statistics.

Three kinds, each a small protocol the engine drives:

- :class:`StaticSelector` names the positions from the sample alone (by token modality);
- :class:`RankingSelector` (ATV) names certain positions and candidates; the engine keeps the candidates'
  inputs during the block's dense pass, shows the selector each sample's dense input and output
  (:meth:`RankingSelector.rank`), then asks how many of each sample's ranked candidates to take
  (:meth:`RankingSelector.choose`), so pruning stays at two passes per block;
- :class:`PerLinearSelector` (TAMP) picks positions for every linear from that linear's outputs.

A selector with ``needs_attention`` also receives the block's attention probabilities.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch

from probe.calibration.capture import CapturedSample
from probe.core.settings import NoSettings
from probe.errors import ProbeError


class TokenSelectorError(ProbeError):
    """Invalid token selector settings, or a selector that is empty for a sample."""


class TokenSelector:
    """Base of the three kinds; one instance serves one pruning run."""

    name: ClassVar[str] = ""
    Settings: ClassVar[type] = NoSettings
    needs_attention: bool = False

    def __init__(self, settings: Any = None) -> None:
        self.settings = settings if settings is not None else self.Settings()

    def start(self, n_blocks: int) -> None:
        """Called once before the first block."""

    def possible(self, sample: CapturedSample) -> torch.Tensor:
        """Positions that may ever enter the statistics (for the check that a sample is not left out)."""
        return torch.ones_like(sample.visual_mask)

    def block_record(self, block: int) -> dict[str, Any]:
        """What the selector decided at ``block`` (for the run record)."""
        return {}


class StaticSelector(TokenSelector):
    """Positions fixed by the sample."""

    def positions(self, sample: CapturedSample, block: int) -> torch.Tensor:
        """Boolean mask (seq,) of the positions that enter this block's statistics."""
        raise NotImplementedError

    def weights(self, sample: CapturedSample, block: int) -> torch.Tensor | None:
        """How much each position (seq,) counts in the statistics (None: each once)."""
        return None

    def possible(self, sample: CapturedSample) -> torch.Tensor:
        return self.positions(sample, 0)


class RankingSelector(TokenSelector):
    """Certain positions plus ranked candidates, chosen once the whole calibration set passed a block."""

    def certain(self, sample: CapturedSample, block: int) -> torch.Tensor:
        """Boolean mask (seq,) of the positions that enter whatever happens."""
        raise NotImplementedError

    def candidates(self, sample: CapturedSample, block: int) -> torch.Tensor:
        """Boolean mask (seq,) of the positions that may join after the dense pass."""
        raise NotImplementedError

    def rank(self, index: int, sample: CapturedSample, block: int, x_in: torch.Tensor, x_out: torch.Tensor,
             attention: torch.Tensor | None = None) -> torch.Tensor:
        """Candidate positions of sample ``index`` in order of preference, cut to the most that
        :meth:`choose` can take; sees the block's dense input and output (and the attention probabilities
        (heads, queries, keys) if :attr:`needs_attention`)."""
        raise NotImplementedError

    def choose(self, block: int) -> list[int]:
        """After every sample was ranked: how many of each sample's ranked positions enter."""
        raise NotImplementedError

    def possible(self, sample: CapturedSample) -> torch.Tensor:
        return self.certain(sample, 0) | self.candidates(sample, 0)


class PerLinearSelector(TokenSelector):
    """Each linear picks its own positions from its outputs (and the block's attention)."""

    def select_linear(self, sample: CapturedSample, outputs: torch.Tensor, attention: torch.Tensor | None
                      ) -> torch.Tensor:
        """Boolean mask (seq,) of the positions whose inputs feed the statistics of the linear with these outputs."""
        raise NotImplementedError


def check_not_empty(selector: TokenSelector, samples: list[CapturedSample]) -> None:
    """Raise :class:`TokenSelectorError` naming the first sample of which the selector can take nothing."""
    for sample in samples:
        if not bool(selector.possible(sample).any()):
            raise TokenSelectorError(f"token selector {selector.name!r} is empty for calibration sample "
                                     f"{sample.sample_id!r}")

"""Perplexity on held-out text, as the LLM-pruning papers report it (Wanda, SparseGPT: WikiText-2).

The text is tokenized once and cut into non-overlapping windows of ``seq_len`` tokens (a last, shorter
window is left out); each window is one forward, and every token but a window's first is predicted from
the tokens before it in its window. Perplexity is ``exp`` of the mean negative log-likelihood over all
predicted tokens; its interval is ``exp`` of that mean +- 1.96 standard errors of the windows' means
(windows are the units: tokens within one are not independent).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from probe.core.progress import progress_bar
from probe.errors import ProbeError


class PerplexityError(ProbeError):
    """Held-out text or settings that perplexity cannot be measured on."""


@dataclass(frozen=True)
class Perplexity:
    """Perplexity with its 95% interval, and what it was measured on."""

    perplexity: float
    low: float
    high: float
    mean_nll: float  # nats per predicted token
    standard_error: float  # of mean_nll, over windows (nan with one window)
    windows: int
    seq_len: int
    tokens: int  # predicted tokens: windows x (seq_len - 1)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def __str__(self) -> str:
        return (f"perplexity {self.perplexity:.3f} [{self.low:.3f}, {self.high:.3f}] over {self.windows} windows of "
                f"{self.seq_len} tokens (mean NLL {self.mean_nll:.4f} +- {self.standard_error:.4f} nats)")


def text_windows(ids: torch.Tensor, seq_len: int, max_windows: int | None = None) -> list[torch.Tensor]:
    """Non-overlapping windows of ``seq_len`` token ids, at most ``max_windows`` of them."""
    if seq_len < 2:
        raise PerplexityError(f"seq_len must be at least 2 tokens, got {seq_len}")
    count = ids.numel() // seq_len
    if count == 0:
        raise PerplexityError(f"the text has {ids.numel()} tokens, fewer than one window of {seq_len}")
    if max_windows is not None:
        if max_windows < 1:
            raise PerplexityError(f"max_windows must be at least 1, got {max_windows}")
        count = min(count, max_windows)
    return [ids[i * seq_len:(i + 1) * seq_len] for i in range(count)]


@torch.no_grad()
def perplexity(model: nn.Module, tokenizer: Any, text: str, seq_len: int = 512, max_windows: int | None = None,
               show_progress: bool = True) -> Perplexity:
    """The perplexity of ``model`` on ``text`` (see the module docstring)."""
    ids = torch.tensor(tokenizer(text, add_special_tokens=False)["input_ids"])
    windows = text_windows(ids, seq_len, max_windows)
    device = next(model.parameters()).device
    means: list[float] = []
    with progress_bar("perplexity", len(windows), show_progress) as bar:
        for window in windows:
            window = window.to(device)
            logits = model(input_ids=window[None], use_cache=False).logits[0, :-1].float()
            means.append(float(F.cross_entropy(logits, window[1:], reduction="mean")))
            bar.advance()
    mean = sum(means) / len(means)
    se = (math.sqrt(sum((m - mean) ** 2 for m in means) / (len(means) - 1) / len(means)) if len(means) > 1
          else float("nan"))
    half = 1.96 * se  # nan with one window: no interval
    return Perplexity(math.exp(mean), math.exp(mean - half), math.exp(mean + half), mean, se, len(windows),
                      seq_len, len(windows) * (seq_len - 1))

"""Token selection maths of ATV-Pruning: drift, the visual budget, rankings (pure functions).

- drift of a token: ``1 - cos(x_in, x_out)`` between its block input and dense block output;
- budget: ``K = floor(alpha * s_bar * n_text)`` (the paper) or ``round(min(1, alpha * s_bar) * n_text)``
  (the released code), capped at the sample's number of visual tokens.
"""

from __future__ import annotations

import math

import torch

K_RULES = ("paper", "released")
MAX_DRIFT = 2.0  # 1 - cos lies in [0, 2]


def token_drift(x_in: torch.Tensor, x_out: torch.Tensor) -> torch.Tensor:
    """``1 - cos(x_in_t, x_out_t)`` for every token t (rows of (..., seq, hidden) tensors), in fp32."""
    a = x_in.reshape(-1, x_in.shape[-1]).float()
    b = x_out.reshape(-1, x_out.shape[-1]).float()
    return 1.0 - torch.nn.functional.cosine_similarity(a, b, dim=-1, eps=1e-12)


def visual_budget(mean_drift: float, n_text: int, n_visual: int, alpha: float, rule: str = "paper") -> int:
    """How many visual tokens of a sample join the pool."""
    if rule == "paper":
        k = math.floor(alpha * mean_drift * n_text)
    elif rule == "released":
        k = round(min(1.0, alpha * mean_drift) * n_text)
    else:
        raise ValueError(f"unknown budget rule {rule!r}; choose from {', '.join(K_RULES)}")
    return max(0, min(int(k), n_visual))


def budget_bound(n_text: int, n_visual: int, alpha: float, rule: str = "paper") -> int:
    """The largest budget any mean drift can give (drift is at most 2): how many ranked visual tokens a
    sample must keep before the block's mean drift is known."""
    return visual_budget(MAX_DRIFT, n_text, n_visual, alpha, rule)


def kept_text_count(n_text: int, ratio: float) -> int:
    """Text tokens kept at a retained-text ratio (rounded half up)."""
    return min(n_text, int(math.floor(ratio * n_text + 0.5)))


def rank_descending(scores: torch.Tensor) -> torch.Tensor:
    """Indices of ``scores`` from highest to lowest; ties keep their original order."""
    return torch.sort(scores, descending=True, stable=True).indices


def random_ranking(n: int, seed: int) -> torch.Tensor:
    """A seeded random order of ``n`` items."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randperm(n, generator=generator)

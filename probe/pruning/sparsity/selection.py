"""Token selection maths of ATV-Pruning: drift, the visual budget, rankings (pure functions).

- drift of a token: ``1 - cos(x_in, x_out)`` between its block input and dense block output;
- budget: ``K = floor(alpha * s_bar * n_text)`` (the paper) or ``round(min(1, alpha * s_bar) * n_text)``
  (the released code), capped at the sample's number of visual tokens.
"""

from __future__ import annotations

import math

import torch

from probe.core.names import K_RULES

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


def attention_from_text(probs: torch.Tensor, text_mask: torch.Tensor, keys: torch.Tensor) -> torch.Tensor:
    """ABS score of each key position in ``keys``: the attention probability that text queries give it,
    averaged over heads and every text query. ``probs`` is (heads, queries, keys)."""
    text_queries = text_mask.nonzero().flatten().to(probs.device)
    return probs[:, text_queries][:, :, keys.to(probs.device)].float().mean(dim=(0, 1))


def mean_cosine_distance(features: torch.Tensor) -> torch.Tensor:
    """For each row, its mean cosine distance ``1 - cos`` to the other rows (0 for a single row)."""
    n = features.shape[0]
    if n < 2:
        return torch.zeros(n)
    unit = torch.nn.functional.normalize(features.float(), dim=-1, eps=1e-12)
    distance = 1.0 - unit @ unit.T
    distance.fill_diagonal_(0.0)
    return distance.sum(dim=1) / (n - 1)


def max_min_diversity_order(features: torch.Tensor, first: int) -> torch.Tensor:
    """Greedy max-min (farthest point) order by cosine distance, starting from row ``first``: each next
    row is the one farthest from its nearest already chosen row (ties: the lowest index). Any prefix of
    the order is that greedy selection of its size."""
    n = features.shape[0]
    if n == 0:
        return torch.zeros(0, dtype=torch.long)
    unit = torch.nn.functional.normalize(features.float(), dim=-1, eps=1e-12)
    distance = 1.0 - unit @ unit.T
    order = [first]
    nearest = distance[first].clone()
    nearest[first] = -float("inf")
    for _ in range(n - 1):
        pick = int(torch.argmax(nearest))  # argmax returns the first maximum
        order.append(pick)
        nearest = torch.minimum(nearest, distance[pick])
        nearest[order] = -float("inf")
    return torch.tensor(order, dtype=torch.long)


def split_total(total: int, weights: list[float], caps: list[int]) -> list[int]:
    """Split ``total`` into integers proportional to ``weights`` (largest remainder method, ties to the
    earlier item), none above its cap; what a capped item cannot take is split again among the others."""
    counts = [0] * len(weights)
    remaining = min(total, sum(caps))
    while remaining > 0:
        open_items = [i for i in range(len(weights)) if counts[i] < caps[i]]
        weight_sum = sum(weights[i] for i in open_items)
        shares = {i: remaining * (weights[i] / weight_sum if weight_sum > 0 else 1.0 / len(open_items))
                  for i in open_items}
        given = 0
        for i in open_items:
            add = min(math.floor(shares[i]), caps[i] - counts[i])
            counts[i] += add
            given += add
        left_by_floors = max(1, round(sum(shares[i] - math.floor(shares[i]) for i in open_items)))
        for i in sorted(open_items, key=lambda i: (-(shares[i] - math.floor(shares[i])), i)):
            if left_by_floors == 0 or given == remaining:
                break
            if counts[i] < caps[i]:
                counts[i] += 1
                given += 1
                left_by_floors -= 1
        remaining -= given
    return counts

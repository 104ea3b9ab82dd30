"""ViTCoP's token-selection maths (arXiv 2601.17818), as pure functions on tensors.

- :func:`vitcop_budgets`: visual tokens after the vision stage (``n_v``), in the shallow layers (``R``)
  and in the deep layers (``D``) for an average retention ``rho`` of the image's patches;
- :func:`vic_labels`: density-peak clustering of visual tokens (features and grid positions);
- :func:`cluster_plan`: per cluster, which tokens stay as they are and which merge into one (a quota per
  cluster by its size, corrected in one pass by the clusters' saliency sums);
- :func:`merge_rows`: the merged token (``upstream``: the group's upper-median token plus the group's
  mean, as the released code does, which doubles the norm; ``mean``: the group's mean);
- :func:`key_saliency` and :func:`deep_keep`: the key-norm saliency (smaller is more important) and the
  deep stage's choice.

Defaults follow the released code; where it is nondeterministic (an unstable sort of ``gamma``) the
sort here is stable.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Budgets:
    n_v: int  # visual tokens entering the decoder (after the vision stage)
    shallow: int  # R: from the shallow layer on
    deep: int  # D: from the deep layer on


def vitcop_budgets(rho: float, vision_keep: float, n_patches: int = 576, layers: int = 32, shallow: int = 2,
                   deep: int = 22, divisor: int = 5) -> Budgets:
    """``n_v = int(vision_keep * n_patches)``, ``R = round((layers * rho / vision_keep - shallow) /
    ((deep - shallow) + (layers - deep) / divisor) * n_v)``, ``D = round(R / divisor)``, so that the mean
    number of visual tokens over the layers is about ``rho * n_patches``."""
    n_v = int(vision_keep * n_patches)
    r = round((layers * rho / vision_keep - shallow) / ((deep - shallow) + (layers - deep) / divisor) * n_v)
    return Budgets(n_v, r, round(r / divisor))


def _distances(x: torch.Tensor) -> torch.Tensor:
    """``sqrt(sum (x_i - x_j)^2 + 1e-8)`` for every pair of rows."""
    return torch.sqrt(((x.unsqueeze(1) - x.unsqueeze(0)) ** 2).sum(-1) + 1e-8)


def vic_labels(features: torch.Tensor, positions: torch.Tensor, percentage: float, dc: float = 8.0,
               spatial_k: float = 0.6) -> torch.Tensor:
    """Cluster labels (n,) of ``features`` (n, d) at grid ``positions`` (n, 2), ``-1`` for tokens left out.

    Density ``rho_i = sum_j exp(-(d_ij / dc)^2)`` (``d_ii = 0``, so the token itself adds 1); ``delta_i`` is
    the distance to the nearest token ``j != i`` with ``rho_j >= rho_i`` within ``spatial_k`` on the grid
    (``+inf``, with token 0 as parent, when there is none); the ``max(1, int(percentage * n))`` highest
    ``gamma = rho * delta`` are the centres, labelled 0, 1, ... in that order; every other token takes its
    parent's label once the parent has one, sweep after sweep; tokens whose chain never reaches a centre
    keep -1.
    """
    n = features.shape[0]
    if n == 0:
        return torch.zeros(0, dtype=torch.long)
    distance = _distances(features).clamp(min=0)
    distance.fill_diagonal_(0)
    rho = torch.exp(-((distance / dc) ** 2)).sum(dim=1)
    denser = rho.unsqueeze(0) >= rho.unsqueeze(1)  # [i, j]: rho_j >= rho_i
    denser.fill_diagonal_(False)
    near = _distances(positions.to(distance.dtype)) <= spatial_k
    allowed = torch.where(denser & near, distance, torch.full_like(distance, float("inf")))
    delta, parent = allowed.min(dim=1)
    gamma = delta * rho
    centres = torch.sort(-gamma, stable=True).indices[: max(1, int(percentage * n))]
    labels = torch.full((n,), -1, dtype=torch.long)
    labels[centres] = torch.arange(centres.numel())
    while True:
        update = (labels == -1) & (labels[parent] != -1)
        if not update.any():
            break
        labels[update] = labels[parent[update]]
    labels[centres] = torch.arange(centres.numel())
    return labels


def grid_positions(rows: int, cols: int) -> torch.Tensor:
    """``(row / rows, col / cols)`` of a raster-ordered grid, (rows * cols, 2)."""
    r, c = torch.meshgrid(torch.arange(rows), torch.arange(cols), indexing="ij")
    return torch.stack([r.flatten() / rows, c.flatten() / cols], dim=1)


@dataclass
class ClusterPlan:
    kept: list[int]  # tokens kept as they are
    groups: list[list[int]]  # tokens merged into one, per group
    representatives: list[int]  # each group's upper-median token: where the merged token goes


def _smallest(values: torch.Tensor, k: int) -> torch.Tensor:
    return torch.sort(values, stable=True).indices[:k]


def quota_shares(sizes: list[int], spare: int, room: int, precision: str = "float32") -> list[int]:
    """``round((size - 1) / spare * room)`` per cluster, half to even: computed in float32 as the released
    code does (``precision="float32"``, where a value such as 7 / 46 * 23 = 3.5 comes out 3.4999998 and
    rounds to 3), or in float64 (``"float64"``, 3.5 rounds to 4)."""
    if not spare:
        return [0] * len(sizes)
    dtype = torch.float32 if precision == "float32" else torch.float64
    values = (torch.tensor(sizes, dtype=dtype) - 1) / torch.tensor(spare, dtype=dtype) * torch.tensor(room, dtype=dtype)
    return [int(v) for v in torch.round(values)]


def cluster_plan(labels: torch.Tensor, saliency: torch.Tensor, budget: int, repair: str = "upstream",
                 precision: str = "float32") -> ClusterPlan:
    """Which of the ``n`` visual tokens stay and which merge, so that ``budget`` (``R``) tokens remain.

    The clusters are the distinct labels, -1 included (one pseudo-cluster). With more clusters ``K`` than
    ``budget``, the ``budget - 1`` clusters of smallest saliency sum each merge into one token and all the
    others into one more. Otherwise each cluster keeps ``quota_c = min(round((|c| - 1) / (n - K) *
    (budget - K)), |c| - 1)`` tokens of smallest saliency (the share computed in ``precision``, see
    :func:`quota_shares`) and merges the rest into one; the quotas' shortfall (or excess) is corrected by
    walking the clusters by saliency sum, ascending (descending), adding (removing) one per cluster that
    has room: once (``repair="upstream"``) or until it is gone (``"exact"``).
    """
    ids = torch.unique(labels)
    members = [(labels == cid).nonzero().flatten() for cid in ids]
    sums = torch.stack([saliency[m].sum() for m in members])
    k = len(members)
    plan = ClusterPlan([], [], [])

    def merge(group: torch.Tensor) -> None:
        ordered = torch.sort(group).values
        plan.groups.append(ordered.tolist())
        plan.representatives.append(int(ordered[len(ordered) // 2]))

    if k > budget:
        chosen = _smallest(sums, budget - 1).tolist()
        for i in chosen:
            merge(members[i])
        rest = [members[i] for i in range(k) if i not in chosen]
        if rest:
            merge(torch.cat(rest))
        return plan
    sizes = [int(m.numel()) for m in members]
    spare = sum(sizes) - k
    quotas = [min(share, s - 1) for share, s in zip(quota_shares(sizes, spare, budget - k, precision), sizes)]
    diff = (budget - k) - sum(quotas)
    while diff != 0:
        before = diff
        for i in torch.argsort(sums, descending=diff < 0, stable=True).tolist():
            if diff > 0 and quotas[i] < sizes[i] - 1:
                quotas[i] += 1
                diff -= 1
            elif diff < 0 and quotas[i] > 0:
                quotas[i] -= 1
                diff += 1
            if diff == 0:
                break
        if repair == "upstream" or diff == before:
            break
    for i, member in enumerate(members):
        keep = _smallest(saliency[member], quotas[i])
        plan.kept.extend(member[keep].tolist())
        rest = torch.ones(member.numel(), dtype=torch.bool)
        rest[keep] = False
        if rest.any():
            merge(member[rest])
    return plan


def merge_rows(hidden: torch.Tensor, plan: ClusterPlan, mode: str = "upstream") -> torch.Tensor:
    """The merged tokens (groups, d) of ``hidden`` (n, d): ``upstream`` adds the representative to the
    group's mean, ``mean`` is the group's mean."""
    rows = []
    for group, rep in zip(plan.groups, plan.representatives):
        mean = hidden[group].mean(dim=0)
        rows.append(hidden[rep] + mean if mode == "upstream" else mean)
    return torch.stack(rows) if rows else hidden[:0]


def key_saliency(keys: torch.Tensor) -> torch.Tensor:
    """``|| mean over heads of k ||_2`` per token, from keys (n, heads, head_dim); smaller is more important.
    RoPE turns every head of a position by the same rotation, so keys before or after it give the same."""
    return keys.float().mean(dim=1).norm(dim=-1)


def deep_keep(saliency: torch.Tensor, count: int) -> torch.Tensor:
    """The deep stage: the ``count`` tokens of smallest saliency, in their order."""
    return torch.sort(_smallest(saliency, count)).values


def mean_tokens_per_layer(budgets: Budgets, layers: int = 32, shallow: int = 2, deep: int = 22) -> float:
    """Visual tokens per decoder layer, averaged over the layers."""
    return (shallow * budgets.n_v + (deep - shallow) * budgets.shallow + (layers - deep) * budgets.deep) / layers


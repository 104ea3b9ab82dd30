"""ViTCoP's selection maths against plain loops written from its description: budgets, density-peak
clustering, per-cluster quotas and merges, key-norm saliency."""

import math

import numpy as np
import pytest
import torch

from probe.pruning.sparsity.vitcop import (
    cluster_plan,
    deep_keep,
    grid_positions,
    key_saliency,
    mean_tokens_per_layer,
    merge_rows,
    quota_shares,
    vic_labels,
    vitcop_budgets,
)


@pytest.mark.parametrize("rho, keep, expected", [
    (1 / 3, 0.5, (288, 253, 51)), (2 / 9, 0.4, (230, 165, 33)), (1 / 9, 0.3, (172, 77, 15)),
    (0.25, 0.5, (288, 183, 37)),
])
def test_budgets_table(rho, keep, expected):
    budgets = vitcop_budgets(rho, keep)
    assert (budgets.n_v, budgets.shallow, budgets.deep) == expected
    assert abs(mean_tokens_per_layer(budgets) - rho * 576) < 1.0


def plain_vic(features, positions, pct, dc=8.0, k=0.6):
    n = len(features)

    def dist(a, b):
        return math.sqrt(sum((x - y) ** 2 for x, y in zip(a, b)) + 1e-8)

    d = [[0.0 if i == j else dist(features[i], features[j]) for j in range(n)] for i in range(n)]
    rho = [sum(math.exp(-((d[i][j] / dc) ** 2)) for j in range(n)) for i in range(n)]
    parent, delta = [], []
    for i in range(n):
        options = [(d[i][j], j) for j in range(n)
                   if j != i and rho[j] >= rho[i] and dist(positions[i], positions[j]) <= k]
        best = min(options, key=lambda o: (o[0], o[1])) if options else (math.inf, 0)
        delta.append(best[0])
        parent.append(best[1])
    gamma = [r * dl for r, dl in zip(rho, delta)]
    centres = sorted(range(n), key=lambda i: (-gamma[i], i))[: max(1, int(pct * n))]
    labels = [-1] * n
    for c, i in enumerate(centres):
        labels[i] = c
    changed = True
    while changed:
        snapshot = list(labels)
        changed = False
        for i in range(n):
            if snapshot[i] == -1 and snapshot[parent[i]] != -1:
                labels[i] = snapshot[parent[i]]
                changed = True
    for c, i in enumerate(centres):
        labels[i] = c
    return labels


@pytest.mark.parametrize("case", ["spread", "far", "single"])
def test_vic_labels_equal_a_plain_loop(case):
    torch.manual_seed(0)
    if case == "single":
        features, positions = torch.randn(1, 4, dtype=torch.float64), torch.zeros(1, 2, dtype=torch.float64)
    else:
        positions = grid_positions(4, 5).double()
        scale = {"spread": 4.0, "far": 100.0}[case]
        features = torch.randn(20, 6, dtype=torch.float64) * scale
    ours = vic_labels(features, positions, 0.15).tolist()
    assert ours == plain_vic(features.tolist(), positions.tolist(), 0.15)
    if case == "far":  # distances far beyond dc: every density ~1, few tokens reach a centre
        assert ours.count(-1) > 0
    # no neighbour within the radius: every delta is +inf and every parent token 0, as upstream
    radius = vic_labels(features, positions, 0.15, spatial_k=0.0).tolist()
    assert radius == plain_vic(features.tolist(), positions.tolist(), 0.15, k=0.0)


def released_share(size, spare, room):
    """``(size - 1) / spare * room`` as the released code computes it: float32 tensors."""
    return float(np.float32(size - 1) / np.float32(spare) * np.float32(room))


def plain_plan(labels, saliency, budget, exact=False, precision="float32"):
    ids = sorted(set(labels))
    members = {c: [i for i, lab in enumerate(labels) if lab == c] for c in ids}
    sums = {c: sum(saliency[i] for i in members[c]) for c in ids}
    kept, groups = [], []
    if len(ids) > budget:
        chosen = sorted(ids, key=lambda c: (sums[c], ids.index(c)))[: budget - 1]
        groups = [members[c] for c in chosen]
        rest = sorted(i for c in ids if c not in chosen for i in members[c])
        if rest:
            groups.append(rest)
    else:
        n, k = len(labels), len(ids)
        share = (lambda size: released_share(size, n - k, budget - k)) if precision == "float32" else (
            lambda size: (size - 1) / (n - k) * (budget - k))
        quotas = {c: min(round(share(len(members[c]))), len(members[c]) - 1) for c in ids}
        diff = budget - k - sum(quotas.values())
        while diff:
            before = diff
            for c in sorted(ids, key=lambda c: (-sums[c] if diff < 0 else sums[c], ids.index(c))):
                if diff > 0 and quotas[c] < len(members[c]) - 1:
                    quotas[c], diff = quotas[c] + 1, diff - 1
                elif diff < 0 and quotas[c] > 0:
                    quotas[c], diff = quotas[c] - 1, diff + 1
                if diff == 0:
                    break
            if not exact or diff == before:
                break
        for c in ids:
            ordered = sorted(members[c], key=lambda i: (saliency[i], members[c].index(i)))
            kept += ordered[: quotas[c]]
            if ordered[quotas[c]:]:
                groups.append(sorted(ordered[quotas[c]:]))
    return sorted(kept), sorted(groups), sorted(g[len(g) // 2] for g in groups)


@pytest.mark.parametrize("budget", [3, 8, 14, 19])
def test_cluster_plan_equals_a_plain_loop(budget):
    torch.manual_seed(1)
    labels = torch.tensor([0, 0, 1, 1, 1, 1, -1, 2, 2, 0, 1, -1, 3, 3, 3, 3, 3, 4, 4, 2])
    saliency = torch.rand(20, dtype=torch.float64)
    for repair in ("upstream", "exact"):
        plan = cluster_plan(labels, saliency, budget, repair=repair)
        kept, groups, reps = plain_plan(labels.tolist(), saliency.tolist(), budget, exact=repair == "exact")
        assert (sorted(plan.kept), sorted(plan.groups), sorted(plan.representatives)) == (kept, groups, reps)
        covered = sorted(plan.kept + [i for g in plan.groups for i in g])
        assert covered == list(range(20))  # every token kept or in exactly one group
        if budget >= 6:
            assert len(plan.kept) + len(plan.groups) == budget


def test_cluster_quotas_are_rounded_from_float32_as_released():
    """n = 59 tokens in K = 13 clusters, R = 36: a cluster of 8 has the share 7 / 46 * 23, exactly 3.5, which
    float32 computes as 3.4999998 (quota 3) and float64 rounds half to even (quota 4): the kept set changes."""
    assert released_share(8, 46, 23) == pytest.approx(3.4999998, abs=1e-7) and round(7 / 46 * 23) == 4
    assert quota_shares([8], 46, 23) == [3] and quota_shares([8], 46, 23, "float64") == [4]
    sizes = [8, 7] + [4] * 11
    labels = torch.tensor([c for c, size in enumerate(sizes) for _ in range(size)])
    assert labels.numel() == 59 and len(sizes) == 13
    saliency = torch.rand(59, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    plans = {}
    for precision in ("float32", "float64"):
        plan = cluster_plan(labels, saliency, 36, precision=precision)
        kept, groups, reps = plain_plan(labels.tolist(), saliency.tolist(), 36, precision=precision)
        assert (sorted(plan.kept), sorted(plan.groups), sorted(plan.representatives)) == (kept, groups, reps)
        plans[precision] = sorted(plan.kept + plan.representatives)
    assert plans["float32"] != plans["float64"]
    assert cluster_plan(labels, saliency, 36).kept == cluster_plan(labels, saliency, 36, precision="float32").kept


def test_merge_rows_and_saliency():
    hidden = torch.arange(12.0).reshape(6, 2)
    plan = cluster_plan(torch.tensor([0, 0, 0, 1, 1, 1]), torch.zeros(6), budget=2)
    assert plan.groups == [[0, 1, 2], [3, 4, 5]] and plan.representatives == [1, 4]
    assert torch.equal(merge_rows(hidden, plan, "upstream"), torch.stack([hidden[1] * 2, hidden[4] * 2]))
    assert torch.equal(merge_rows(hidden, plan, "mean"), torch.stack([hidden[1], hidden[4]]))
    keys = torch.randn(5, 3, 4)
    expected = [math.sqrt(sum((sum(keys[t, h, j].item() for h in range(3)) / 3) ** 2 for j in range(4)))
                for t in range(5)]
    assert key_saliency(keys).tolist() == pytest.approx(expected, rel=1e-5)
    rotation = torch.linalg.qr(torch.randn(4, 4))[0]  # the same rotation on every head keeps the saliency
    assert key_saliency(keys @ rotation.T).tolist() == pytest.approx(expected, rel=1e-5)
    assert deep_keep(torch.tensor([0.5, 0.1, 0.9, 0.2]), 2).tolist() == [1, 3]

"""Pruning maths against plain references written from the formulas."""

import pytest
import torch

from probe.pruning.sparsity import InputStats, magnitude_mask, nm_mask, parse_pattern, rowwise_mask, sparsegpt_prune
from probe.pruning.sparsity.masks import Pattern, SparsityError, check_sparsity
from probe.pruning.sparsity.stats import wanda_scores


def test_stats_accumulate_in_fp32_over_chunks():
    x = torch.randn(50, 6, dtype=torch.float64)
    stats = InputStats.empty(6, "cpu", with_hessian=True)
    stats.add(x[:20].to(torch.bfloat16).float())
    stats.add(x[20:].float())
    assert stats.sq_sum.dtype == torch.float32 and stats.count == 50
    xf = torch.cat([x[:20].to(torch.bfloat16).double(), x[20:].float().double()])
    for j in range(6):
        assert abs(stats.column_norms()[j].item() - sum(xf[t, j] ** 2 for t in range(50)).sqrt().item()) < 1e-4
    torch.testing.assert_close(stats.hessian().double(), 2 * xf.T @ xf / 50, rtol=1e-4, atol=1e-4)


def test_wanda_scores_and_rowwise_mask_against_loops():
    torch.manual_seed(0)
    w, x = torch.randn(5, 12), torch.randn(30, 12)
    stats = InputStats.empty(12, "cpu")
    stats.add(x)
    scores = wanda_scores(w, stats.column_norms())
    for i in range(5):
        for j in range(12):
            norm = sum(x[t, j].item() ** 2 for t in range(30)) ** 0.5
            assert abs(scores[i, j].item() - abs(w[i, j].item()) * norm) < 1e-4
    mask = rowwise_mask(scores, 0.5)
    for i in range(5):
        ranked = sorted(range(12), key=lambda j: scores[i, j].item())
        assert {j for j in range(12) if mask[i, j]} == set(ranked[:6])


@pytest.mark.parametrize("sparsity", [0.0, 0.3, 0.5, 0.6, 0.9])
def test_every_row_has_exactly_the_target_zeros(sparsity):
    mask = rowwise_mask(torch.rand(17, 40), sparsity)
    assert (mask.sum(dim=1) == int(40 * sparsity)).all()


@pytest.mark.parametrize("n,m", [(2, 4), (4, 8), (1, 4), (3, 8)])
def test_nm_mask_keeps_the_n_highest_of_every_m(n, m):
    scores = torch.rand(6, 4 * m)
    mask = nm_mask(scores, n, m)
    for i in range(6):
        for g in range(4):
            group = scores[i, g * m:(g + 1) * m]
            kept = {j for j in range(m) if not mask[i, g * m + j]}
            assert kept == set(torch.topk(group, n).indices.tolist())


def test_magnitude_uses_one_threshold_per_matrix():
    w = torch.randn(8, 16)
    mask = magnitude_mask(w, 0.25)
    assert mask.sum() == 32
    assert w.abs()[mask].max() <= w.abs()[~mask].min()


def test_pattern_and_sparsity_validation():
    assert parse_pattern("2:4") == Pattern(2, 4) and parse_pattern("4:8").sparsity == 0.5
    for bad in ("3:2", "x", "2-4", "0:4"):
        with pytest.raises(SparsityError):
            parse_pattern(bad)
    for bad in (-0.1, 1.0, 1.5):
        with pytest.raises(SparsityError, match=r"\[0, 1\)"):
            check_sparsity(bad, Pattern())
    with pytest.raises(SparsityError, match="2:4"):
        check_sparsity(0.6, Pattern(2, 4))
    with pytest.raises(SparsityError, match="divisible"):
        nm_mask(torch.rand(2, 6), 2, 4)


def _obs_reference(w, h, sparsity, blocksize, percdamp, pattern):
    """Plain OBS: after each column, update every later column at once (no lazy batching)."""
    w = w.double().clone()
    h = h.double().clone()
    h += percdamp * torch.diag(h).mean() * torch.eye(h.shape[0], dtype=h.dtype)
    u = torch.linalg.cholesky(torch.linalg.inv(h), upper=True)
    cols = w.shape[1]
    mask = torch.zeros_like(w, dtype=torch.bool)
    for start in range(0, cols, blocksize):
        end = min(start + blocksize, cols)
        if not pattern.structured:
            sal = [(w[r, c].item() ** 2 / u[c, c].item() ** 2, r * (end - start) + (c - start))
                   for r in range(w.shape[0]) for c in range(start, end)]
            k = int(len(sal) * sparsity)
            for _, flat in sorted(sal)[:k]:
                mask[flat // (end - start), start + flat % (end - start)] = True
        for c in range(start, end):
            if pattern.structured and (c - start) % pattern.m == 0:
                for r in range(w.shape[0]):
                    sal = sorted(range(c, c + pattern.m), key=lambda j: w[r, j].item() ** 2 / u[j, j].item() ** 2)
                    for j in sal[: pattern.m - pattern.n]:
                        mask[r, j] = True
            for r in range(w.shape[0]):
                if mask[r, c]:
                    err = w[r, c].item() / u[c, c].item()
                    for j in range(c, cols):
                        w[r, j] -= err * u[c, j].item()
                    w[r, c] = 0.0
    return w, mask


@pytest.mark.parametrize("pattern", ["unstructured", "2:4"])
def test_sparsegpt_matches_plain_obs_reference(pattern):
    torch.manual_seed(1)
    w, x = torch.randn(6, 16), torch.randn(64, 16)
    h = 2 * x.T @ x / 64
    p = parse_pattern(pattern)
    sparsity = p.sparsity if p.structured else 0.5
    new, mask = sparsegpt_prune(w, h, sparsity, p, blocksize=8, percdamp=0.01)
    ref_w, ref_mask = _obs_reference(w, h, sparsity, 8, 0.01, p)
    assert torch.equal(mask, ref_mask)
    torch.testing.assert_close(new.double(), ref_w, rtol=1e-4, atol=1e-4)
    assert (new[mask] == 0).all()


def test_sparsegpt_reconstructs_better_than_wanda():
    torch.manual_seed(2)
    x = torch.randn(256, 32) @ torch.randn(32, 32)  # correlated inputs
    w = torch.randn(16, 32)
    stats = InputStats.empty(32, "cpu", with_hessian=True)
    stats.add(x)
    wanda_w = w.masked_fill(rowwise_mask(wanda_scores(w, stats.column_norms()), 0.5), 0)
    sgpt_w, mask = sparsegpt_prune(w, stats.hessian(), 0.5, Pattern(), blocksize=128)
    assert mask.float().mean() == 0.5
    err_wanda = torch.linalg.norm(x @ w.T - x @ wanda_w.T)
    err_sgpt = torch.linalg.norm(x @ w.T - x @ sgpt_w.T)
    assert err_sgpt < err_wanda


def test_mask_iou_against_set_arithmetic():
    from probe.pruning.sparsity import mask_iou

    a = torch.rand(7, 9) < 0.5
    b = torch.rand(7, 9) < 0.5
    sa = {(i, j) for i in range(7) for j in range(9) if a[i, j]}
    sb = {(i, j) for i in range(7) for j in range(9) if b[i, j]}
    assert abs(mask_iou(a, b) - len(sa & sb) / len(sa | sb)) < 1e-12
    empty = torch.zeros(2, 2, dtype=torch.bool)
    assert mask_iou(empty, empty) == 1.0 and mask_iou(a, a) == 1.0

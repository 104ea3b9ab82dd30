"""SparseGPT (Frantar & Alistarh, 2023): one-shot pruning with optimal-brain-surgeon weight updates."""

from __future__ import annotations

import torch

from probe.pruning.sparsity.masks import Pattern


def _inverse_hessian_cholesky(hessian: torch.Tensor, percdamp: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Upper Cholesky factor of the dampened inverse Hessian, and the mask of dead input columns."""
    h = hessian.clone()
    dead = torch.diag(h) == 0
    h[dead, dead] = 1.0
    damp = percdamp * torch.mean(torch.diag(h))
    h += damp * torch.eye(h.shape[0], dtype=h.dtype, device=h.device)
    h_inv = torch.cholesky_inverse(torch.linalg.cholesky(h))
    return torch.linalg.cholesky(h_inv, upper=True), dead


def sparsegpt_prune(
    weight: torch.Tensor,
    hessian: torch.Tensor,
    sparsity: float,
    pattern: Pattern = Pattern(),
    blocksize: int = 128,
    percdamp: float = 0.01,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Prune ``weight`` (d_out, d_in) given ``H = 2 X^T X / n``; returns (new weight fp32, pruned mask).

    Columns are processed in blocks of ``blocksize``. Inside a block the unstructured mask prunes the
    ``int(numel * sparsity)`` lowest ``w^2 / [H^-1]_jj^2`` of the (already updated) block; an N:M mask
    is chosen every M columns on the already-updated weights. The pruning error of each column is
    spread over the remaining columns of the block, and the block's error over all later columns
    at once (lazy batch update).
    """
    w = weight.detach().float().clone()
    rows, cols = w.shape
    h_inv, dead = _inverse_hessian_cholesky(hessian.float().to(w.device), percdamp)
    w[:, dead] = 0.0
    mask = torch.zeros_like(w, dtype=torch.bool)

    for start in range(0, cols, blocksize):
        end = min(start + blocksize, cols)
        count = end - start
        w_block = w[:, start:end].clone()
        err_block = torch.zeros_like(w_block)
        h_block = h_inv[start:end, start:end]
        diag = torch.diag(h_block)
        mask_block = torch.zeros_like(w_block, dtype=torch.bool)
        if not pattern.structured:
            saliency = (w_block**2 / diag.unsqueeze(0) ** 2).flatten()
            k = int(saliency.numel() * sparsity)
            if k:
                idx = torch.sort(saliency, stable=True).indices[:k]
                mask_block.view(-1)[idx] = True
        for i in range(count):
            col = w_block[:, i]
            if pattern.structured and i % pattern.m == 0:
                group = w_block[:, i : i + pattern.m] ** 2 / diag[i : i + pattern.m].unsqueeze(0) ** 2
                drop = torch.sort(group, dim=1, stable=True).indices[:, : pattern.m - pattern.n]
                mask_block[:, i : i + pattern.m].scatter_(1, drop, True)
            kept = col.masked_fill(mask_block[:, i], 0.0)
            err = (col - kept) / h_block[i, i]
            w_block[:, i:] -= err.unsqueeze(1) * h_block[i, i:].unsqueeze(0)
            w_block[:, i] = kept
            err_block[:, i] = err
        w[:, start:end] = w_block
        mask[:, start:end] = mask_block
        w[:, end:] -= err_block @ h_inv[start:end, end:]
    return w, mask

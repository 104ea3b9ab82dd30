"""Activation statistics of a linear layer's input, accumulated in fp32 over a token pool."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class InputStats:
    """Running sums over the pooled tokens of one input: ``sum_t x_tj^2`` and optionally ``sum_t x_t x_t^T``."""

    sq_sum: torch.Tensor  # (d_in,) fp32
    count: float = 0
    xtx: torch.Tensor | None = None  # (d_in, d_in) fp32, only when a Hessian is needed

    @classmethod
    def empty(cls, d_in: int, device: torch.device | str, with_hessian: bool = False) -> InputStats:
        xtx = torch.zeros(d_in, d_in, dtype=torch.float32, device=device) if with_hessian else None
        return cls(torch.zeros(d_in, dtype=torch.float32, device=device), 0, xtx)

    def add(self, x: torch.Tensor, weights: torch.Tensor | None = None) -> None:
        """Add the tokens ``x`` (n, d_in), in any dtype; with ``weights`` (n,), token t counts ``w_t`` times
        (``sum_t w_t x_tj^2``, ``sum_t w_t x_t x_t^T``, and ``sum_t w_t`` tokens)."""
        x = x.reshape(-1, x.shape[-1]).to(self.sq_sum.device, torch.float32)
        if weights is None:
            self.sq_sum += (x * x).sum(dim=0)
            self.count += x.shape[0]
            if self.xtx is not None:
                self.xtx.addmm_(x.T, x)
            return
        w = weights.to(x.device, torch.float32).reshape(-1, 1)
        self.sq_sum += (w * x * x).sum(dim=0)
        self.count += float(w.sum())
        if self.xtx is not None:
            self.xtx.addmm_((w * x).T, x)

    def column_norms(self) -> torch.Tensor:
        """``||X_j||_2`` for every input column j."""
        return self.sq_sum.sqrt()

    def hessian(self) -> torch.Tensor:
        """SparseGPT's ``H = 2 X^T X / n`` over the pooled tokens."""
        if self.xtx is None:
            raise ValueError("these statistics were accumulated without a Hessian")
        return 2.0 * self.xtx / max(self.count, 1)


def wanda_scores(weight: torch.Tensor, column_norms: torch.Tensor) -> torch.Tensor:
    """Wanda importance ``|W_ij| * ||X_j||_2`` (fp32)."""
    return weight.abs().float() * column_norms.float().unsqueeze(0).to(weight.device)

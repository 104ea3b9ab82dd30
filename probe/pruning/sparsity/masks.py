"""Which weights to remove, given scores. Masks are boolean with True = pruned (set to zero)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from probe.errors import ProbeError


class SparsityError(ProbeError):
    """An invalid sparsity or sparsity pattern."""


@dataclass(frozen=True)
class Pattern:
    """``unstructured``, or N:M: in every M consecutive input columns of a row, keep N weights."""

    n: int = 0
    m: int = 0

    @property
    def structured(self) -> bool:
        return self.m > 0

    @property
    def sparsity(self) -> float:
        """The fraction pruned that an N:M pattern implies."""
        return 1.0 - self.n / self.m

    def __str__(self) -> str:
        return f"{self.n}:{self.m}" if self.structured else "unstructured"


def parse_pattern(text: str) -> Pattern:
    """``unstructured`` or ``N:M`` (keep N of every M), e.g. ``2:4``, ``4:8``."""
    if text == "unstructured":
        return Pattern()
    try:
        n, m = (int(v) for v in text.split(":"))
    except ValueError:
        raise SparsityError(f"unknown sparsity pattern {text!r}; use 'unstructured' or N:M such as 2:4") from None
    if not 0 < n < m:
        raise SparsityError(f"N:M pattern {text!r} needs 0 < N < M")
    return Pattern(n, m)


def check_sparsity(sparsity: float, pattern: Pattern) -> None:
    """Raise :class:`SparsityError` unless ``sparsity`` is in [0, 1) and agrees with an N:M pattern."""
    if not 0.0 <= sparsity < 1.0:
        raise SparsityError(f"sparsity must be in [0, 1), got {sparsity}")
    if pattern.structured and abs(sparsity - pattern.sparsity) > 1e-9:
        raise SparsityError(
            f"pattern {pattern} keeps {pattern.n} of every {pattern.m} weights, i.e. sparsity "
            f"{pattern.sparsity:g}; got sparsity {sparsity}"
        )


def _lowest(scores: torch.Tensor, k: int, dim: int) -> torch.Tensor:
    """Mask of the k lowest entries along ``dim`` (ties broken by position, deterministically)."""
    mask = torch.zeros_like(scores, dtype=torch.bool)
    if k > 0:
        idx = torch.sort(scores, dim=dim, stable=True).indices.narrow(dim, 0, k)
        mask.scatter_(dim, idx, True)
    return mask


def rowwise_mask(scores: torch.Tensor, sparsity: float) -> torch.Tensor:
    """Prune the ``int(d_in * sparsity)`` lowest scores of every output row."""
    return _lowest(scores, int(scores.shape[1] * sparsity), dim=1)


def nm_mask(scores: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """In every group of ``m`` consecutive columns of a row, prune all but the ``n`` highest scores."""
    rows, cols = scores.shape
    if cols % m:
        raise SparsityError(f"{cols} input columns are not divisible into groups of {m}")
    grouped = scores.reshape(rows, cols // m, m)
    return _lowest(grouped, m - n, dim=2).reshape(rows, cols)


def matrix_mask(scores: torch.Tensor, sparsity: float) -> torch.Tensor:
    """Prune the ``int(numel * sparsity)`` lowest scores of the whole matrix (one threshold per matrix)."""
    return _lowest(scores.flatten(), int(scores.numel() * sparsity), dim=0).reshape(scores.shape)


def magnitude_mask(weight: torch.Tensor, sparsity: float, pattern: Pattern = Pattern()) -> torch.Tensor:
    """Magnitude pruning: one threshold per matrix (or N:M groups on ``|W|``)."""
    scores = weight.abs().float()
    if pattern.structured:
        return nm_mask(scores, pattern.n, pattern.m)
    return matrix_mask(scores, sparsity)


def mask_from_scores(scores: torch.Tensor, sparsity: float, pattern: Pattern) -> torch.Tensor:
    """Row-wise unstructured or N:M mask, the comparison group of Wanda-style scores."""
    if pattern.structured:
        return nm_mask(scores, pattern.n, pattern.m)
    return rowwise_mask(scores, sparsity)


def mask_iou(a: torch.Tensor, b: torch.Tensor) -> float:
    """Intersection over union of two pruned-weight masks (the paper's Fig. 1b); 1.0 if both are empty."""
    union = (a | b).sum().item()
    return 1.0 if union == 0 else (a & b).sum().item() / union

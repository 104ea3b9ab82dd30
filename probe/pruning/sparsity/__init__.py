"""Pure tensor maths of pruning: statistics, scores, masks, SparseGPT. No model ever enters here."""

from probe.pruning.sparsity.masks import (
    Pattern,
    SparsityError,
    magnitude_mask,
    mask_iou,
    nm_mask,
    parse_pattern,
    rowwise_mask,
)
from probe.pruning.sparsity.sparsegpt import sparsegpt_prune
from probe.pruning.sparsity.stats import InputStats, wanda_scores

__all__ = [
    "InputStats",
    "Pattern",
    "SparsityError",
    "magnitude_mask",
    "mask_iou",
    "nm_mask",
    "parse_pattern",
    "rowwise_mask",
    "sparsegpt_prune",
    "wanda_scores",
]

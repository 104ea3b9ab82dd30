"""ViTCoP (arXiv 2601.17818, github chaser682/ViTCoP), its decoder stages.

- Clusters: density-peak clustering (:func:`probe.sparsity.vitcop.vic_labels`) of the visual tokens'
  embeddings as they enter the decoder, on their image grid (a square grid when their count is a square,
  else one row).
- Stage II, before layer ``shallow``: the key-norm saliency of layer ``shallow - 1`` (smaller is more
  important); each cluster keeps its quota of most salient tokens and merges the rest into one token at
  the group's upper-median position (:func:`probe.sparsity.vitcop.cluster_plan`), leaving ``R`` visual tokens.
- Stage III, before layer ``deep``: the ``D`` most salient of them (saliency of layer ``deep - 1``) stay.

Budgets come from ``rho``, the average share of the image's tokens kept per layer
(:func:`probe.sparsity.vitcop.vitcop_budgets` with ``vision_keep = 1``, since the vision-tower stage does
not run here: it needs a ViT with a CLS token and is not part of this runtime; records say
``stages: II-III``). Defaults reproduce the released code; its bugs are fixed by options:
``deep_positions="keep"`` (upstream renumbers positions after Stage III, ``compact``), ``merge="mean"``
(upstream adds the representative to the group's mean, doubling the norm), ``repair="exact"`` (upstream
corrects the quotas in one pass), ``unlabelled="own"`` (upstream merges every token the clustering left
unlabelled into one cluster).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from probe.sparsity.vitcop import cluster_plan, deep_keep, grid_positions, key_saliency, vic_labels, vitcop_budgets
from probe.token_pruning.base import KEYS, Selection, StageView, TokenPruner, TokenPruningError, with_text

MROPE_FAMILIES = ("qwen2_vl", "qwen2_5_vl")


@dataclass(frozen=True)
class VitcopSettings:
    rho: float = 0.25  # average share of the visual tokens present per decoder layer
    vision_keep: float = 0.5  # the vision-tower stage's share (kept for the presets; that stage does not run here)
    cluster_pct: float = 0.18  # cluster centres as a share of the visual tokens
    shallow: int = 2
    deep: int = 22
    deep_divisor: int = 5
    dc: float = 8.0  # density cutoff of the clustering
    spatial_k: float = 0.6  # grid radius within which a token's denser parent may lie
    formula_layers: int = 0  # layers in the budget formula (0: the model's; the released code uses 32)
    merge: str = "upstream"  # upstream (representative + mean) or mean
    deep_positions: str = "compact"  # compact (upstream renumbering after Stage III) or keep
    repair: str = "upstream"  # upstream (one pass) or exact
    unlabelled: str = "cluster"  # cluster (upstream: one pseudo-cluster) or own (each its own cluster)

    def __post_init__(self) -> None:
        choices = {"merge": ("upstream", "mean"), "deep_positions": ("compact", "keep"),
                   "repair": ("upstream", "exact"), "unlabelled": ("cluster", "own")}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise TokenPruningError(f"ViTCoP {name} must be one of {', '.join(allowed)}, got "
                                        f"{getattr(self, name)!r}")
        if not 0 < self.rho <= 1 or not 0 < self.cluster_pct <= 1:
            raise TokenPruningError("ViTCoP rho and cluster_pct must lie in (0, 1]")
        if not 0 < self.shallow < self.deep:
            raise TokenPruningError(f"ViTCoP needs 0 < shallow < deep, got {self.shallow} and {self.deep}")


class VitcopPruner(TokenPruner):
    name = "vitcop"
    Settings = VitcopSettings

    def stage_layers(self) -> list[int]:
        return [self.settings.shallow, self.settings.deep]

    def observe(self, layer: int) -> set[str]:
        return {KEYS} if layer in (self.settings.shallow - 1, self.settings.deep - 1) else set()

    def check(self, n_layers: int, model_type: str) -> None:
        super().check(n_layers, model_type)
        if self.settings.deep_positions == "compact" and model_type in MROPE_FAMILIES:
            raise TokenPruningError(f"ViTCoP's compact deep positions need 1-D rotary positions; {model_type} uses "
                                    "M-RoPE: use deep_positions=keep")
        self._layers = self.settings.formula_layers or n_layers

    def budgets(self, n_visual: int) -> tuple[int, int]:
        """(R, D) for a request with ``n_visual`` visual tokens."""
        s = self.settings
        budgets = vitcop_budgets(s.rho, 1.0, n_visual, getattr(self, "_layers", 32), s.shallow, s.deep,
                                 s.deep_divisor)
        r, d = min(budgets.shallow, n_visual), min(budgets.deep, n_visual)
        if r < 1 or d < 1:
            raise TokenPruningError(f"ViTCoP's budgets leave R={r}, D={d} of {n_visual} visual tokens; raise rho")
        return r, d

    def labels(self, view: StageView, visual: torch.Tensor) -> torch.Tensor:
        """Cluster labels of the visual positions ``visual`` from their embeddings."""
        n = int(visual.numel())
        side = math.isqrt(n)
        positions = grid_positions(side, side) if side * side == n else torch.stack(
            [torch.arange(n) / n, torch.zeros(n)], dim=1)
        features = view.first_hidden[visual.to(view.first_hidden.device)]
        labels = vic_labels(features, positions.to(features.device, features.dtype), self.settings.cluster_pct,
                            self.settings.dc, self.settings.spatial_k).cpu()
        if self.settings.unlabelled == "own":
            loose = (labels == -1).nonzero().flatten()
            labels[loose] = int(labels.max()) + 1 + torch.arange(loose.numel())
        return labels

    def select(self, view: StageView) -> Selection:
        local = view.visual[view.alive].nonzero().flatten()
        visual = view.alive[local]
        saliency = key_saliency(view.observed[KEYS][local.to(view.observed[KEYS].device)]).cpu()
        shallow_budget, deep_budget = self.budgets(int(view.visual.sum()))
        if view.layer == self.settings.shallow:
            labels = self.labels(view, visual)
            plan = cluster_plan(labels, saliency, shallow_budget, self.settings.repair)
            cpu = visual.cpu()
            merged = {int(cpu[rep]): cpu[group].tolist() for rep, group in zip(plan.representatives, plan.groups)}
            chosen = torch.tensor(sorted(plan.kept + plan.representatives), dtype=torch.long)
            record = {"stage": "II", "clusters": int(torch.unique(labels).numel()),
                      "unlabelled": int((labels == -1).sum()), "merged_groups": len(plan.groups)}
            return Selection(with_text(view, visual[chosen.to(visual.device)]), merged, self.settings.merge,
                             record=record)
        chosen = deep_keep(saliency, deep_budget)
        return Selection(with_text(view, visual[chosen.to(visual.device)]),
                         compact=self.settings.deep_positions == "compact", record={"stage": "III"})

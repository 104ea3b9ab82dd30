"""ViTCoP (arXiv 2601.17818, github chaser682/ViTCoP): vision-tower and decoder stages.

- Stage I, in the vision tower (a CLIP tower with a CLS token, ``stage_one="auto"``): the attention the
  CLS query gives every patch at the feature layer (summed over heads) keeps the ``int(vision_keep * N)``
  most attended patches in raster order, so the decoder sees only them (the request's image placeholders
  are cut to as many); the clusters (density-peak clustering, :func:`probe.pruning.sparsity.vitcop.vic_labels`)
  come from that layer's keys of the kept patches on the patch grid, as upstream (LLaVA-1.5). On
  LLaVA-NeXT, an extension without an upstream reference, every crop's patches are ranked by their crop's
  CLS attention across the whole packed image, row-end tokens always stay and form a cluster of their own,
  and the budgets scale with the tokens entering the decoder. Elsewhere Stage I does not run (records say
  so) and the clusters come from the visual tokens' embeddings as they enter the decoder, on a square grid
  when their count is a square, else one row.
- Stage II, before layer ``shallow``: the key-norm saliency of layer ``shallow - 1`` (smaller is more
  important); each cluster keeps its quota of most salient tokens and merges the rest into one token at
  the group's upper-median position (:func:`probe.pruning.sparsity.vitcop.cluster_plan`), leaving ``R`` visual tokens.
- Stage III, before layer ``deep``: the ``D`` most salient of them (saliency of layer ``deep - 1``) stay.

Budgets come from ``rho``, the average share of the image's tokens kept per layer
(:func:`probe.pruning.sparsity.vitcop.vitcop_budgets`; without Stage I, ``vision_keep = 1``). Defaults reproduce
the released code; its bugs are fixed by options: ``deep_positions="keep"`` (upstream renumbers positions
after Stage III, ``compact``), ``merge="mean"`` (upstream adds the representative to the group's mean,
doubling the norm), ``repair="exact"`` (upstream corrects the quotas in one pass), ``unlabelled="own"``
(upstream merges every token the clustering left unlabelled into one cluster, one per image), after
Stage I as without it. The cluster quotas are computed in float32 and rounded, as upstream
(``quotas="float64"`` rounds the exact value instead: where it sits at .5 the quota, and so the kept
set, can differ by one). With several images (LLaVA-1.5's Stage I), each image's labels are offset by
the image's index times its token count, -1 included, as upstream: clusters never span two images, and
each image's unlabelled tokens form a pseudo-cluster of their own.
"""

from __future__ import annotations

import contextlib
import functools
import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from probe.models.base import Adapter
from probe.pruning.sparsity.vitcop import (
    Budgets,
    cluster_plan,
    deep_keep,
    grid_positions,
    key_saliency,
    vic_labels,
    vitcop_budgets,
)
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
    unlabelled: str = "cluster"  # cluster (upstream: one pseudo-cluster per image) or own (each its own cluster)
    stage_one: str = "auto"  # auto: the vision-tower stage where the model allows it (LLaVA-1.5), or off
    quotas: str = "float32"  # precision of the cluster quotas' shares: float32 (upstream) or float64

    def __post_init__(self) -> None:
        choices = {"merge": ("upstream", "mean"), "deep_positions": ("compact", "keep"),
                   "repair": ("upstream", "exact"), "unlabelled": ("cluster", "own"), "stage_one": ("auto", "off"),
                   "quotas": ("float32", "float64")}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise TokenPruningError(f"ViTCoP {name} must be one of {', '.join(allowed)}, got "
                                        f"{getattr(self, name)!r}")
        if not 0 < self.rho <= 1 or not 0 < self.cluster_pct <= 1 or not 0 < self.vision_keep <= 1:
            raise TokenPruningError("ViTCoP rho, vision_keep and cluster_pct must lie in (0, 1]")
        if not 0 < self.shallow < self.deep:
            raise TokenPruningError(f"ViTCoP needs 0 < shallow < deep, got {self.shallow} and {self.deep}")


def cls_saliency(queries: torch.Tensor, keys: torch.Tensor, scale: float) -> torch.Tensor:
    """Attention the CLS query (row 0) gives every patch (rows 1..), summed over heads, from one image's
    query and key projections (1 + N, heads, head_dim)."""
    logits = torch.einsum("hd,nhd->hn", queries[0].float(), keys.float()) * scale
    return logits.softmax(dim=-1)[:, 1:].sum(dim=0)


STAGE_ONE_FAMILIES = ("llava", "llava_next")


def stage_one_layer(model: nn.Module) -> int | None:
    """The vision encoder layer whose output the projector receives, or None where Stage I cannot run (not a
    LLaVA-1.5 / LLaVA-NeXT CLIP tower with a CLS token and one feature layer)."""
    config = model.config
    tower = getattr(getattr(model, "model", model), "vision_tower", None)
    layer = getattr(config, "vision_feature_layer", None)
    if (config.model_type not in STAGE_ONE_FAMILIES
            or getattr(config, "vision_feature_select_strategy", "") != "default"
            or not isinstance(layer, int) or not hasattr(getattr(tower, "encoder", None), "layers")):
        return None
    return len(tower.encoder.layers) + layer if layer < 0 else layer - 1


def image_labels(found: torch.Tensor, image: int, per_image: int) -> torch.Tensor:
    """The cluster labels of image ``image`` (``found``: its own, -1 for tokens left unlabelled) in a request
    of several images, each ``per_image`` tokens: every label, -1 included, is offset by ``image *
    per_image`` as the released code does, so each image's unlabelled tokens form a pseudo-cluster of their
    own (label ``image * per_image - 1``; the first image's stays -1) and no cluster spans two images."""
    return found + image * per_image


def own_clusters(labels: torch.Tensor, loose: torch.Tensor) -> torch.Tensor:
    """``labels`` with every token of the mask ``loose`` (those the clustering left unlabelled) in a cluster
    of its own."""
    out = labels.clone()
    where = loose.nonzero().flatten()
    out[where] = int(labels.max()) + 1 + torch.arange(where.numel())
    return out


class VitcopPruner(TokenPruner):
    name = "vitcop"
    Settings = VitcopSettings

    def __init__(self, settings: VitcopSettings | None = None) -> None:
        super().__init__(settings)
        self._vision_layer: int | None = None
        self._patches = 0
        self._labels: torch.Tensor | None = None  # Stage I's cluster labels of the current request
        self._loose: torch.Tensor | None = None  # and which of its tokens the clustering left unlabelled
        self._cached: tuple[Any, Any] | None = None  # the last image features Stage I computed, by pixel tensor
        self._packed = False  # LLaVA-NeXT: features packed from several crops, with newline tokens

    @property
    def stage_one(self) -> bool:
        return self._vision_layer is not None

    @contextlib.contextmanager
    def attached(self, model: nn.Module, adapter: Adapter) -> Iterator[None]:
        """Stage I on ``model``'s image features, where the model allows it."""
        layer = stage_one_layer(model) if self.settings.stage_one == "auto" else None
        self._vision_layer = layer
        if layer is None:
            yield
            return
        vision = model.config.vision_config
        self._patches = (vision.image_size // vision.patch_size) ** 2
        self._packed = model.config.model_type == "llava_next"
        owner = adapter.image_features_owner(model)
        attention = owner.vision_tower.encoder.layers[layer].self_attn
        compute = owner.get_image_features

        @functools.wraps(compute)
        def stage_one(*args: Any, **kwargs: Any) -> Any:
            pixels = kwargs.get("pixel_values", args[0] if args else None)
            key = ((pixels.data_ptr(), tuple(pixels.shape), float(pixels.float().sum()))
                   if isinstance(pixels, torch.Tensor) else None)
            if self._cached is not None and self._cached[0] == key:
                return self._cached[1]
            seen: dict[str, torch.Tensor] = {}
            handles = [attention.q_proj.register_forward_hook(lambda m, i, o: seen.update(q=o)),
                       attention.k_proj.register_forward_hook(lambda m, i, o: seen.update(k=o))]
            try:
                out = compute(*args, **kwargs)
            finally:
                for handle in handles:
                    handle.remove()
            if self._packed:
                sizes = kwargs.get("image_sizes", args[1] if len(args) > 1 else None)
                out = self._select_packed(out, seen, attention, owner, sizes, model.config)
            else:
                out = self._select_patches(out, seen, attention)
            self._cached = (key, out)
            return out

        owner.get_image_features = stage_one
        self._owner = owner
        try:
            yield
        finally:
            del owner.get_image_features
            self._vision_layer = None
            self._cached = None

    def _select_patches(self, out: Any, seen: dict[str, torch.Tensor], attention: nn.Module) -> Any:
        heads, head_dim = attention.num_heads, attention.head_dim
        keep_count = int(self.settings.vision_keep * self._patches)
        side = math.isqrt(self._patches)
        features, labels, loose = [], [], []
        if "q" not in seen:
            raise TokenPruningError("ViTCoP's vision stage needs the vision tower to run; serve it without the "
                                    "vision feature cache")
        for image, rows in enumerate(out.pooler_output):
            q = seen["q"][image].reshape(-1, heads, head_dim)
            k = seen["k"][image].reshape(-1, heads, head_dim)
            saliency = cls_saliency(q, k, attention.scale)
            kept = torch.sort(torch.topk(saliency, keep_count).indices).values
            features.append(rows[kept.to(rows.device)])
            keys = seen["k"][image][1:][kept]
            positions = grid_positions(side, side)[kept.cpu()].to(keys.device, keys.dtype)
            found = vic_labels(keys, positions, self.settings.cluster_pct, self.settings.dc,
                               self.settings.spatial_k).cpu()
            labels.append(image_labels(found, image, keep_count))
            loose.append(found == -1)
        out.pooler_output = features
        self._labels, self._loose = torch.cat(labels), torch.cat(loose)
        return out

    def _select_packed(self, out: Any, seen: dict[str, torch.Tensor], attention: nn.Module, owner: nn.Module,
                       image_sizes: torch.Tensor, config: Any) -> Any:
        """LLaVA-NeXT (an extension: the released code runs LLaVA-1.5 only): every crop's patches get their
        crop's CLS attention, grid coordinates over the whole image and keys; packing them exactly as the
        model packs its features lines them up with the packed tokens; the ``int(vision_keep * P)`` most
        attended of the P patch tokens stay, and every row-end (newline) token."""
        if "q" not in seen:
            raise TokenPruningError("ViTCoP's vision stage needs the vision tower to run; serve it without the "
                                    "vision feature cache")
        from transformers.models.llava_next.modeling_llava_next import get_anyres_image_grid_shape

        if len(out.pooler_output) != 1:
            raise TokenPruningError("ViTCoP's vision stage on LLaVA-NeXT serves one image per request")
        heads, head_dim = attention.num_heads, attention.head_dim
        side = math.isqrt(self._patches)
        crops = seen["q"].shape[0]
        grid_h, grid_w = get_anyres_image_grid_shape(image_sizes[0].tolist(), config.image_grid_pinpoints,
                                                     config.vision_config.image_size)
        r, c = torch.meshgrid(torch.arange(side), torch.arange(side), indexing="ij")
        r, c = r.flatten().float(), c.flatten().float()
        columns = []
        for crop in range(crops):
            q = seen["q"][crop].reshape(-1, heads, head_dim)
            k = seen["k"][crop].reshape(-1, heads, head_dim)
            saliency = cls_saliency(q, k, attention.scale).cpu()
            if crop == 0:
                rows, cols = r / side, c / side
            else:
                rows = ((crop - 1) // grid_w * side + r) / (grid_h * side)
                cols = ((crop - 1) % grid_w * side + c) / (grid_w * side)
            keys = seen["k"][crop][1:].float().cpu()
            columns.append(torch.cat([saliency[:, None], torch.ones(side * side, 1), rows[:, None], cols[:, None],
                                      keys], dim=1))
        side_info = torch.stack(columns)
        newline = torch.zeros(side_info.shape[-1])
        newline[2:4] = -1.0
        packed_info = owner.pack_image_features([side_info], image_sizes.cpu(), "default", image_newline=newline)[0][0]
        features = out.pooler_output[0]
        if packed_info.shape[0] != features.shape[0]:
            raise TokenPruningError("ViTCoP could not line the packed LLaVA-NeXT features up with their crops")
        patch = packed_info[:, 1] > 0.5
        positions = patch.nonzero().flatten()
        count = int(self.settings.vision_keep * positions.numel())
        top = positions[torch.topk(packed_info[positions, 0], count).indices]
        keep = ~patch
        keep[top] = True
        out.pooler_output = [features[keep.to(features.device)]]
        kept_info = packed_info[keep]
        kept_patch = kept_info[:, 1] > 0.5
        labels = torch.full((kept_info.shape[0],), -1, dtype=torch.long)
        labels[kept_patch] = vic_labels(kept_info[kept_patch, 4:], kept_info[kept_patch, 2:4],
                                        self.settings.cluster_pct, self.settings.dc, self.settings.spatial_k)
        self._loose = labels == -1
        labels[~kept_patch] = int(labels.max()) + 1  # the row-end tokens: one cluster of their own
        self._labels = labels
        self._entering = int(keep.sum())
        return out

    def prepare_inputs(self, inputs: dict[str, Any], config: Any) -> dict[str, Any]:
        """With Stage I: each image's run of placeholders cut to the tokens it keeps."""
        if not self.stage_one or "input_ids" not in inputs:
            return inputs
        self._cached = None  # a new request: never the features of an earlier one
        if self._packed:  # how many stay depends on the image: run the vision stage now (its result is reused)
            self._owner.get_image_features(pixel_values=inputs["pixel_values"], image_sizes=inputs["image_sizes"])
            per_image = self._entering
        else:
            per_image = int(self.settings.vision_keep * self._patches)
        ids = inputs["input_ids"][0]
        image = ids == config.image_token_id
        keep = torch.ones_like(image)
        run_start = None
        for position in range(ids.numel() + 1):
            inside = position < ids.numel() and bool(image[position])
            if inside and run_start is None:
                run_start = position
            elif not inside and run_start is not None:
                keep[run_start + per_image:position] = False
                run_start = None
        out = dict(inputs)
        for name in ("input_ids", "attention_mask"):
            if isinstance(inputs.get(name), torch.Tensor) and inputs[name].shape[-1] == ids.numel():
                out[name] = inputs[name][:, keep]
        return out

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
        """(R, D) for a request with ``n_visual`` visual tokens entering the decoder."""
        s = self.settings
        layers = getattr(self, "_layers", 32)
        if self.stage_one and self._packed:  # LLaVA-NeXT: the tokens entering scale the budgets
            r = round((layers * s.rho / s.vision_keep - s.shallow) / ((s.deep - s.shallow)
                                                                      + (layers - s.deep) / s.deep_divisor) * n_visual)
            budgets = Budgets(n_visual, r, round(r / s.deep_divisor))
        elif self.stage_one:  # n_visual = int(vision_keep * N) for each image
            per_image = int(s.vision_keep * self._patches)
            if n_visual % per_image:
                raise TokenPruningError(f"ViTCoP's vision stage keeps {per_image} tokens per image but the request "
                                        f"has {n_visual}: its inputs were not prepared (TokenPruningRuntime.prepare)")
            images = n_visual // per_image
            budgets = vitcop_budgets(s.rho, s.vision_keep, self._patches, layers, s.shallow, s.deep, s.deep_divisor)
            budgets = type(budgets)(budgets.n_v * images, budgets.shallow * images, budgets.deep * images)
        else:
            budgets = vitcop_budgets(s.rho, 1.0, n_visual, layers, s.shallow, s.deep, s.deep_divisor)
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
        return vic_labels(features, positions.to(features.device, features.dtype), self.settings.cluster_pct,
                          self.settings.dc, self.settings.spatial_k).cpu()

    def select(self, view: StageView) -> Selection:
        local = view.visual[view.alive].nonzero().flatten()
        visual = view.alive[local]
        saliency = key_saliency(view.observed[KEYS][local.to(view.observed[KEYS].device)]).cpu()
        shallow_budget, deep_budget = self.budgets(int(view.visual.sum()))
        if view.layer == self.settings.shallow:
            if self.stage_one and self._labels is not None:
                labels, loose = self._labels, self._loose
            else:
                labels = self.labels(view, visual)
                loose = labels == -1
            if self.settings.unlabelled == "own":
                labels = own_clusters(labels, loose)
            plan = cluster_plan(labels, saliency, shallow_budget, self.settings.repair, self.settings.quotas)
            cpu = visual.cpu()
            merged = {int(cpu[rep]): cpu[group].tolist() for rep, group in zip(plan.representatives, plan.groups)}
            chosen = torch.tensor(sorted(plan.kept + plan.representatives), dtype=torch.long)
            record = {"stage": "II", "after_stage_one": self.stage_one, "clusters": int(torch.unique(labels).numel()),
                      "unlabelled": int(loose.sum()), "merged_groups": len(plan.groups)}
            return Selection(with_text(view, visual[chosen.to(visual.device)]), merged=merged,
                             merge=self.settings.merge, record=record)
        chosen = deep_keep(saliency, deep_budget)
        return Selection(with_text(view, visual[chosen.to(visual.device)]),
                         compact=self.settings.deep_positions == "compact", record={"stage": "III"})

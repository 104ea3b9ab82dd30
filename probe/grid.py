"""The Table 1 sensitivity grid: prune one MoT pathway at a time, evaluate every cell, resume safely.

Cells: the dense model, then pathway x pool x sparsity, each pruned with Wanda statistics from its
pool while the other pathway stays dense. Each finished cell appends its rows (one per task) to the
results CSV through an atomic rewrite, so a killed run loses at most the cell in progress and a rerun
skips finished cells. Masks of the ``text``- and ``visual``-pool cells of a pathway are kept (packed)
so the IoU between them is recorded per linear (the paper's Fig. 1b).
"""

from __future__ import annotations

import copy
import io
import itertools
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import yaml

from probe.calibrate import capture_calibration
from probe.data.calibration import CalibrationSpec, select
from probe.engine import PruneConfig
from probe.evaluation.harness import evaluate, primary_rows, resolve_tasks
from probe.loading import LoadedModel, load_model
from probe.manifest import package_versions, write_json_atomic, write_text_atomic
from probe.mot import PATHWAYS, prune_pathway, to_mot
from probe.pools import POOLS
from probe.sparsity.masks import mask_iou
from probe.vision_cache import VisionFeatureCache

QUICK = {"nsamples": 8, "limit": 5, "sparsities": [0.5]}


class GridConfigError(ValueError):
    """An invalid grid configuration."""


@dataclass
class GridConfig:
    """Validated settings of a sensitivity grid."""

    model: str = "reference"
    tasks: str = "offline"
    limit: int | None = 20  # items per task and cell; None for whole test splits
    sparsities: list[float] = field(default_factory=lambda: [0.5, 0.6])
    pathways: list[str] = field(default_factory=lambda: list(PATHWAYS))
    pools: list[str] = field(default_factory=lambda: list(POOLS))
    method: str = "wanda"
    calib: str = "bundled"
    image_root: str | None = None
    calib_subset: str | None = None
    nsamples: int = 128
    seed: int = 0
    replicate_o_proj: bool = False
    dtype: str = "float32"
    device: str = "cpu"
    max_pixels: int | None = None
    out: str = "results/grid/reference"

    def __post_init__(self) -> None:
        for pathway in self.pathways:
            if pathway not in PATHWAYS:
                raise GridConfigError(f"unknown pathway {pathway!r}; choose from {', '.join(PATHWAYS)}")
        for sparsity in self.sparsities:
            PruneConfig(method=self.method, sparsity=sparsity)  # validates method and sparsity
        for pool in self.pools:
            PruneConfig(pool=pool)

    @classmethod
    def from_yaml(cls, path: Path, **overrides) -> GridConfig:
        """Settings from a YAML mapping; ``overrides`` (not None) win."""
        if not path.is_file():
            raise GridConfigError(f"grid config not found: {path}")
        data = yaml.safe_load(path.read_text()) or {}
        unknown = set(data) - set(cls.__dataclass_fields__)
        if unknown:
            raise GridConfigError(f"unknown grid setting(s) {', '.join(sorted(unknown))} in {path}")
        data.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**data)

    def calibration(self) -> CalibrationSpec:
        return CalibrationSpec.parse(self.calib, image_root=self.image_root, subset=self.calib_subset,
                                     nsamples=self.nsamples, seed=self.seed)


@dataclass(frozen=True)
class Cell:
    """One grid cell; the dense cell has no pathway."""

    pathway: str = "dense"
    pool: str = "-"
    sparsity: float = 0.0

    @property
    def cell_id(self) -> str:
        return "dense" if self.pathway == "dense" else f"{self.pathway}/{self.pool}/{self.sparsity:g}"


def cells(config: GridConfig) -> list[Cell]:
    """The dense cell first, then pathway x pool x sparsity."""
    pruned = [Cell(p, q, s) for p, q, s in itertools.product(config.pathways, config.pools, config.sparsities)]
    return [Cell(), *pruned]


def _read_csv(path: Path) -> pd.DataFrame:
    return pd.read_csv(path) if path.is_file() else pd.DataFrame()


def _append_rows(path: Path, rows: list[dict]) -> None:
    frame = pd.concat([_read_csv(path), pd.DataFrame(rows)], ignore_index=True)
    write_text_atomic(path, frame.to_csv(index=False))


def _save_masks(path: Path, masks: dict[str, torch.Tensor]) -> None:
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **{k: np.packbits(v.numpy()) for k, v in masks.items()},
                        **{f"{k}.shape": np.array(v.shape) for k, v in masks.items()})
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.npz")
    tmp.write_bytes(buffer.getvalue())
    tmp.replace(path)


def _load_masks(path: Path) -> dict[str, torch.Tensor]:
    data = np.load(path)
    names = [k for k in data.files if not k.endswith(".shape")]
    out = {}
    for name in names:
        shape = tuple(data[f"{name}.shape"])
        out[name] = torch.from_numpy(np.unpackbits(data[name])[: int(np.prod(shape))].reshape(shape).astype(bool))
    return out


def run_grid(config: GridConfig, show_progress: bool = True) -> pd.DataFrame:
    """Run (or resume) the grid; returns the results frame (one row per cell and task)."""
    out = Path(config.out)
    results_path = out / "results.csv"
    tasks = resolve_tasks(config.tasks)
    spec = config.calibration()
    selected = select(spec)  # all data checks before any model work
    done = set(_read_csv(results_path).get("cell", pd.Series(dtype=str)))
    todo = [c for c in cells(config) if c.cell_id not in done]
    write_json_atomic(out / "manifest.json", {"config": asdict(config), "tasks": tasks,
                                              "calibration_ids": [s.sample_id for s in selected.samples],
                                              "versions": package_versions()})
    if not todo:
        return _read_csv(results_path)

    from probe.loading import parse_dtype

    dtype = parse_dtype(config.dtype)
    cache = VisionFeatureCache()
    base = load_model(config.model, dtype=dtype, device=config.device, max_pixels=config.max_pixels)
    # pruning changes only decoder blocks, so every cell starts from the same captured block-0 inputs
    captured = capture_calibration(base, selected, store_device=config.device, show_progress=show_progress,
                                   vision_cache=cache)
    for cell in todo:
        model = copy.deepcopy(base.model)
        masks: dict[str, torch.Tensor] = {}
        if cell.pathway != "dense":
            probe = to_mot(model, base.adapter, config.replicate_o_proj)
            prune = PruneConfig(method=config.method, sparsity=cell.sparsity, pool=cell.pool)
            prune_pathway(probe, copy.deepcopy(captured), prune, cell.pathway, show_progress=show_progress)
            for b, layer in enumerate(base.adapter.decoder_layers(model)):
                for name, routed in probe.routed_linears(layer).items():
                    masks[f"layers.{b}.{name}"] = (getattr(routed, cell.pathway).weight == 0).cpu()
            _save_masks(out / "masks" / f"{cell.pathway}-{cell.pool}-{cell.sparsity:g}.npz", masks)
        scores = evaluate(LoadedModel(model, base.processor, base.adapter, base.ref), tasks, config.limit,
                          vision_cache=cache, show_progress=show_progress, seed=config.seed)
        settings = {"cell": cell.cell_id, "pathway": cell.pathway, "pool": cell.pool, "sparsity": cell.sparsity,
                    "method": config.method if cell.pathway != "dense" else "-", "model": config.model,
                    "nsamples": config.nsamples, "seed": config.seed, "limit": config.limit}
        rows = [{**settings, **row} for row in primary_rows(scores).to_dict("records")]
        _append_rows(results_path, rows)
        del model
    _write_iou(config, out)
    return _read_csv(results_path)


def _write_iou(config: GridConfig, out: Path) -> None:
    """IoU per linear between the text-pool and visual-pool masks of the same pathway and sparsity."""
    rows = []
    for pathway, sparsity in itertools.product(config.pathways, config.sparsities):
        paths = [out / "masks" / f"{pathway}-{pool}-{sparsity:g}.npz" for pool in ("text", "visual")]
        if not all(p.is_file() for p in paths):
            continue
        text, visual = (_load_masks(p) for p in paths)
        for name in text:
            rows.append({"pathway": pathway, "sparsity": sparsity, "linear": name,
                         "iou": mask_iou(text[name], visual[name])})
    if rows:
        write_text_atomic(out / "mask_iou.csv", pd.DataFrame(rows).to_csv(index=False))

"""Experiment grids, every cell evaluated, resumable, nothing lost.

- ``table1`` (the sensitivity grid): the dense model, then pathway x pool x sparsity, each cell
  pruning one MoT pathway with Wanda statistics from its pool while the other pathway stays dense.
  Masks of the ``text``- and ``visual``-pool cells of a pathway are kept (packed) so the IoU between
  them is recorded per linear (the paper's Fig. 1b).
- ``table2`` (the method comparison): the dense model, then method x setting (a sparsity such as
  ``0.5`` or an N:M pattern such as ``2:4``) on the whole model.

Each finished cell appends its rows (one per task) to ``results.csv`` through an atomic rewrite and
writes its pruning record to ``cells/``, so a killed run loses at most the cell in progress and a
rerun skips finished cells.
"""

from __future__ import annotations

import contextlib
import copy
import gc
import io
import itertools
import json
import logging
import os
import re
import socket
import time
import typing
from collections.abc import Callable, Hashable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pandas as pd
import torch
import yaml
from filelock import FileLock, Timeout
from pydantic import TypeAdapter, ValidationError

from probe.calibrate import capture_calibration
from probe.capture import CapturedSample
from probe.data.calibration import CalibrationSpec, select
from probe.devices import check_device, machine_description
from probe.engine import PruneConfig, prune
from probe.errors import ProbeError
from probe.evaluation.harness import evaluate_with_items, primary_rows, resolve_tasks, token_records_path
from probe.grid_status import CellClock, banner
from probe.interrupts import raise_if_interrupted
from probe.loading import DTYPES, LoadedModel, check_model_ref, load_model, model_config, parse_dtype
from probe.manifest import (
    check_output_dir,
    package_versions,
    process_code_revision,
    write_json_atomic,
    write_text_atomic,
)
from probe.method_spec import MethodEntry, method_entry
from probe.mot import PATHWAYS, prune_pathway, to_mot, weight_sharing_copy
from probe.names import GRIDS, MODALITY_POOLS
from probe.record import RunRecord, kept_visual_total, read_json
from probe.sparsity.masks import mask_iou, parse_pattern
from probe.task_checkpoint import TaskCheckpoint, parameter_stats, weights_fingerprint
from probe.token_pruning.base import make_pruner
from probe.token_pruning.runtime import check_token_method
from probe.token_pruning.schedule import with_token_schedule
from probe.vision_cache import VisionFeatureCache

QUICK = {"nsamples": 8, "limit": 5, "sparsities": [0.5], "settings": ["0.5"]}
IOU_POOLS = ("text", "visual")  # Fig. 1b compares the masks of these two pools
log = logging.getLogger(__name__)
CELL_LISTS = {"table1": ("sparsities", "pathways", "pools"),  # the settings whose entries make a grid's cells
              "table2": ("methods", "settings", "token_methods")}
RUN_ONLY = ("out", "cluster", "dense_from")  # settings that say where and how a grid runs, not what it computes
RESUME_VERSIONS = ("torch", "transformers", "lmms-eval", "probe-lvlm")  # a grid resumes only on the same versions
METRICS = ("tasks", "kl")
PROXY_FILE = "proxy.csv"  # per cell, group and metric: the proxy metric's summary (per sample: proxy/<cell>.csv)
DENSE_KEYS = ("model", "tasks", "limit", "seed", "dtype", "device", "max_pixels", "loglikelihood")  # the dense cell's


class GridConfigError(ProbeError):
    """An invalid grid configuration."""


class DuplicateKeyError(yaml.YAMLError):
    """A YAML mapping that names one key twice (plain YAML keeps the last silently)."""


class UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML's safe loader, refusing a mapping that names a key twice."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if not isinstance(key, Hashable):
                continue  # the safe loader's own error names it
            if key in seen:
                line = key_node.start_mark.line + 1
                raise DuplicateKeyError(f"the key {key!r} appears twice in one mapping (line {line})")
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


@dataclass
class GridConfig:
    """Validated settings of a grid (``grid``: table1, the sensitivity grid, or table2, the methods)."""

    grid: str = "table1"
    model: str = "reference"
    tasks: str = "offline"
    limit: int | None = 20  # items per task and cell; None for whole test splits
    sparsities: list[float] = field(default_factory=lambda: [0.5, 0.6])
    pathways: list[str] = field(default_factory=lambda: list(PATHWAYS))
    pools: list[str] = field(default_factory=lambda: list(MODALITY_POOLS))  # table1's token selectors
    method: str = "wanda"  # table1's method (its scorer and allocation; the pools are its token selectors)
    # table2's rows: method names, "atv(alpha=2)", or mappings such as {method: atv, alpha: 2} or
    # {tokens: text, scorer: sparsegpt, allocation: owl, lam: 0.1}
    methods: list[str | dict[str, Any]] = field(default_factory=lambda: ["magnitude", "wanda", "sparsegpt", "tamp",
                                                                         "atv"])
    settings: list[str | float] = field(default_factory=lambda: ["0.5", "0.6", "2:4", "4:8"])  # table2's columns
    # table2: visual token pruning at inference per cell ("none", "fastv(k=2, ratio=0.5)", "random(...)")
    token_methods: list[str] = field(default_factory=lambda: ["none"])
    alpha: float = 1.0  # ATV
    k_rule: str = "paper"  # ATV
    calib: str = "bundled"
    image_root: str | None = None
    calib_subset: str | None = None
    nsamples: int = 128
    seed: int = 0
    # the calibration draw's own seed (None: seed): the same cells pruned again on other calibration samples,
    # with the same dense cell, task items and evaluation seed
    calib_seed: int | None = None
    # calibration draws as an axis: every pruned cell that uses calibration pruned once per seed, all against
    # the one dense cell; the tables report the mean over draws (empty: the one draw of calib_seed or seed)
    calib_seeds: list[int] = field(default_factory=list)
    # what each cell is scored by: tasks (the task metrics, results.csv) and kl (the proxy metric on held-out
    # conversations, proxy.csv; probe.evaluation.divergence); a grid may add kl later
    metrics: list[str] = field(default_factory=lambda: ["tasks"])
    proxy_samples: int = 32  # held-out conversations per group (image, text) of the proxy metric
    replicate_o_proj: bool = False
    dtype: str = "float32"
    device: str = "cpu"
    max_pixels: int | None = None
    loglikelihood: str = "sum"  # how multiple-choice options are scored: sum or mean over their tokens
    name: str = ""  # the tables' file name (default: the grid, table1 or table2)
    dense_from: str | None = None  # another grid's folder whose dense cell this grid takes (same DENSE_KEYS)
    cluster: dict[str, Any] = field(default_factory=dict)  # resources of cluster jobs (probe.executors.Resources)
    out: str = ""  # default: runs/grid/<grid>

    def __post_init__(self) -> None:
        self._check_types()
        if self.grid not in GRIDS:
            raise GridConfigError(f"unknown grid {self.grid!r}; choose from {', '.join(GRIDS)}")
        if not self.out:
            self.out = f"runs/grid/{self.grid}"
        if self.loglikelihood not in ("sum", "mean"):
            raise GridConfigError(f"loglikelihood must be sum or mean, got {self.loglikelihood!r}")
        if self.limit is not None and self.limit < 1:
            raise GridConfigError(f"limit must be at least 1 item per task (or null for every item), got {self.limit}")
        if self.nsamples < 1:
            raise GridConfigError(f"nsamples must be at least 1, got {self.nsamples}")
        unknown = [m for m in self.metrics if m not in METRICS]
        if unknown or not self.metrics:
            raise GridConfigError(f"metrics: {'unknown ' + repr(unknown[0]) if unknown else 'none named'}; choose "
                                  f"from {', '.join(METRICS)}")
        if "kl" in self.metrics and any(t != "none" for t in self.token_methods):
            raise GridConfigError("metrics: kl compares whole-model answers without token pruning at inference; "
                                  "run it in a grid whose token_methods is [none]")
        if self.proxy_samples < 2:
            raise GridConfigError(f"proxy_samples must be at least 2 (a standard error needs two), got "
                                  f"{self.proxy_samples}")
        if self.calib_seeds and self.calib_seed is not None:
            raise GridConfigError("set calib_seed (one other draw) or calib_seeds (several draws), not both")
        if len(set(self.calib_seeds)) < len(self.calib_seeds):
            twice = next(s for s in self.calib_seeds if self.calib_seeds.count(s) > 1)
            raise GridConfigError(f"calib_seeds names the draw {twice} twice")
        if self.dtype not in DTYPES:
            raise GridConfigError(f"unknown dtype {self.dtype!r}; choose from {', '.join(DTYPES)}")
        for name in CELL_LISTS[self.grid]:
            if not getattr(self, name):
                raise GridConfigError(f"{name} is empty: a {self.grid} grid needs at least one (the default is "
                                      f"{GridConfig.__dataclass_fields__[name].default_factory()})")
        try:
            from probe.executors import Resources

            Resources.from_mapping(self.cluster)
        except ProbeError as exc:
            raise GridConfigError(f"cluster: {exc}") from None
        entries = []
        for i, method in enumerate(self.methods):
            try:
                entry = method_entry(method)
                for setting in self.settings or ["0.5"]:  # a table1 grid's settings may be empty
                    self.prune_config(entry, *parse_setting(setting))
            except ProbeError as exc:
                raise GridConfigError(f"methods[{i}] ({method!r}): {exc}") from None
            entries.append(entry)
        try:
            pruners = {spec: make_pruner(spec) for spec in self.token_methods}
        except ProbeError as exc:
            raise GridConfigError(f"token_methods: {exc}") from None
        kept = [e.label for e in entries if e.axes()["tokens"] == "kept"]
        if kept and all(p is None for p in pruners.values()):
            raise GridConfigError(f"{kept[0]!r} follows a token-pruning method's alive tokens; token_methods "
                                  "names none")
        labels = [e.label for e in entries]
        if len(set(labels)) < len(labels):
            twice = next(label for label in labels if labels.count(label) > 1)
            raise GridConfigError(f"two methods are both labelled {twice!r}; give one a label: key")
        fixed = [e.label for e in entries if e.settings.get("budget") == "fixed"]
        if self.grid == "table2" and fixed and "atv" not in labels:
            raise GridConfigError(f"{fixed[0]!r} keeps as many visual tokens as plain atv: add atv to methods")
        for pathway in self.pathways:
            if pathway not in PATHWAYS:
                raise GridConfigError(f"unknown pathway {pathway!r}; choose from {', '.join(PATHWAYS)}")
        try:
            for sparsity in self.sparsities:
                PruneConfig(method=self.method, sparsity=sparsity)  # validates method and sparsity
            for pool in self.pools:
                PruneConfig(method=self.method, tokens=pool)
        except ProbeError as exc:
            raise GridConfigError(str(exc)) from None

    def _check_types(self) -> None:
        """Each setting coerced to its annotated type, or a :class:`GridConfigError` naming it."""
        hints = typing.get_type_hints(type(self))
        for name in self.__dataclass_fields__:
            value = getattr(self, name)
            try:
                setattr(self, name, TypeAdapter(hints[name]).validate_python(value))
            except ValidationError as exc:
                error = exc.errors()[0]
                expected = error["msg"].removeprefix("Input should be ").rstrip(".")
                where = name + "".join(f"[{part}]" for part in error["loc"][:1] if isinstance(part, int))
                raise GridConfigError(f"grid setting {where!r} should be {expected}, got {error['input']!r}") from None

    @classmethod
    def create(cls, **data) -> GridConfig:
        """Settings from keyword arguments, unknown names refused with a :class:`GridConfigError`."""
        unknown = set(data) - set(cls.__dataclass_fields__)
        if unknown:
            raise GridConfigError(f"unknown grid setting(s) {', '.join(sorted(unknown))}; "
                                  f"known: {', '.join(cls.__dataclass_fields__)}")
        return cls(**data)

    @classmethod
    def from_yaml(cls, path: Path, **overrides) -> GridConfig:
        """Settings from a YAML mapping; ``overrides`` (not None) win."""
        if not path.is_file():
            raise GridConfigError(f"grid config not found: {path}")
        try:
            data = yaml.load(path.read_text(encoding="utf-8"), Loader=UniqueKeyLoader)
        except DuplicateKeyError as exc:
            raise GridConfigError(f"{path}: {exc}") from None
        except (yaml.YAMLError, UnicodeDecodeError) as exc:
            where = getattr(exc, "problem_mark", None)
            at = f" (line {where.line + 1})" if where is not None else ""
            raise GridConfigError(f"{path} is not valid YAML{at}") from None
        if data is None:
            raise GridConfigError(f"{path} is empty; a grid config names at least its grid (grid: table1 or table2)")
        if not isinstance(data, dict):
            raise GridConfigError(f"{path} should hold a mapping of settings (name: value), not a "
                                  f"{type(data).__name__}")
        unknown = set(data) - set(cls.__dataclass_fields__)
        if unknown:
            raise GridConfigError(f"unknown grid setting(s) {', '.join(sorted(map(str, unknown)))} in {path}")
        data.update({k: v for k, v in overrides.items() if v is not None})
        try:
            return cls(**data)
        except GridConfigError as exc:
            raise GridConfigError(f"{path}: {exc}") from None

    def prune_config(self, method: str | dict | MethodEntry, sparsity: float, pattern: str = "unstructured",
                     fixed_total: int = 1) -> PruneConfig:
        """Pruning settings of a table2 cell from its method entry; ATV entries take the grid's ``alpha``,
        ``k_rule`` and ``seed`` unless they set their own."""
        entry = method if isinstance(method, MethodEntry) else method_entry(method)
        if entry.axes()["tokens"] != "atv":
            return entry.config(sparsity, pattern)
        atv = {"alpha": self.alpha, "k_rule": self.k_rule, "seed": self.seed,
               **{k: v for k, v in entry.settings.items() if k != "fixed_total"}}
        if atv.get("budget") == "fixed":
            atv["fixed_total"] = fixed_total
        return entry.config(sparsity, pattern, tokens_settings=atv)

    @property
    def default_draw(self) -> int:
        """The calibration seed of a grid with one draw: ``calib_seed``, else ``seed``."""
        return self.seed if self.calib_seed is None else self.calib_seed

    def draws(self) -> list[int | None]:
        """The calibration draws of the pruned cells: None for the default draw (cells keep their plain ids),
        else the draw's seed."""
        return [None if s == self.default_draw else s for s in self.calib_seeds or [self.default_draw]]

    def calibration(self, draw: int | None = None) -> CalibrationSpec:
        """The calibration samples of ``draw`` (None: the default draw)."""
        return CalibrationSpec.parse(self.calib, image_root=self.image_root, subset=self.calib_subset,
                                     nsamples=self.nsamples, seed=self.default_draw if draw is None else draw)


@dataclass(frozen=True)
class Cell:
    """One grid cell: the dense model, a pruned MoT pathway (table1) or a pruned model (table2)."""

    pathway: str = "dense"  # dense, text, visual (table1) or all (table2)
    pool: str = "-"
    sparsity: float = 0.0
    method: str = "-"
    setting: str = "-"  # the column label: 50%, 2:4, ...
    pattern: str = "unstructured"
    entry: MethodEntry | None = field(default=None, compare=False)  # table2: the method entry (method is its label)
    token_pruning: str = "none"  # visual token pruning at inference
    draw: int | None = None  # the calibration seed of a draw other than the grid's default one

    @property
    def cell_id(self) -> str:
        tokens = "" if self.token_pruning == "none" else f"/{self.token_pruning}"
        draw = "" if self.draw is None else f"@calib{self.draw}"
        if self.pathway == "dense":
            return "dense"
        if self.pathway == "all":
            return f"{self.method}/{self.setting}{tokens}{draw}"
        return f"{self.pathway}/{self.pool}/{self.sparsity:g}{draw}"


def _token_spec(text: str) -> str:
    """A token-pruning method in its full form (``fastv`` -> ``fastv(k=2, ratio=0.5)``); ``none`` stays."""
    pruner = make_pruner(text)
    return "none" if pruner is None else pruner.spec()


def parse_setting(setting: str | float) -> tuple[float, str]:
    """A table2 column: a sparsity (``0.5``) or an N:M pattern (``2:4``) -> (sparsity, pattern)."""
    text = str(setting)
    if ":" in text:
        return parse_pattern(text).sparsity, text
    try:
        return float(text), "unstructured"
    except ValueError:
        raise GridConfigError(f"grid setting {text!r} is neither a sparsity nor an N:M pattern") from None


def setting_label(setting: str | float) -> str:
    """``0.5`` -> ``50%``; N:M patterns stay as they are."""
    sparsity, pattern = parse_setting(setting)
    return pattern if pattern != "unstructured" else f"{sparsity:.0%}"


def cells(config: GridConfig) -> list[Cell]:
    """The dense cell first, then the grid's pruned cells column by column: every row of a setting (table2)
    or sparsity (table1) before the next, so a grid stopped part-way leaves whole columns to compare. With
    several calibration draws, the whole grid of the first draw comes first, then each other draw's cells
    (a method that uses no calibration, such as magnitude, runs in the first draw only)."""
    if config.grid == "table2":
        pruned = []
        for index, draw in enumerate(config.draws()):
            for tokens in config.token_methods:
                for setting, method in itertools.product(config.settings, config.methods):
                    sparsity, pattern = parse_setting(setting)
                    entry = method_entry(method)
                    if tokens == "none" and entry.axes()["tokens"] == "kept":
                        continue  # the kept selector follows a token method's alive tokens
                    if index and not config.prune_config(entry, sparsity, pattern).needs_calibration:
                        continue  # the same weights in every draw
                    pruned.append(Cell("all", "-", sparsity, entry.label, setting_label(setting), pattern, entry,
                                       _token_spec(tokens), draw))
        token_only = [Cell("all", "-", 0.0, "dense", "-", token_pruning=_token_spec(t))
                      for t in config.token_methods if t != "none"]
        return [Cell(), *token_only, *pruned]
    pruned = [Cell(p, q, s, config.method, setting_label(s), draw=draw)
              for draw in config.draws()
              for s, p, q in itertools.product(config.sparsities, config.pathways, config.pools)]
    return [Cell(), *pruned]


def _read_csv(path: Path) -> pd.DataFrame:
    return pd.read_csv(path) if path.is_file() else pd.DataFrame()


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


def cell_path(out: Path, cell_id: str, folder: str = "cells", suffix: str = ".json") -> Path:
    """Where a cell's pruning record (or another per-cell file) goes: a file name made of letters,
    digits, - and _."""
    return out / folder / (re.sub(r"[^A-Za-z0-9_-]+", "_", cell_id.replace(":", "-")).strip("_") + suffix)


def _adaptive_total(out: Path, cell: Cell) -> int:
    """For an ATV cell with ``budget=fixed``: the visual tokens the plain ``atv`` cell of the same setting
    kept (that cell runs first, see :func:`needs_earlier_cell`)."""
    if not needs_earlier_cell(cell):
        return 1
    path = cell_path(out, f"atv/{cell.setting}")
    if not path.is_file():
        raise GridConfigError(f"{cell.cell_id} keeps as many visual tokens as the 'atv' cell of its setting, "
                              f"which has no record in {out / 'cells'}")
    return kept_visual_total(path)


def _check_same_settings(config: GridConfig, manifest: Path, calibration_ids: dict[int | None, list[str]],
                         proxy_ids: list[str] | None = None) -> None:
    """A rerun may only resume results made with the same settings (the output folder aside; calibration
    draws may be added after the grid's own), the same calibration samples in every draw (a calibration
    source whose content changed is refused too) and the same versions of the packages that decide the
    numbers (:data:`RESUME_VERSIONS`)."""
    if not manifest.is_file():
        return
    stored = read_json(manifest, "a grid manifest")
    if not isinstance(stored, dict) or not isinstance(stored.get("config"), dict) or "grid" not in stored["config"]:
        raise GridConfigError(f"{manifest.parent} holds another kind of run (its manifest.json is not a grid's, e.g. "
                              "a pruned checkpoint); choose another output folder")
    before = stored["config"]
    now = asdict(config)
    added = ("calib_seeds", "metrics")  # checked below: a grid may add draws and metrics
    if "kl" not in before.get("metrics", ["tasks"]):
        added += ("proxy_samples",)  # the proxy's own setting counts once the proxy has scored cells
    changed = sorted(k for k in now if k not in (*RUN_ONLY, *added) and k in before and before[k] != now[k])
    default = [config.default_draw]
    earlier, later = before.get("calib_seeds") or default, config.calib_seeds or default
    if later[:len(earlier)] != earlier:
        changed.append(f"calib_seeds {earlier} there, {later} here (draws may only be added after the grid's own)")
    if any(m not in now["metrics"] for m in before.get("metrics", ["tasks"])):
        changed.append(f"metrics {before.get('metrics', ['tasks'])} there, {now['metrics']} here (metrics may only "
                       "be added)")
    if proxy_ids and stored.get("proxy_ids") and stored["proxy_ids"] != proxy_ids:
        changed.append("the proxy metric's held-out samples (a new calibration draw took some of them)")
    if "calibration_ids" in stored and stored["calibration_ids"] != calibration_ids[None]:
        changed.append("calibration samples")
    for seed, ids in (stored.get("calibration_draws") or {}).items():
        if int(seed) in calibration_ids and calibration_ids[int(seed)] != ids:
            changed.append(f"calibration samples of draw {seed}")
    versions, theirs = package_versions(), stored.get("versions") or {}
    changed += [f"{name} {theirs[name]} there, {versions.get(name)} here" for name in RESUME_VERSIONS
                if name in theirs and theirs[name] != versions.get(name)]
    if changed:
        raise GridConfigError(
            f"{manifest.parent} holds results made with other settings ({', '.join(changed)}); "
            "choose another output folder or remove it"
        )


@dataclass
class GridContext:
    """What every cell of a grid shares: the model, its captured calibration (``capture(draw)``, the last
    draw's kept), the tasks, a vision cache."""

    config: GridConfig
    base: LoadedModel
    capture: Callable[[int | None], list[CapturedSample]]
    tasks: list[str]
    cache: VisionFeatureCache
    heldout: tuple[list, list] | None = None  # the proxy metric's image-text and text-only conversations
    _captured: tuple[int | None, list[CapturedSample]] | None = None
    _proxy: tuple[list, list] | None = None

    @property
    def out(self) -> Path:
        return Path(self.config.out)

    def captured(self, draw: int | None = None) -> list[CapturedSample]:
        """The calibration samples of ``draw`` (None: the default draw) captured on the model; only one
        draw's are held at a time."""
        if self._captured is None or self._captured[0] != draw:
            self._captured = None  # the previous draw's activations go before the next are captured
            self._captured = (draw, self.capture(draw))
        return self._captured[1]

    def proxy(self, show_progress: bool = True) -> tuple[list, list]:
        """The proxy metric's held-out conversations as model inputs and the dense model's answer
        distributions on them, computed once."""
        if self._proxy is None:
            from probe.evaluation.divergence import dense_answers, proxy_items

            if self.heldout is None:
                raise GridConfigError("this grid's plan holds no held-out conversations (metrics has no kl)")
            items = proxy_items(self.base.adapter, self.base.processor, *self.heldout)
            self._proxy = (items, dense_answers(self.base.model, items, show_progress))
        return self._proxy


@dataclass
class GridPlan:
    """A grid checked before any model work: its tasks, calibration draws and the cells still to run."""

    config: GridConfig
    tasks: list[str]
    selections: dict[int | None, Any]  # per draw, the validated samples (probe.data.calibration.select)
    todo: list[Cell]
    heldout: tuple[list, list] | None = None  # the proxy metric's image-text and text-only conversations

    @property
    def out(self) -> Path:
        return Path(self.config.out)


def select_cells(planned: list[Cell], only: Sequence[str], finished: set[str]) -> list[Cell]:
    """The cells of ``planned`` named in ``only`` (cell ids as in ``results.csv``), in the order named; a
    fixed-budget ATV cell needs its plain ``atv`` cell named too or among the ``finished`` ones."""
    by_id = {c.cell_id: c for c in planned}
    unknown = [name for name in only if name not in by_id]
    if unknown:
        raise GridConfigError(f"no cell {', '.join(map(repr, unknown))} in this grid; its cells are "
                              f"{', '.join(by_id)}")
    chosen = list(dict.fromkeys(only))
    for name in chosen:
        cell = by_id[name]
        earlier = f"atv/{cell.setting}"
        if needs_earlier_cell(cell) and earlier not in chosen and earlier not in finished:
            raise GridConfigError(f"{name} keeps as many visual tokens as the cell {earlier!r}: name that cell too")
    return [by_id[name] for name in chosen]


@dataclass
class GridCheck:
    """A grid checked without writing anything: its tasks, calibration draws, held-out conversations, the
    cells planned and those already done."""

    tasks: list[str]
    selections: dict[int | None, Any]
    heldout: tuple[list, list] | None
    planned: list[Cell]
    done: set[str]

    def calibration_ids(self) -> dict[int | None, list[str]]:
        return {draw: [s.sample_id for s in chosen.samples] for draw, chosen in self.selections.items()}

    def proxy_ids(self) -> list[str] | None:
        return [s.sample_id for group in self.heldout for s in group] if self.heldout else None


def check_grid(config: GridConfig, only: Sequence[str] | None = None) -> GridCheck:
    """Check everything a grid needs (device, model, tasks, calibration and held-out data, an output folder
    made with the same settings, the dense cell of ``dense_from``) and write nothing (``probe grid
    --dry-run``); the cells without rows are still to run (with ``only``, just those of the named cells,
    in the order named)."""
    out = Path(config.out)
    check_output_dir(out, marker="manifest.json")
    done = finished_cells(out, config.metrics)
    planned = select_cells(cells(config), only, done) if only else cells(config)
    check_device(config.device)
    check_model_ref(config.model)
    check_token_methods(config)
    tasks = resolve_tasks(config.tasks)
    selections = calibration_selections(config)  # every data check before any model work
    checked = GridCheck(tasks, selections, heldout_conversations(config, selections), planned, done)
    _check_same_settings(config, out / "manifest.json", checked.calibration_ids(), checked.proxy_ids())
    if config.dense_from and "dense" not in finished_cells(out):
        _dense_source(config, Path(config.dense_from))
    return checked


def plan_grid(config: GridConfig, only: Sequence[str] | None = None) -> GridPlan:
    """:func:`check_grid`, then take the dense cell from ``dense_from`` where the config names one and
    write the manifest."""
    out = Path(config.out)
    checked = check_grid(config, only)
    tasks, selections, heldout, planned, done = (checked.tasks, checked.selections, checked.heldout,
                                                 checked.planned, checked.done)
    calibration_ids, proxy_ids = checked.calibration_ids(), checked.proxy_ids()
    if config.dense_from and "dense" not in finished_cells(out):
        import_dense_cell(config, Path(config.dense_from))
        done = finished_cells(out, config.metrics)
    write_json_atomic(out / "manifest.json", {
        "config": asdict(config), "tasks": tasks, "calibration_ids": calibration_ids[None],
        "calibration_draws": {str(draw): ids for draw, ids in calibration_ids.items() if draw is not None},
        **({"proxy_ids": proxy_ids} if proxy_ids else {}),
        "versions": package_versions(), "code": process_code_revision(),
        "machine": machine_description(config.device)})
    return GridPlan(config, tasks, selections, [c for c in planned if c.cell_id not in done], heldout)


def calibration_selections(config: GridConfig) -> dict[int | None, Any]:
    """Every calibration draw of the grid, loaded and checked (no model needed), by draw (None: the default)."""
    selections = {draw: select(config.calibration(draw)) for draw in config.draws()}
    if None not in selections:
        selections[None] = select(config.calibration())
    return selections


def heldout_conversations(config: GridConfig, selections: dict[int | None, Any]) -> tuple[list, list] | None:
    """The proxy metric's held-out image-text and text-only conversations (None without ``kl`` in
    ``metrics``), none of them taken by a calibration draw of ``selections``."""
    if "kl" not in config.metrics:
        return None
    from probe.data.heldout import heldout_image_samples, heldout_text_samples

    drawn = {s.sample_id for chosen in selections.values() for s in chosen.samples}
    return (heldout_image_samples(config.calibration(), config.proxy_samples, config.seed, drawn),
            heldout_text_samples(config.proxy_samples, config.seed))


def import_dense_cell(config: GridConfig, source: Path) -> None:
    """Take the dense cell of the grid in ``source`` (its rows, per-item scores and record) as this grid's,
    after checking that it was scored with the same :data:`DENSE_KEYS`: on a large model the dense
    evaluation is the same hours of work in every grid."""
    rows = _dense_source(config, source)
    out = Path(config.out)
    record = json.loads(cell_path(source, "dense").read_text())
    record.setdefault("context", {})["dense_from"] = str(source)
    write_text_atomic(cell_path(out, "dense", "items", ".csv"), cell_path(source, "dense", "items", ".csv").read_text())
    write_json_atomic(cell_path(out, "dense"), record)
    append_cell_rows(out / "results.csv", "dense", rows.to_dict("records"))


def _dense_source(config: GridConfig, source: Path) -> pd.DataFrame:
    """The dense rows of the grid in ``source``, checked to be a finished dense cell scored with the same
    :data:`DENSE_KEYS` as ``config``'s."""
    manifest = source / "manifest.json"
    files = [manifest, source / "results.csv", cell_path(source, "dense", "items", ".csv"), cell_path(source, "dense")]
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        raise GridConfigError(f"dense_from: {source} has no finished dense cell (missing {', '.join(missing)})")
    theirs = json.loads(manifest.read_text()).get("config", {})
    ours = asdict(config)
    changed = [k for k in DENSE_KEYS if theirs.get(k) != ours[k]]
    if changed:
        named = ", ".join(f"{k}: {theirs.get(k)!r} there, {ours[k]!r} here" for k in changed)
        raise GridConfigError(f"dense_from: {source}'s dense cell was scored with other settings ({named})")
    rows = _read_csv(source / "results.csv")
    rows = rows[rows.cell == "dense"].dropna(axis=1, how="all")
    if rows.empty:
        raise GridConfigError(f"dense_from: {source / 'results.csv'} holds no dense rows")
    return rows


def finished_cells(out: Path, metrics: Sequence[str] = ("tasks",)) -> set[str]:
    """The cells scored by every one of ``metrics``: with rows in ``out/results.csv`` (tasks) and in
    ``out/proxy.csv`` (kl)."""
    files = {"tasks": "results.csv", "kl": PROXY_FILE}
    found = [set(_read_csv(out / files[m]).get("cell", pd.Series(dtype=str))) for m in metrics]
    return set.intersection(*found) if found else set()


def open_context(plan: GridPlan, show_progress: bool = True, shared_calibration: bool = False) -> GridContext:
    """Load the grid's model; each calibration draw is captured when a cell first needs it. With
    ``shared_calibration`` (cells running as separate jobs), the first job to need a draw captures it into
    ``calibration.pt`` (``calibration-calib<seed>.pt`` for other draws) in the output folder, under a
    file lock, and every other job loads it from there."""
    config = plan.config
    base = load_model(config.model, dtype=parse_dtype(config.dtype), device=config.device,
                      max_pixels=config.max_pixels)
    check_token_methods(config, base.model)
    cache = VisionFeatureCache()

    def capture(draw: int | None) -> list[CapturedSample]:
        selected = plan.selections.get(draw) or select(config.calibration(draw))
        return capture_calibration(base, selected, store_device=config.device, show_progress=show_progress,
                                   vision_cache=cache)

    def shared(draw: int | None) -> list[CapturedSample]:
        path = plan.out / ("calibration.pt" if draw is None else f"calibration-calib{draw}.pt")
        plan.out.mkdir(parents=True, exist_ok=True)
        with FileLock(str(path) + ".lock"):
            if path.is_file():
                return torch.load(path, map_location=config.device, weights_only=False)
            captured = capture(draw)
            tmp = path.with_name(f".{path.name}.tmp")
            torch.save(captured, tmp)
            tmp.replace(path)
            return captured

    ctx = GridContext(config, base, shared if shared_calibration else capture, plan.tasks, cache, plan.heldout)
    pruned = [c for c in plan.todo if c.pathway != "dense" and c.method != "dense"]
    if pruned and not shared_calibration:
        ctx.captured(pruned[0].draw)  # before any cell: a capture that fails does so before hours of scoring
    return ctx


def check_token_methods(config: GridConfig, model: torch.nn.Module | None = None) -> None:
    """Raise :class:`GridConfigError` before any cell if a token method of the grid cannot run on the model:
    the loaded ``model``, else the grid model's config where it is at hand without loading weights (see
    :func:`probe.loading.model_config`; without one, the check waits for the loaded model)."""
    pruners = {spec: pruner for spec in config.token_methods if (pruner := make_pruner(spec)) is not None}
    if not pruners:
        return
    found = model.config if model is not None else model_config(config.model)
    if found is None:
        return
    layers = found.get_text_config().num_hidden_layers
    for spec, pruner in pruners.items():
        try:
            check_token_method(pruner, found.model_type, layers)
        except ProbeError as exc:
            raise GridConfigError(f"token_methods: {spec!r} cannot run on {config.model}: {exc}") from None


def needs_earlier_cell(cell: Cell) -> bool:
    """An ATV cell with a fixed budget keeps as many visual tokens as the plain ``atv`` cell of its setting,
    so it runs after that one."""
    return cell.entry is not None and cell.entry.settings.get("budget") == "fixed"


def run_cell(ctx: GridContext, cell: Cell, show_progress: bool = True, log_samples: bool = False) -> bool:
    """Prune (a copy of) the model as ``cell`` says, evaluate it, write its record to ``cells/`` and add its
    rows to ``results.csv``; False if another run had added them first (nothing is written twice).

    The cell's copy is freed before this returns, so the next cell's copy never sits beside it: an MoT
    probe's routing hook holds its model in a reference cycle, which only the garbage collector frees."""
    try:
        return _prune_and_score(ctx, cell, show_progress, log_samples)
    finally:
        gc.collect()


def _prune_and_score(ctx: GridContext, cell: Cell, show_progress: bool, log_samples: bool) -> bool:
    config, base, out = ctx.config, ctx.base, ctx.out
    # an MoT cell writes only into its pruned pathway's own copies; every other cell needs a whole copy
    model = weight_sharing_copy(base.model) if cell.pathway in PATHWAYS else copy.deepcopy(base.model)
    context: dict[str, Any] = {"command": "grid", "grid": config.grid, "cell": cell.cell_id, "pathway": cell.pathway,
                               "machine": machine_description(config.device)}
    prune_config = None
    context["token_pruning"] = cell.token_pruning
    if cell.pathway == "all" and cell.entry is not None:
        prune_config = config.prune_config(cell.entry, cell.sparsity, cell.pattern, _adaptive_total(out, cell))
        samples = ctx.captured(cell.draw) if prune_config.needs_calibration else []
        if prune_config.tokens == "kept":
            samples = with_token_schedule(base.model, base.adapter, samples, make_pruner(cell.token_pruning))
        report = prune(model, base.adapter, samples, prune_config, show_progress=show_progress)
    elif cell.pathway in PATHWAYS:  # table1: one MoT pathway
        probe = to_mot(model, base.adapter, config.replicate_o_proj, private=cell.pathway)
        prune_config = PruneConfig(method=config.method, sparsity=cell.sparsity, tokens=cell.pool)
        samples = ctx.captured(cell.draw)
        report = prune_pathway(probe, samples, prune_config, cell.pathway, show_progress=show_progress)
        if cell.pool in IOU_POOLS:  # kept until both are there for the IoU (large: git ignores them)
            masks = {}
            for b, layer in enumerate(base.adapter.decoder_layers(model)):
                for name, routed in probe.routed_linears(layer).items():
                    masks[f"layers.{b}.{name}"] = (getattr(routed, cell.pathway).weight == 0).cpu()
            draw = "" if cell.draw is None else f"-calib{cell.draw}"
            _save_masks(out / "masks" / f"{cell.pathway}-{cell.pool}-{cell.sparsity:g}{draw}.npz", masks)
    if prune_config is not None:
        record = RunRecord.from_report(prune_config, report, model=config.model, family=base.model.config.model_type,
                                       dtype=config.dtype, device=config.device, context=context,
                                       calibration={"seed": config.default_draw if cell.draw is None else cell.draw,
                                                    "sample_ids": [s.sample_id for s in samples]})
    else:
        record = RunRecord(settings={}, method="dense", model=config.model, dtype=config.dtype, device=config.device,
                           context=context)
    settings = {"cell": cell.cell_id, "pathway": cell.pathway, "pool": cell.pool, "sparsity": cell.sparsity,
                "method": cell.method, "setting": cell.setting, "model": config.model,
                "nsamples": config.nsamples, "seed": config.seed, "limit": config.limit,
                "calib_seed": (config.default_draw if cell.draw is None else cell.draw)
                if prune_config is not None and prune_config.needs_calibration else None,
                "loglikelihood": config.loglikelihood, "token_pruning": cell.token_pruning,
                **setting_columns(prune_config)}
    appended = False
    if "kl" in config.metrics and cell.cell_id not in finished_cells(out, ["kl"]):
        fingerprint = weights_fingerprint(model)  # beside the proxy: a cell pruned again can be checked
        appended = _score_proxy(ctx, cell, model, {**settings, "weights_fingerprint": fingerprint}, show_progress)
        if not cell_path(out, cell.cell_id).is_file():  # a cell scored earlier keeps the record of that run
            record.context["weights_fingerprint"] = fingerprint
            record.write(cell_path(out, cell.cell_id))
    if "tasks" in config.metrics and cell.cell_id not in finished_cells(out):
        appended = _score_tasks(ctx, cell, model, record, settings, show_progress, log_samples)
    return appended


def _score_proxy(ctx: GridContext, cell: Cell, model: torch.nn.Module, settings: dict[str, Any],
                 show_progress: bool) -> bool:
    """The proxy metric of the cell's model on the grid's held-out conversations: per sample into
    ``proxy/<cell>.csv``, per group and metric into ``proxy.csv``."""
    from probe.evaluation.divergence import proxy_scores, summarize

    items, dense = ctx.proxy(show_progress)
    per_sample = proxy_scores(model, items, dense, show_progress)
    write_text_atomic(cell_path(ctx.out, cell.cell_id, "proxy", ".csv"),
                      per_sample.assign(cell=cell.cell_id).to_csv(index=False))
    rows = [{**settings, **row} for row in summarize(per_sample).to_dict("records")]
    return append_cell_rows(ctx.out / PROXY_FILE, cell.cell_id, rows)


def _score_tasks(ctx: GridContext, cell: Cell, model: torch.nn.Module, record: RunRecord, settings: dict[str, Any],
                 show_progress: bool, log_samples: bool) -> bool:
    """The cell's task scores: per item into ``items/<cell>.csv``, per task into ``results.csv``; the
    record into ``cells/<cell>.json``."""
    config, out = ctx.config, ctx.out
    scores, items, checkpoint = _evaluate_cell(ctx, cell, model, show_progress, log_samples)
    record.context["weights_fingerprint"] = checkpoint.fingerprint
    if checkpoint.resumed:
        record.context["resumed"] = checkpoint.resumed
    if config.grid == "table2":
        settings = {**settings, **_request_flops(ctx, model, cell)}
    rows = [{**settings, **row} for row in primary_rows(scores).to_dict("records")]
    primary = primary_rows(scores)[["task", "metric"]].merge(items, on=["task", "metric"])
    write_text_atomic(cell_path(out, cell.cell_id, "items", ".csv"),
                      primary.assign(cell=cell.cell_id)[["cell", "task", "doc_id", "value"]].to_csv(index=False))
    record.write(cell_path(out, cell.cell_id))
    appended = append_cell_rows(out / "results.csv", cell.cell_id, rows)
    checkpoint.clear()
    return appended


def _evaluate_cell(ctx: GridContext, cell: Cell, model: torch.nn.Module, show_progress: bool,
                   log_samples: bool) -> tuple[pd.DataFrame, pd.DataFrame, TaskCheckpoint]:
    """Score the cell's model task by task, each task's scores checkpointed under ``partial/<cell>/`` as it
    finishes, so that a rerun after a stop scores only the tasks left (on the same pruned weights)."""
    config, base, out = ctx.config, ctx.base, ctx.out
    checkpoint = TaskCheckpoint(cell_path(out, cell.cell_id, "partial", ""), parameter_stats(model)).open()
    if checkpoint.finished():
        log.info("%s: %s already scored, resuming", cell.cell_id, ", ".join(checkpoint.finished()))
    loaded = LoadedModel(model, base.processor, base.adapter, base.ref)
    for task in ctx.tasks:
        raise_if_interrupted()
        if checkpoint.load(task) is None:
            scores, items = evaluate_with_items(
                loaded, [task], config.limit, show_progress=show_progress,
                vision_cache=ctx.cache if cell.token_pruning == "none" else None, seed=config.seed,
                loglikelihood=config.loglikelihood,
                samples_out=checkpoint.samples_path(task) if log_samples else None,
                token_pruning=None if cell.token_pruning == "none" else cell.token_pruning)
            checkpoint.save(task, scores, items)
    # read back from the checkpoints, so a resumed cell and an uninterrupted one go through the same files
    finished = [checkpoint.load(task) for task in ctx.tasks]
    if log_samples:
        samples_out = cell_path(out, cell.cell_id, "samples", ".jsonl")
        write_text_atomic(samples_out, checkpoint.joined_lines(ctx.tasks, "samples.jsonl"))
        if cell.token_pruning != "none":
            write_text_atomic(token_records_path(samples_out),
                              checkpoint.joined_lines(ctx.tasks, "samples.tokens.jsonl"))
    return (pd.concat([f[0] for f in finished], ignore_index=True),
            pd.concat([f[1] for f in finished], ignore_index=True), checkpoint)


def _request_flops(ctx: GridContext, model: torch.nn.Module, cell: Cell) -> dict[str, float]:
    """FLOPs of one fixed request (a grey 64 x 64 image and a short question) on the cell's model and token
    method, for retention-vs-FLOPs figures."""
    from PIL import Image

    from probe.flops import count_flops, image_request
    from probe.token_pruning.runtime import TokenPruningRuntime

    inputs = image_request(model, ctx.base.adapter, ctx.base.processor, Image.new("RGB", (64, 64), (128, 128, 128)),
                           "Describe the image.")
    pruner = make_pruner(cell.token_pruning)
    runtime = TokenPruningRuntime(pruner, ctx.base.adapter) if pruner is not None else None
    return count_flops(model, ctx.base.adapter, inputs, runtime)


def setting_columns(config: PruneConfig | None) -> dict[str, Any]:
    """The axes of a cell's pruning settings and every setting of each chosen entry, one column each
    (``tokens.alpha``, ``scorer.use_variant``, ``allocation.lam``, ...); none for the dense cell."""
    if config is None:
        return {}
    columns: dict[str, Any] = {"tokens": config.tokens, "scorer": config.scorer, "allocation": config.allocation,
                               "pattern": config.pattern, "true_sequential": config.true_sequential}
    for axis in ("tokens", "scorer", "allocation"):
        for name, value in asdict(getattr(config, f"{axis}_settings")).items():
            columns[f"{axis}.{name}"] = value
    return columns


def append_cell_rows(path: Path, cell_id: str, rows: list[dict]) -> bool:
    """Add one cell's rows to the results CSV, atomically and under a file lock, unless the file already
    holds that cell: concurrent writers (cluster jobs, two drivers) lose nothing and duplicate nothing.
    Returns whether the rows were added."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(path) + ".lock"):
        frame = _read_csv(path)
        if "cell" in frame and cell_id in set(frame.cell):
            return False
        write_text_atomic(path, pd.concat([frame, pd.DataFrame(rows)], ignore_index=True).to_csv(index=False))
        return True


def finish_grid(config: GridConfig) -> pd.DataFrame:
    """After the cells: the mask IoU of a table1 grid; returns the results frame."""
    out = Path(config.out)
    if config.grid == "table1":
        _write_iou(config, out)
    return _read_csv(out / "results.csv")


def run_grid(config: GridConfig, show_progress: bool = True, log_samples: bool = False,
             executor: CellExecutor | None = None, only: Sequence[str] | None = None) -> pd.DataFrame:
    """Run (or resume) the grid; returns the results frame (one row per finished cell and task). With
    ``log_samples``, what the model answered for every item goes to ``samples/<cell>.jsonl``; with
    ``only`` (cell ids such as ``wanda/50%``), just those cells run now, in that order, and a later run
    without it does the rest.

    ``executor`` runs the cells (default: one after another in this process, sharing one loaded model
    and calibration capture); :mod:`probe.executors` runs them as SLURM jobs or Ray tasks. Cells that
    depend on another (fixed-budget ATV cells) run after the others. A failed cell is reported in
    :class:`GridRunError` after every other cell had its turn.
    """
    plan = plan_grid(config, only)
    done = finished_cells(plan.out, config.metrics)
    planned = [c.cell_id for c in (select_cells(cells(config), only, done) if only else cells(config))]
    log.info(banner(config.grid, config.model, config.out, planned, done, [c.cell_id for c in plan.todo]))
    with driver_lock(plan.out):
        if plan.todo:
            executor = executor or InProcessExecutor()
            failures = []
            later = [c for c in plan.todo if needs_earlier_cell(c)]
            for wave in ([c for c in plan.todo if c not in later], later):
                if wave:
                    failures += executor.run(plan, wave, show_progress=show_progress, log_samples=log_samples)
            if failures:
                raise GridRunError(failures)
        return finish_grid(config)


DRIVER_FILE = "driver.json"  # who drives the grid in a folder now: host, pid, start time


@contextlib.contextmanager
def driver_lock(out: Path) -> Iterator[None]:
    """Hold the grid folder ``out`` for this process: a second driver on the same folder is refused with
    one line naming the holder (``driver.json``). The lock is the operating system's, so a killed driver
    leaves none behind."""
    lock = FileLock(str(out / ".driver.lock"), timeout=0)
    try:
        lock.acquire()
    except Timeout:
        holder = out / DRIVER_FILE
        try:
            who = json.loads(holder.read_text())
            named = f"process {who['pid']} on {who['host']}, started {who['started']}"
        except (OSError, ValueError, KeyError, TypeError):
            named = "another process"
        raise GridConfigError(f"{out} is in use by another probe grid ({named}); wait for it to end, or run "
                              "into another folder") from None
    try:
        write_json_atomic(out / DRIVER_FILE, {"host": socket.gethostname(), "pid": os.getpid(),
                                              "started": time.strftime("%Y-%m-%d %H:%M:%S %Z")})
        yield
    finally:
        (out / DRIVER_FILE).unlink(missing_ok=True)
        lock.release()


class CellExecutor(Protocol):
    """Runs some cells of a planned grid; returns the cells that failed (after any retries)."""

    def run(self, plan: GridPlan, todo: list[Cell], show_progress: bool, log_samples: bool) -> list[CellFailure]:
        ...


@dataclass(frozen=True)
class CellFailure:
    """A cell that failed on every try: why, and where its log is."""

    cell_id: str
    error: str
    log: str = ""


class GridRunError(ProbeError):
    """Cells of a grid that failed on every try; the others finished and a rerun retries these."""

    def __init__(self, failures: list[CellFailure]) -> None:
        self.failures = failures
        named = "; ".join(f"{f.cell_id}: {f.error}" + (f" (log: {f.log})" if f.log else "") for f in failures)
        super().__init__(f"{len(failures)} cell(s) failed: {named}; the other cells finished, and running the "
                         "same command again retries the failed ones")


class InProcessExecutor:
    """Cells one after another in this process, sharing one loaded model, calibration and vision cache.
    An error stops the grid at once (finished cells are kept)."""

    def __init__(self) -> None:
        self._context: tuple[GridPlan, GridContext] | None = None

    def run(self, plan: GridPlan, todo: list[Cell], show_progress: bool, log_samples: bool) -> list[CellFailure]:
        if self._context is None or self._context[0] is not plan:  # the model is loaded once per grid
            self._context = (plan, open_context(plan, show_progress=show_progress))
        ctx = self._context[1]
        clock = CellClock([c.cell_id for c in todo])
        clock.start()
        for cell in todo:
            raise_if_interrupted()
            run_cell(ctx, cell, show_progress=show_progress, log_samples=log_samples)
            log.info(clock.finished(cell.cell_id))
        return []


def _write_iou(config: GridConfig, out: Path) -> None:
    """IoU per linear between the text-pool and visual-pool masks of the same pathway and sparsity."""
    rows = []
    for pathway, sparsity in itertools.product(config.pathways, config.sparsities):
        paths = [out / "masks" / f"{pathway}-{pool}-{sparsity:g}.npz" for pool in IOU_POOLS]
        if not all(p.is_file() for p in paths):
            continue
        text, visual = (_load_masks(p) for p in paths)
        for name in text:
            rows.append({"pathway": pathway, "sparsity": sparsity, "linear": name,
                         "iou": mask_iou(text[name], visual[name])})
    if rows:
        write_text_atomic(out / "mask_iou.csv", pd.DataFrame(rows).to_csv(index=False))

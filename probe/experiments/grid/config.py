"""A grid's settings (one YAML file, unknown keys refused) and the cells they make."""

from __future__ import annotations

import itertools
import typing
from collections.abc import Hashable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import TypeAdapter, ValidationError

from probe.core.names import GRIDS, MODALITY_POOLS
from probe.data.calibration import CalibrationSpec
from probe.errors import ProbeError
from probe.evaluation.batching import BatchSizeError, parse_batch_size
from probe.models.loading import DTYPES
from probe.pruning.engine import PruneConfig
from probe.pruning.method_spec import MethodEntry, method_entry
from probe.pruning.mot import PATHWAYS
from probe.pruning.sparsity.masks import parse_pattern
from probe.token_pruning.base import make_pruner

QUICK = {"nsamples": 8, "limit": 5, "sparsities": [0.5], "settings": ["0.5"]}
IOU_POOLS = ("text", "visual")  # Fig. 1b compares the masks of these two pools
CELL_LISTS = {"table1": ("sparsities", "pathways", "pools"),  # the settings whose entries make a grid's cells
              "table2": ("methods", "settings", "token_methods")}
# settings that say where and how a grid runs, not what it computes
RUN_ONLY = ("out", "cluster", "dense_from", "batch_size")
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
    # requests scored at once (an int or auto); scores equal batch 1's, so a grid may resume with another
    batch_size: int | str = 1
    name: str = ""  # the tables' file name (default: the grid, table1 or table2)
    dense_from: str | None = None  # another grid's folder whose dense cell this grid takes (same DENSE_KEYS)
    cluster: dict[str, Any] = field(default_factory=dict)  # cluster jobs' resources (executors.Resources)
    out: str = ""  # default: runs/grid/<grid>

    def __post_init__(self) -> None:
        self._check_types()
        if self.grid not in GRIDS:
            raise GridConfigError(f"unknown grid {self.grid!r}; choose from {', '.join(GRIDS)}")
        if not self.out:
            self.out = f"runs/grid/{self.grid}"
        try:
            self.batch_size = parse_batch_size(self.batch_size)
        except BatchSizeError as exc:
            raise GridConfigError(str(exc)) from None
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
            from probe.experiments.executors import Resources

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


def needs_earlier_cell(cell: Cell) -> bool:
    """An ATV cell with a fixed budget keeps as many visual tokens as the plain ``atv`` cell of its setting,
    so it runs after that one."""
    return cell.entry is not None and cell.entry.settings.get("budget") == "fixed"

"""The sequential pruning loop. It knows four axes and no method by name:

- a token selector (:mod:`probe.pruning.tokens`) says which positions feed each weight's statistics;
- a scorer (:mod:`probe.pruning.scorers`) prunes one weight from those statistics;
- an allocation (:mod:`probe.pruning.allocation`) gives each linear its sparsity, from a dense pre-pass if it needs one;
- a pattern (:mod:`probe.pruning.sparsity.masks`): unstructured or N:M.

Per decoder block: a dense pass that accumulates statistics over the selected positions, the pruning of
the block's linears, then a propagation pass so that the next block sees the pruned block's outputs. With
``true_sequential``, each group of linears sharing an input (attention inputs, attention output, MLP
inputs, MLP output) takes its statistics after the earlier groups of the block were pruned, as
SparseGPT's ``--true-sequential`` does. The engine never knows the model family: the adapter says where
the blocks and linears are; ``targets`` says which weights to prune and where their inputs are observed
(the MoT probe prunes one pathway's copies while observing the shared routed input).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from probe.calibration.activation_store import ActivationStorage, StateStore
from probe.calibration.attention import eager_call, recording_attention
from probe.calibration.capture import CapturedSample, run_block
from probe.core.progress import progress_bar
from probe.core.record import linear_key
from probe.core.registry import DEFAULTS, PRESETS, check_name, check_preset, entry_class
from probe.core.settings import build_settings
from probe.errors import ProbeError
from probe.models.base import Adapter
from probe.models.experts import rows_by_position
from probe.pruning.allocation.base import Allocation, AllocationError
from probe.pruning.scorers.base import Scorer
from probe.pruning.sparsity.masks import Pattern, check_sparsity, parse_pattern
from probe.pruning.sparsity.stats import InputStats
from probe.pruning.tokens.base import PerLinearSelector, RankingSelector, TokenSelector, check_not_empty


class PruneConfigError(ProbeError):
    """Invalid pruning settings."""


@dataclass(frozen=True)
class PruneConfig:
    """Validated settings of one pruning run: a choice on each axis, each with its own settings.

    ``method`` names a preset (:data:`probe.core.registry.PRESETS`, e.g. ``atv`` = ATV tokens + Wanda) that
    fills the axes left empty; an axis given explicitly must agree with the preset. Axes neither sets take
    the defaults (mixed tokens, Wanda, uniform allocation). ``*_settings`` are mappings (or the entry's
    settings dataclass) holding only the chosen entry's settings.
    """

    method: str = ""
    tokens: str = ""
    scorer: str = ""
    allocation: str = ""
    sparsity: float = 0.5
    pattern: str = "unstructured"
    true_sequential: bool = False
    tokens_settings: Any = None
    scorer_settings: Any = None
    allocation_settings: Any = None

    def __post_init__(self) -> None:
        preset = check_preset(self.method) if self.method else {}
        for axis in ("tokens", "scorer", "allocation"):
            given = getattr(self, axis)
            if given and axis in preset and given != preset[axis]:
                raise PruneConfigError(f"method {self.method!r} uses {axis} {preset[axis]!r}; it cannot use "
                                       f"{given!r} (drop the method to combine the axes freely)")
            name = given or preset.get(axis) or DEFAULTS[axis]
            check_name(axis, name)
            object.__setattr__(self, axis, name)
            settings_type = entry_class(axis, name).Settings
            value = getattr(self, f"{axis}_settings")
            object.__setattr__(self, f"{axis}_settings", build_settings(settings_type, value, f"{axis} {name!r}"))
        if not isinstance(self.true_sequential, bool):
            raise PruneConfigError(f"true_sequential must be true or false, got {self.true_sequential!r}")
        check_sparsity(self.sparsity, self.parsed_pattern)
        scorer = self.make_scorer()
        scorer.check(self.parsed_pattern)
        self.make_allocation().check(self.sparsity, self.parsed_pattern)
        if self.true_sequential and scorer.needs == "nothing":
            raise PruneConfigError(f"true_sequential re-gathers statistics; scorer {self.scorer!r} uses none")

    @property
    def parsed_pattern(self) -> Pattern:
        return parse_pattern(self.pattern)

    @property
    def needs_calibration(self) -> bool:
        return entry_class("scorer", self.scorer).needs != "nothing" or entry_class(
            "allocation", self.allocation).needs_prepass

    @property
    def label(self) -> str:
        """The preset's name when the axes are exactly a preset's, else ``tokens+scorer+allocation``."""
        for name, axes in PRESETS.items():
            if all(getattr(self, axis) == axes.get(axis, DEFAULTS[axis]) for axis in DEFAULTS):
                return name
        return f"{self.tokens}+{self.scorer}+{self.allocation}"

    def make_selector(self) -> TokenSelector:
        """A fresh token selector for one run (ranking selectors record their choices)."""
        return entry_class("tokens", self.tokens)(self.tokens_settings)

    def make_scorer(self) -> Scorer:
        return entry_class("scorer", self.scorer)(self.scorer_settings)

    def make_allocation(self) -> Allocation:
        return entry_class("allocation", self.allocation)(self.allocation_settings)


@dataclass
class Target:
    """One weight to prune and the module whose input supplies its statistics."""

    weight_module: nn.Linear
    stats_module: nn.Module
    stats_key: str  # targets with the same key share one set of statistics (same input tensor)


TargetFn = Callable[[int, nn.Module], dict[str, Target]]
SampleContext = Callable[[CapturedSample], contextlib.AbstractContextManager]


def stats_keys(adapter: Adapter, names: list[str]) -> dict[str, str]:
    """For each linear name, the name whose input statistics it shares (the first of its group present)."""
    keys = {}
    for name in names:
        group = next((g for g in adapter.shared_inputs if name in g), (name,))
        keys[name] = next(n for n in group if n in names)
    return keys


def default_targets(adapter: Adapter) -> TargetFn:
    """Every prunable linear of a block, observed at its own input (shared inputs share statistics)."""

    def targets(block: int, layer: nn.Module) -> dict[str, Target]:
        linears = adapter.prunable_linears(layer)
        keys = stats_keys(adapter, list(linears))
        return {name: Target(lin, lin, keys[name]) for name, lin in linears.items()}

    return targets


@dataclass
class PruneReport:
    """What a pruning run did: per matrix the sparsity asked and achieved, per block what the token
    selector chose, what the allocation measured, times and peak memory."""

    sparsity: dict[str, float] = field(default_factory=dict)  # achieved, per matrix
    target_sparsity: dict[str, float] = field(default_factory=dict)  # asked by the allocation, per matrix
    parameters: dict[str, int] = field(default_factory=dict)  # weights per matrix
    selector_blocks: list[dict] = field(default_factory=list)  # per block, what a ranking selector chose
    unobserved: list[str] = field(default_factory=list)  # matrices no selected token reached: pruned by magnitude
    allocation: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0
    prepass_seconds: float = 0.0
    peak_memory_bytes: int = 0


@dataclass
class _Run:
    """What the passes over one block share."""

    layer: nn.Module
    index: int
    samples: list[CapturedSample]
    states: StateStore  # each sample's input to this block
    device: torch.device
    context: SampleContext
    adapter: Adapter
    held_dtype: torch.dtype | None = None  # the storage dtype of rows kept across samples (None: as computed)

    def replay(self, i: int, attention: bool = False) -> torch.Tensor:
        """Run sample ``i`` through the block (eager attention when its probabilities are recorded)."""
        sample = self.samples[i]
        hidden = self.states[i].to(self.device)
        call = sample.calls[self.index]
        if attention:
            call = eager_call(call, sample.seq_len, hidden.dtype, hidden.device)
        with self.context(sample):
            return run_block(self.layer, hidden, call)


def _hook_inputs(modules: dict[str, nn.Module], seen: dict[str, torch.Tensor],
                 outputs: dict[str, torch.Tensor] | None = None) -> list:
    """Forward hooks that put each module's input rows (and output rows) of the current replay in ``seen``."""

    def make(key: str):
        def hook(module, inputs, output):
            x = inputs[0]
            seen[key] = rows_by_position(x.reshape(-1, x.shape[-1]))
            if outputs is not None:
                outputs[key] = rows_by_position(output.reshape(-1, output.shape[-1]))
        return hook

    return [module.register_forward_hook(make(key)) for key, module in modules.items()]


def _stats_modules(block_targets: dict[str, Target], per_linear: bool) -> dict[str, nn.Module]:
    """The module observed for each statistics key, in the targets' order."""
    modules: dict[str, nn.Module] = {}
    for name, target in block_targets.items():
        modules.setdefault(name if per_linear else target.stats_key, target.stats_module)
    return modules


Positions = dict[str, dict[int, torch.Tensor]]  # per statistics key, per sample: the weight of each position


def _dense_pass(run: _Run, selector: TokenSelector, modules: dict[str, nn.Module], with_hessian: bool,
                keep_positions: bool) -> tuple[dict[str, InputStats], list[str], Positions]:
    """Run every sample through the (still dense) block, adding the selected input rows of each module to
    its statistics (an expert's rows stand at the positions of the tokens routed to it; a module a sample
    does not reach, such as an expert no token chose, adds nothing). Returns the statistics, the keys in
    the order their modules ran, and (with ``keep_positions``) each key's selected positions per sample that
    reached it, as weights (0 where not selected, 1 or the selector's weight where selected)."""
    stats: dict[str, InputStats] = {}
    order: list[str] = []
    positions: Positions = {key: {} for key in modules}
    seen: dict[str, torch.Tensor] = {}
    outputs: dict[str, torch.Tensor] = {}
    per_linear = isinstance(selector, PerLinearSelector)
    ranking = isinstance(selector, RankingSelector)
    handles = _hook_inputs(modules, seen, outputs if per_linear else None)
    attention = (recording_attention(run.adapter.attention_module(run.layer)) if selector.needs_attention
                 else contextlib.nullcontext({}))
    held: list[dict[str, torch.Tensor]] = []  # per sample, the ranked candidates' rows of each key
    ranked: list[torch.Tensor] = []

    def add(key: str, rows: torch.Tensor, weights: torch.Tensor | None = None) -> None:
        if key not in stats:
            stats[key] = InputStats.empty(rows.shape[-1], run.device, with_hessian)
        stats[key].add(rows, weights)

    try:
        with attention as record:
            for i, sample in enumerate(run.samples):
                seen.clear()
                out = run.replay(i, attention=selector.needs_attention)
                order.extend(k for k in seen if k not in order)
                if per_linear:
                    for key, rows in seen.items():
                        chosen = selector.select_linear(sample, outputs[key], record.get("probs")).to(rows.device)
                        add(key, rows[chosen])
                        if keep_positions:
                            positions[key][i] = chosen.cpu().float()
                    continue
                if ranking:
                    certain = selector.certain(sample, run.index)
                    candidate_order = selector.rank(i, sample, run.index, run.states[i].to(run.device), out,
                                                    record.get("probs"))
                    ranked.append(candidate_order)
                    held.append({key: rows[candidate_order.to(rows.device)].to(run.held_dtype or rows.dtype)
                                 for key, rows in seen.items()})
                    weights = None
                else:
                    certain = selector.positions(sample, run.index)
                    weights = selector.weights(sample, run.index)
                for key, rows in seen.items():
                    chosen = certain.to(rows.device)
                    add(key, rows[chosen], None if weights is None else weights.to(rows.device)[chosen])
                    if keep_positions and not ranking:
                        positions[key][i] = certain.cpu() * (1.0 if weights is None else weights.cpu())
    finally:
        for h in handles:
            h.remove()
    if ranking:
        for i, (count, rows_by_key) in enumerate(zip(selector.choose(run.index), held)):
            chosen = selector.certain(run.samples[i], run.index).clone()
            chosen[ranked[i][:count].cpu()] = True
            for key, rows in rows_by_key.items():
                add(key, rows[:count])
                if keep_positions:
                    positions[key][i] = chosen.float()
    return stats, order, positions


def _regather(run: _Run, key: str, module: nn.Module, positions: dict[int, torch.Tensor], with_hessian: bool
              ) -> InputStats | None:
    """Statistics of ``key`` from a pass over the block as it is now, at the positions chosen before, each
    counted by its weight (see :func:`_dense_pass`); None where no sample reaches the module now."""
    seen: dict[str, torch.Tensor] = {}
    handles = _hook_inputs({key: module}, seen)
    stats: InputStats | None = None
    try:
        for i in positions:
            seen.clear()
            run.replay(i)
            if key not in seen:
                continue
            rows = seen[key]
            if stats is None:
                stats = InputStats.empty(rows.shape[-1], run.device, with_hessian)
            weights = positions[i].to(rows.device)
            stats.add(rows[weights > 0], weights[weights > 0])
    finally:
        for h in handles:
            h.remove()
    return stats


def _observed(stats: InputStats | None) -> bool:
    """Whether any selected token reached the module with a non-zero input (an expert's rows stand at the
    positions of the tokens routed to it, zeros elsewhere)."""
    return stats is not None and bool(stats.sq_sum.any())


def _prune_weight(target: Target, scorer: Scorer, stats: InputStats | None, sparsity: float, pattern: Pattern
                  ) -> float:
    """Prune one weight in place; returns its achieved sparsity."""
    weight = target.weight_module.weight
    new = scorer.prune(weight.data, stats, sparsity, pattern)
    weight.data.copy_(new.to(weight.device, weight.dtype))
    return float((weight.data == 0).float().mean())


def achieved_sparsity(model: nn.Module, adapter: Adapter) -> dict[str, float]:
    """The fraction of zeros of every prunable linear of ``model``, by :func:`probe.core.record.linear_key`."""
    return {linear_key(b, name): float((lin.weight == 0).float().mean())
            for b, layer in enumerate(adapter.decoder_layers(model))
            for name, lin in adapter.prunable_linears(layer).items()}


def _peak_memory(device: torch.device) -> int:
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    import resource

    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024


def _allocate(config: PruneConfig, allocation: Allocation, layers: list[nn.Module], targets: TargetFn,
              samples: list[CapturedSample], run_device: torch.device, context: SampleContext, adapter: Adapter,
              show_progress: bool, sizes: dict[str, int], storage: ActivationStorage) -> dict[str, float]:
    """Every linear's sparsity; an allocation with a pre-pass first watches the dense model on every token.
    ``sizes`` receives every linear's number of weights."""
    if allocation.needs_prepass:
        states = storage.states([sample.hidden for sample in samples])
        try:
            _prepass(allocation, layers, targets, samples, states, run_device, context, adapter, show_progress, sizes)
        finally:
            states.close()
    else:
        for index, layer in enumerate(layers):
            sizes.update({linear_key(index, n): t.weight_module.weight.numel()
                          for n, t in targets(index, layer).items()})
    chosen = allocation.sparsities(config.sparsity, sizes)
    bad = {k: s for k, s in chosen.items() if not 0.0 <= s < 1.0}
    if bad:
        key, value = next(iter(bad.items()))
        raise AllocationError(f"allocation {allocation.name!r} gave {key} sparsity {value:.3f}, outside [0, 1); "
                              "lower the target or the allocation's spread")
    return chosen


def _prepass(allocation: Allocation, layers: list[nn.Module], targets: TargetFn, samples: list[CapturedSample],
             states: StateStore, run_device: torch.device, context: SampleContext, adapter: Adapter,
             show_progress: bool, sizes: dict[str, int]) -> None:
    """The allocation's dense pre-pass: it observes every linear's input on every token, block by block."""
    label = f"{allocation.name} allocation"
    with progress_bar(label, len(layers), show_progress) as bar:
        for index, layer in enumerate(layers):
            block_targets = targets(index, layer)
            sizes.update({linear_key(index, n): t.weight_module.weight.numel() for n, t in block_targets.items()})
            home = next(layer.parameters()).device
            layer.to(run_device)
            run = _Run(layer, index, samples, states, run_device, context, adapter)
            modules = _stats_modules(block_targets, per_linear=False)
            seen: dict[str, torch.Tensor] = {}
            handles = _hook_inputs(modules, seen)
            try:
                for i, sample in enumerate(samples):
                    seen.clear()
                    out = run.replay(i)
                    for name, target in block_targets.items():
                        if target.stats_key in seen:  # an expert no token of this sample chose sees nothing
                            allocation.observe(index, name, sample, seen[target.stats_key], target.weight_module)
                    states[i] = out
            finally:
                for h in handles:
                    h.remove()
            allocation.finish_block(index, {n: t.weight_module for n, t in block_targets.items()})
            layer.to(home)
            bar.advance()


def _prune_block(run: _Run, block_targets: dict[str, Target], config: PruneConfig, selector: TokenSelector,
                 scorer: Scorer, magnitude: Scorer, report: PruneReport, with_hessian: bool, per_linear: bool) -> None:
    """Gather one block's statistics on its dense pass and prune its linears, group by group."""
    gathers = scorer.needs != "nothing"
    stats: dict[str, InputStats] = {}
    modules = _stats_modules(block_targets, per_linear)
    if gathers:
        stats, order, positions = _dense_pass(run, selector, modules, with_hessian, config.true_sequential)
        order += [key for key in modules if key not in order]  # modules the forward did not reach
        if isinstance(selector, RankingSelector):
            report.selector_blocks.append(selector.block_record(run.index))
    else:
        order = list(modules)
    for position, key in enumerate(order):
        if config.true_sequential and position > 0:
            stats[key] = _regather(run, key, modules[key], positions[key], with_hessian)
        for name, target in block_targets.items():
            if (name if per_linear else target.stats_key) == key:
                matrix = linear_key(run.index, name)
                weight_scorer = scorer
                if gathers and not _observed(stats.get(key)):  # an expert no selected token was routed to
                    weight_scorer = magnitude
                    report.unobserved.append(matrix)
                report.sparsity[matrix] = _prune_weight(target, weight_scorer, stats.get(key),
                                                        report.target_sparsity[matrix], config.parsed_pattern)
        stats.pop(key, None)


@torch.no_grad()
def prune(
    model: nn.Module,
    adapter: Adapter,
    samples: list[CapturedSample],
    config: PruneConfig,
    targets: TargetFn | None = None,
    selector: TokenSelector | None = None,
    device: torch.device | str | None = None,
    show_progress: bool = True,
    sample_context: SampleContext | None = None,
    storage: ActivationStorage | None = None,
) -> PruneReport:
    """Prune the decoder blocks of ``model`` in place, block by block.

    ``samples`` are the captured block-0 inputs (see :func:`probe.calibration.capture.capture`); they are left as
    they are: a copy of each hidden state advances through the pruned blocks (the last block needs no
    propagation), so the same samples serve any number of runs.
    ``device`` is where blocks run: if it differs from where a block lives (offload mode), the block
    is moved there for its passes and moved back afterwards. ``sample_context`` wraps every replay of a
    sample (the MoT probe routes tokens by the sample's modality mask there). ``storage`` says how the
    hidden states kept between blocks are stored (default: in memory, as computed; see
    :mod:`probe.calibration.activation_store`).
    """
    context = sample_context or (lambda sample: contextlib.nullcontext())
    storage = storage or ActivationStorage()
    targets = targets or default_targets(adapter)
    selector = selector or config.make_selector()
    scorer = config.make_scorer()
    magnitude = entry_class("scorer", "magnitude")(None)  # for a matrix no selected token reached
    allocation = config.make_allocation()
    layers = adapter.decoder_layers(model)
    gathers = scorer.needs != "nothing"
    if config.needs_calibration and not samples:
        raise PruneConfigError(f"{config.label} needs calibration samples")
    if gathers:
        check_not_empty(selector, samples)
    if gathers and selector.needs_attention:
        for layer in layers:
            adapter.attention_module(layer)  # a block without attention probabilities is refused before work
    selector.start(len(layers))
    run_device = torch.device(device) if device is not None else next(layers[0].parameters()).device
    if run_device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(run_device)
    report = PruneReport()
    start = time.perf_counter()
    report.target_sparsity = _allocate(config, allocation, layers, targets, samples, run_device, context, adapter,
                                       show_progress, report.parameters, storage)
    report.allocation = allocation.record()
    report.prepass_seconds = time.perf_counter() - start
    per_linear = isinstance(selector, PerLinearSelector)
    with_hessian = scorer.needs == "hessian"
    states = storage.states([sample.hidden for sample in samples])  # each sample's input to the current block
    try:
        with progress_bar(f"{config.label} {config.sparsity:g} {config.pattern}", len(layers), show_progress) as bar:
            for index, layer in enumerate(layers):
                home = next(layer.parameters()).device
                layer.to(run_device)
                run = _Run(layer, index, samples, states, run_device, context, adapter, storage.dtype)
                _prune_block(run, targets(index, layer), config, selector, scorer, magnitude, report,
                             with_hessian, per_linear)
                if gathers and index < len(layers) - 1:
                    for i in range(len(samples)):
                        states[i] = run.replay(i)
                layer.to(home)
                bar.advance()
    finally:
        states.close()
    report.seconds = time.perf_counter() - start
    report.peak_memory_bytes = _peak_memory(run_device)
    return report

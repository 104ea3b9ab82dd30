"""The sequential pruning loop: for each decoder block, a dense pass that accumulates statistics over
the pool's positions, the pruning of the block's linears, then a propagation pass so that the next
block sees the pruned block's outputs. The engine never knows the model family: the adapter says
where the blocks and linears are; ``targets`` says which weights to prune and where their inputs are
observed (the MoT probe prunes one pathway's copies while observing the shared routed input).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

from probe.attention import eager_call, recording_attention
from probe.atv import AtvPool, AtvSettings
from probe.capture import CapturedSample, run_block
from probe.errors import ProbeError
from probe.models.base import Adapter
from probe.names import METHODS, POOLS
from probe.pools import Pool, PoolError, check_not_empty, get_pool
from probe.progress import progress_bar
from probe.sparsity.masks import Pattern, check_sparsity, magnitude_mask, mask_from_scores, parse_pattern
from probe.sparsity.sparsegpt import sparsegpt_prune
from probe.sparsity.stats import InputStats, wanda_scores
from probe.tamp import TampPool

OWN_POOL = {"atv": "atv", "tamp": "tamp"}  # methods that are a pool with Wanda scores


class PruneConfigError(ProbeError):
    """Invalid pruning settings."""


@dataclass(frozen=True)
class PruneConfig:
    """Validated settings of one pruning run.

    ``method="atv"`` is ATV-Pruning: Wanda scores over the ``atv`` pool. ``pool`` defaults to ``atv``
    for it and to ``mixed`` otherwise; ``pool="atv"`` with ``method="sparsegpt"`` feeds the ATV pool
    to SparseGPT's Hessian (an extension of the paper).
    """

    method: str = "wanda"
    sparsity: float = 0.5
    pattern: str = "unstructured"
    pool: str = ""
    blocksize: int = 128
    percdamp: float = 0.01
    atv: AtvSettings = field(default_factory=AtvSettings)

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise PruneConfigError(f"unknown method {self.method!r}; choose from {', '.join(METHODS)}")
        check_sparsity(self.sparsity, self.parsed_pattern)
        if not self.pool:
            object.__setattr__(self, "pool", OWN_POOL.get(self.method, "mixed"))
        if self.pool not in POOLS:
            raise PoolError(f"unknown pool {self.pool!r}; choose from {', '.join(POOLS)}")
        if self.method in OWN_POOL and self.pool != OWN_POOL[self.method]:
            raise PruneConfigError(
                f"method {self.method!r} selects its own tokens; it cannot use the {self.pool!r} pool")

    @property
    def parsed_pattern(self) -> Pattern:
        return parse_pattern(self.pattern)

    @property
    def needs_calibration(self) -> bool:
        return self.method != "magnitude"

    @property
    def scorer(self) -> str:
        """How weights are scored: magnitude, wanda or sparsegpt (ATV scores with Wanda)."""
        return "wanda" if self.method in OWN_POOL else self.method

    def make_pool(self) -> Pool:
        """A fresh pool for one run (dynamic pools record their choices)."""
        if self.pool == "atv":
            return AtvPool(self.atv)
        if self.pool == "tamp":
            return TampPool()
        return get_pool(self.pool)


@dataclass
class Target:
    """One weight to prune and the module whose input supplies its statistics."""

    weight_module: nn.Linear
    stats_module: nn.Module
    stats_key: str  # targets with the same key share one set of statistics (same input tensor)


TargetFn = Callable[[int, nn.Module], dict[str, Target]]


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
    """What a pruning run did: achieved sparsity per matrix, time, memory."""

    sparsity: dict[str, float] = field(default_factory=dict)
    seconds: float = 0.0
    peak_memory_bytes: int = 0
    pool_records: list[dict] = field(default_factory=list)  # per block, what a dynamic pool chose


def _observe(targets: dict[str, Target], stats: dict[str, InputStats], current: dict, with_hessian: bool, device,
             per_linear: bool = False):
    """Register forward hooks that add the certain pooled input rows of each stats module to its statistics
    and keep the rows of uncertain positions (a dynamic pool's candidates) in ``current["kept"]``. For a
    per-linear pool, every target keeps its whole input and output in ``current["io"]`` instead."""
    handles = []
    seen: set[str] = set()
    for name, target in targets.items():
        key = name if per_linear else target.stats_key
        if key in seen:
            continue
        seen.add(key)

        def hook(module, inputs, output, key=key):
            x = inputs[0]
            rows = x.reshape(-1, x.shape[-1])
            if key not in stats:
                stats[key] = InputStats.empty(x.shape[-1], device, with_hessian)
            if per_linear:
                current["io"][key] = (rows, output.reshape(-1, output.shape[-1]))
                return
            stats[key].add(rows[current["certain"].to(x.device)])
            if current["uncertain"] is not None:
                current["kept"][key] = rows[current["uncertain"].to(x.device)]

        handles.append(target.stats_module.register_forward_hook(hook))
    return handles


def _dense_pass(layer, index: int, samples: list[CapturedSample], states: list[torch.Tensor], pool: Pool,
                stats: dict[str, InputStats], block_targets: dict[str, Target], with_hessian: bool, run_device,
                context, adapter: Adapter) -> None:
    """Run every sample through the (still dense) block, accumulating the pool's statistics. A dynamic
    pool ranks each sample's candidates from the block's input and output (and attention, run eagerly
    for it); the chosen ones are added once every sample was seen. ``states`` holds each sample's input
    to this block."""
    current: dict = {}
    candidates: list[dict[str, torch.Tensor]] = []
    handles = _observe(block_targets, stats, current, with_hessian, run_device, pool.per_linear)
    attention = (recording_attention(adapter.attention_module(layer)) if pool.needs_attention
                 else contextlib.nullcontext({}))
    try:
        with attention as record:
            for i, sample in enumerate(samples):
                current.update(certain=pool.certain(sample, index), uncertain=pool.uncertain(sample, index), kept={},
                               io={})
                hidden = states[i].to(run_device)
                call = sample.calls[index]
                if pool.needs_attention:
                    call = eager_call(call, sample.seq_len, hidden.dtype, hidden.device)
                with context(sample):
                    out = run_block(layer, hidden, call)
                for key, (rows, outputs) in current["io"].items():
                    chosen = pool.select_linear(sample, outputs, record.get("probs"))
                    stats[key].add(rows[chosen.to(rows.device)])
                if pool.dynamic:
                    order = pool.rank(i, sample, index, hidden, out, record.get("probs"))
                    slot = torch.full((sample.seq_len,), -1, dtype=torch.long)
                    slot[current["uncertain"].nonzero().flatten()] = torch.arange(int(current["uncertain"].sum()))
                    rows = slot[order]
                    candidates.append({key: kept[rows.to(kept.device)] for key, kept in current["kept"].items()})
    finally:
        for h in handles:
            h.remove()
    if pool.dynamic:
        for count, kept in zip(pool.choose(index), candidates):
            for key, rows in kept.items():
                stats[key].add(rows[:count])


def _prune_target(target: Target, stats: InputStats | None, config: PruneConfig) -> float:
    """Prune one weight in place; returns its achieved sparsity."""
    weight = target.weight_module.weight
    pattern = config.parsed_pattern
    if config.method == "magnitude":
        mask = magnitude_mask(weight.data, config.sparsity, pattern)
        new = weight.data.masked_fill(mask, 0)
    elif config.scorer == "wanda":
        scores = wanda_scores(weight.data, stats.column_norms())
        mask = mask_from_scores(scores, config.sparsity, pattern)
        new = weight.data.masked_fill(mask.to(weight.device), 0)
    else:
        new, _ = sparsegpt_prune(
            weight.data, stats.hessian(), config.sparsity, pattern, config.blocksize, config.percdamp
        )
    weight.data.copy_(new.to(weight.dtype))
    return float((weight.data == 0).float().mean())


def _peak_memory(device: torch.device) -> int:
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    import resource

    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024


@torch.no_grad()
def prune(
    model: nn.Module,
    adapter: Adapter,
    samples: list[CapturedSample],
    config: PruneConfig,
    targets: TargetFn | None = None,
    pool: Pool | None = None,
    device: torch.device | str | None = None,
    show_progress: bool = True,
    sample_context: Callable[[CapturedSample], contextlib.AbstractContextManager] | None = None,
) -> PruneReport:
    """Prune the decoder blocks of ``model`` in place, block by block.

    ``samples`` are the captured block-0 inputs (see :func:`probe.capture.capture`); they are left as
    they are: a copy of each hidden state advances through the pruned blocks (the last block needs no
    propagation), so the same samples serve any number of runs.
    ``device`` is where blocks run: if it differs from where a block lives (offload mode), the block
    is moved there for its two passes and moved back afterwards. ``sample_context`` wraps every
    replay of a sample (the MoT probe routes tokens by the sample's modality mask there).
    """
    context = sample_context or (lambda sample: contextlib.nullcontext())
    targets = targets or default_targets(adapter)
    pool = pool or config.make_pool()
    layers = adapter.decoder_layers(model)
    if config.needs_calibration:
        if not samples:
            raise PruneConfigError(f"method {config.method!r} needs calibration samples")
        check_not_empty(pool, samples)
    pool.start(len(layers))
    run_device = torch.device(device) if device is not None else next(layers[0].parameters()).device
    if run_device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(run_device)
    report = PruneReport()
    states = [sample.hidden for sample in samples]  # each sample's input to the current block
    start = time.perf_counter()
    with progress_bar(f"{config.method} {config.sparsity:g} {config.pattern}", len(layers), show_progress) as bar:
        for index, layer in enumerate(layers):
            home = next(layer.parameters()).device
            layer.to(run_device)
            block_targets = targets(index, layer)
            stats: dict[str, InputStats] = {}
            if config.needs_calibration:
                _dense_pass(layer, index, samples, states, pool, stats, block_targets, config.scorer == "sparsegpt",
                            run_device, context, adapter)
                if pool.dynamic:
                    report.pool_records.append(pool.block_record(index))
            for name, target in block_targets.items():
                report.sparsity[f"layers.{index}.{name}"] = _prune_target(
                    target, stats.get(name if pool.per_linear else target.stats_key), config
                )
            if config.needs_calibration and index < len(layers) - 1:
                for i, sample in enumerate(samples):
                    with context(sample):
                        out = run_block(layer, states[i].to(run_device), sample.calls[index])
                    states[i] = out.to(sample.hidden.device)
            layer.to(home)
            bar.advance()
    report.seconds = time.perf_counter() - start
    report.peak_memory_bytes = _peak_memory(run_device)
    return report

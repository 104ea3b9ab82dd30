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

from probe.capture import CapturedSample, run_block
from probe.models.base import Adapter
from probe.pools import Pool, check_not_empty, get_pool
from probe.progress import progress_bar
from probe.sparsity.masks import Pattern, check_sparsity, magnitude_mask, mask_from_scores, parse_pattern
from probe.sparsity.sparsegpt import sparsegpt_prune
from probe.sparsity.stats import InputStats, wanda_scores

METHODS: tuple[str, ...] = ("magnitude", "wanda", "sparsegpt")


class PruneConfigError(ValueError):
    """Invalid pruning settings."""


@dataclass(frozen=True)
class PruneConfig:
    """Validated settings of one pruning run."""

    method: str = "wanda"
    sparsity: float = 0.5
    pattern: str = "unstructured"
    pool: str = "mixed"
    blocksize: int = 128
    percdamp: float = 0.01

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise PruneConfigError(f"unknown method {self.method!r}; choose from {', '.join(METHODS)}")
        check_sparsity(self.sparsity, self.parsed_pattern)
        get_pool(self.pool)

    @property
    def parsed_pattern(self) -> Pattern:
        return parse_pattern(self.pattern)

    @property
    def needs_calibration(self) -> bool:
        return self.method != "magnitude"


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


def _observe(targets: dict[str, Target], stats: dict[str, InputStats], current: dict, with_hessian: bool, device):
    """Register forward hooks that add the pooled input rows of each stats module to its statistics."""
    handles = []
    seen: set[str] = set()
    for target in targets.values():
        key = target.stats_key
        if key in seen:
            continue
        seen.add(key)

        def hook(module, inputs, output, key=key):
            x = inputs[0]
            rows = x.reshape(-1, x.shape[-1])[current["positions"].to(x.device)]
            if key not in stats:
                stats[key] = InputStats.empty(x.shape[-1], device, with_hessian)
            stats[key].add(rows)

        handles.append(target.stats_module.register_forward_hook(hook))
    return handles


def _prune_target(target: Target, stats: InputStats | None, config: PruneConfig) -> float:
    """Prune one weight in place; returns its achieved sparsity."""
    weight = target.weight_module.weight
    pattern = config.parsed_pattern
    if config.method == "magnitude":
        mask = magnitude_mask(weight.data, config.sparsity, pattern)
        new = weight.data.masked_fill(mask, 0)
    elif config.method == "wanda":
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

    ``samples`` are the captured block-0 inputs (see :func:`probe.capture.capture`); their hidden
    states are advanced through each pruned block (the last block needs no propagation).
    ``device`` is where blocks run: if it differs from where a block lives (offload mode), the block
    is moved there for its two passes and moved back afterwards. ``sample_context`` wraps every
    replay of a sample (the MoT probe routes tokens by the sample's modality mask there).
    """
    context = sample_context or (lambda sample: contextlib.nullcontext())
    targets = targets or default_targets(adapter)
    pool = pool or get_pool(config.pool)
    layers = adapter.decoder_layers(model)
    if config.needs_calibration:
        if not samples:
            raise PruneConfigError(f"method {config.method!r} needs calibration samples")
        check_not_empty(pool, samples)
    run_device = torch.device(device) if device is not None else next(layers[0].parameters()).device
    if run_device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(run_device)
    report = PruneReport()
    start = time.perf_counter()
    with progress_bar(f"{config.method} {config.sparsity:g} {config.pattern}", len(layers), show_progress) as bar:
        for index, layer in enumerate(layers):
            home = next(layer.parameters()).device
            layer.to(run_device)
            block_targets = targets(index, layer)
            stats: dict[str, InputStats] = {}
            if config.needs_calibration:
                current: dict = {}
                handles = _observe(block_targets, stats, current, config.method == "sparsegpt", run_device)
                try:
                    for sample in samples:
                        current["positions"] = pool.positions(sample, index)
                        with context(sample):
                            run_block(layer, sample.hidden.to(run_device), sample.calls[index])
                finally:
                    for h in handles:
                        h.remove()
            for name, target in block_targets.items():
                report.sparsity[f"layers.{index}.{name}"] = _prune_target(
                    target, stats.get(target.stats_key), config
                )
            if config.needs_calibration and index < len(layers) - 1:
                for sample in samples:
                    with context(sample):
                        out = run_block(layer, sample.hidden.to(run_device), sample.calls[index])
                    sample.hidden = out.to(sample.hidden.device)
            layer.to(home)
            bar.advance()
    report.seconds = time.perf_counter() - start
    report.peak_memory_bytes = _peak_memory(run_device)
    return report

"""The peak memory of a pruning run, predicted from the model's shapes, the calibration lengths and the
settings, before any weight is loaded; and the plan (offload, activation storage dtype, disk spill) that fits.

The prediction adds up what the sequential engine (:mod:`probe.pruning.engine`) holds at its busiest moment:

- **weights**: the whole model where it lives; with offload, one block (the largest) on the run device too;
- **activations**: every sample's captured block-0 input and the copy that advances through the blocks,
  in the storage dtype, with the rotary position tables the captured calls keep (on disk when spilled);
- **replay**: one sample through one block, the block's intermediate tensors, the input rows the hooks
  keep for every statistics key, their float32 copies for the statistics; eager attention where the
  method reads attention probabilities (ABS, TAMP): the mask, the logits and the probabilities;
- **statistics**: per statistics key of a block, the squared column sums, and SparseGPT's Hessians;
- **method extras**: ATV's ranked candidates' rows of every sample (its second pass), SparseGPT's inverse
  Hessian factors and float32 weight copies while a matrix is pruned, TAMP's per-linear outputs and its
  float64 pre-pass, OWL's per-block Wanda scores, the MoT probe's private pathway copies.

Each term is a formula of its own (:func:`predict`), so a reader can check it against the code it models.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from probe.core.manifest import human_bytes
from probe.errors import ProbeError
from probe.models.base import Adapter

FLOAT32 = 4
FLOAT64 = 8


class MemoryPlanError(ProbeError):
    """A run predicted not to fit in the memory available."""


@dataclass(frozen=True)
class BlockShape:
    """What one decoder block holds: its parameters, its prunable linears and their shared inputs."""

    params: int
    linears: dict[str, tuple[int, int]]  # name -> (d_in, d_out)
    stats_inputs: dict[str, int]  # statistics key -> d_in (linears sharing an input share a key)
    pathway_params: int  # weights of the linears the MoT probe replicates


@dataclass(frozen=True)
class ModelShape:
    """The sizes a memory prediction needs, read from a model (a meta-device one will do)."""

    total_params: int
    blocks: tuple[BlockShape, ...]
    hidden: int
    intermediate: int  # the widest linear input of a block (an MLP's down projection)
    heads: int
    head_dim: int

    @property
    def largest_block(self) -> BlockShape:
        return max(self.blocks, key=lambda b: b.params)


def _text_config(config: Any) -> Any:
    return getattr(config, "text_config", None) or config


def model_shape(model: nn.Module, adapter: Adapter) -> ModelShape:
    """The shapes of ``model`` (its parameters may live on the ``meta`` device: nothing is read)."""
    from probe.pruning.engine import stats_keys

    blocks = []
    for layer in adapter.decoder_layers(model):
        linears = adapter.prunable_linears(layer)
        keys = stats_keys(adapter, list(linears))
        shapes = {name: (int(lin.weight.shape[1]), int(lin.weight.shape[0])) for name, lin in linears.items()}
        pathway = set(adapter.pathway_linears(layer=layer))
        blocks.append(BlockShape(
            params=sum(p.numel() for p in layer.parameters()),
            linears=shapes,
            stats_inputs={keys[name]: shapes[name][0] for name in shapes},
            pathway_params=sum(d_in * d_out for name, (d_in, d_out) in shapes.items() if name in pathway),
        ))
    text = _text_config(model.config)
    hidden = int(adapter.final_norm(model).weight.shape[0])
    heads = int(getattr(text, "num_attention_heads", 1) or 1)
    head_dim = int(getattr(text, "head_dim", None) or hidden // heads)
    widest = max((d_in for b in blocks for d_in, _ in b.linears.values()), default=hidden)
    return ModelShape(total_params=sum(p.numel() for p in model.parameters()), blocks=tuple(blocks), hidden=hidden,
                      intermediate=widest, heads=heads, head_dim=head_dim)


@dataclass(frozen=True)
class MethodNeeds:
    """What a pruning configuration makes the engine keep, as far as memory goes."""

    statistics: bool = True  # a dense pass with input statistics (every scorer but magnitude)
    hessian: bool = False  # SparseGPT
    attention: bool = False  # eager attention probabilities (ABS selection, TAMP)
    per_linear_outputs: bool = False  # TAMP's token selection reads every linear's outputs
    ranked: tuple[float, str, float] | None = None  # ATV (alpha, budget rule, text ratio): rows wait for the budget
    prepass: str = ""  # "owl" (Wanda scores per block), "tamp" (float64 outputs), "" (none)
    mot_pathway: bool = False  # the MoT probe's private pathway copies

    @classmethod
    def of(cls, config: Any, mot_pathway: bool = False) -> MethodNeeds:
        """The needs of a :class:`probe.pruning.engine.PruneConfig`."""
        from probe.core.registry import entry_class
        from probe.pruning.tokens.base import PerLinearSelector, RankingSelector

        scorer = entry_class("scorer", config.scorer)
        selector = config.make_selector()
        allocation = entry_class("allocation", config.allocation)
        ranked = None
        if isinstance(selector, RankingSelector) and scorer.needs != "nothing":
            settings = selector.settings
            ranked = (float(settings.alpha), str(settings.k_rule), float(settings.text_ratio))
        return cls(
            statistics=scorer.needs != "nothing",
            hessian=scorer.needs == "hessian",
            attention=scorer.needs != "nothing" and bool(selector.needs_attention),
            per_linear_outputs=isinstance(selector, PerLinearSelector),
            ranked=ranked,
            prepass=allocation.name if allocation.needs_prepass else "",
            mot_pathway=mot_pathway,
        )


@dataclass(frozen=True)
class StoragePlan:
    """Where a run keeps what: the model's dtype, the dtype of stored activations, offload and disk spill."""

    model_dtype: torch.dtype = torch.float32
    activation_dtype: torch.dtype | None = None  # None: the model's dtype
    offload: bool = False  # weights on the host, each block moved to the run device for its passes
    spill: bool = False  # stored activations in a memory-mapped file on disk
    run_device: str = "cpu"

    @property
    def stored_dtype(self) -> torch.dtype:
        return self.activation_dtype or self.model_dtype

    def describe(self) -> str:
        parts = [f"--offload {'on' if self.offload else 'off'}"]
        parts.append(f"--activation-dtype {str(self.stored_dtype).removeprefix('torch.')}")
        if self.spill:
            parts.append("--spill-activations")
        return " ".join(parts)


def _bytes(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype).element_size()


@dataclass
class MemoryEstimate:
    """Predicted bytes per term, on the run device and on the host (the same place on a CPU run)."""

    device: dict[str, int] = field(default_factory=dict)
    host: dict[str, int] = field(default_factory=dict)
    disk: int = 0
    same_place: bool = True

    @property
    def device_peak(self) -> int:
        return sum(self.device.values()) + (sum(self.host.values()) if self.same_place else 0)

    @property
    def host_peak(self) -> int:
        return self.device_peak if self.same_place else sum(self.host.values())

    def summary(self) -> str:
        if self.same_place:
            return f"{human_bytes(self.device_peak)}"
        return f"{human_bytes(self.device_peak)} on the device, {human_bytes(self.host_peak)} on the host"

    def as_dict(self) -> dict[str, Any]:
        return {"device": dict(self.device), "host": dict(self.host), "disk": self.disk,
                "device_peak": self.device_peak, "host_peak": self.host_peak, "same_place": self.same_place}


def ranked_rows(n_text: int, n_visual: int, alpha: float, rule: str, text_ratio: float) -> int:
    """Rows of one sample that ATV keeps until the block's budget is known: the largest visual budget any
    drift can give, and the ranked text tokens when the text ratio is below 1."""
    from probe.pruning.sparsity.selection import budget_bound, kept_text_count

    text = 0 if text_ratio == 1.0 else kept_text_count(n_text, text_ratio)
    return budget_bound(n_text, n_visual, alpha, rule) + text


def _replay_bytes(shape: ModelShape, block: BlockShape, length: int, needs: MethodNeeds, model_bytes: int) -> int:
    """One sample through one block on the dense pass: the input rows the hooks keep for every statistics
    key and their float32 squares, TAMP's per-linear outputs, and the larger of the block's two busy
    moments: the MLP (gate, up and activation) or, where attention probabilities are read, eager attention
    (the mask; two live copies of the scores as they become probabilities, a float32 one while the softmax
    runs; the previous sample's recorded float32 probabilities) or TAMP's token selection (its token-by-token
    distance and kernel matrices in float64)."""
    h, i = shape.hidden, shape.intermediate
    kept_inputs = sum(block.stats_inputs.values()) * length * model_bytes
    widest = max(block.stats_inputs.values())
    to_float = 2 * length * widest * FLOAT32 if model_bytes != FLOAT32 else length * widest * FLOAT32
    mlp = length * (3 * i + 6 * h) * model_bytes
    attention = 0
    if needs.attention:
        scores = shape.heads * length * length
        attention = length * length * model_bytes + scores * (FLOAT32 + max(2 * model_bytes, model_bytes + FLOAT32))
        attention += length * 6 * h * model_bytes
    selection = 0
    if needs.per_linear_outputs:  # TAMP picks each linear's tokens after the replay, from its float64 outputs
        widest_out = max(d_out for _, d_out in block.linears.values())
        selection = (shape.heads * length * length * FLOAT32 + 5 * length * length * FLOAT64
                     + 2 * length * widest_out * FLOAT64)  # recorded probabilities; token-by-token matrices
    total = kept_inputs + to_float + max(mlp, attention, selection)
    if needs.per_linear_outputs:
        total += sum(d_out for _, d_out in block.linears.values()) * length * model_bytes
    return total


def _statistics_bytes(block: BlockShape, needs: MethodNeeds) -> int:
    """Every statistics key of a block at the end of its dense pass."""
    stats = sum(block.stats_inputs.values()) * FLOAT32
    if needs.hessian:
        stats += sum(d * d for d in block.stats_inputs.values()) * FLOAT32
    return stats


def _pruning_bytes(block: BlockShape, needs: MethodNeeds) -> int:
    """Pruning a block's largest matrix: float32 copies of the weight and its scores; for SparseGPT the
    matrix's accumulated ``X^T X``, the Hessian, its damped copy, its Cholesky factor and the inverse."""
    largest_in, largest_out = max(block.linears.values(), key=lambda s: s[0] * s[1])
    total = 3 * largest_in * largest_out * FLOAT32
    if needs.hessian:
        widest = max(block.stats_inputs.values())
        total += 5 * widest * widest * FLOAT32
    return total


def _prepass_bytes(shape: ModelShape, block: BlockShape, length: int, needs: MethodNeeds, model_bytes: int) -> int:
    """The allocation's dense pre-pass over one block: the larger of a plain replay with the hooked inputs
    and the allocation's own work (OWL at the end of the block, TAMP on every linear during the replay)."""
    h, i = shape.hidden, shape.intermediate
    replay = length * (3 * i + 6 * h) * model_bytes + sum(block.stats_inputs.values()) * length * model_bytes
    params = [d_in * d_out for d_in, d_out in block.linears.values()]
    if needs.prepass == "owl":  # every linear's float32 Wanda scores; one matrix's float64 copy and comparison
        return max(replay, sum(params) * FLOAT32 + max(params) * (FLOAT64 + 1))
    if needs.prepass == "tamp":  # float64 weight, inputs and outputs (raw and normalised) of one linear
        largest = max(d_out * d_in + length * (d_in + 2 * d_out) for d_in, d_out in block.linears.values())
        return replay + largest * FLOAT64
    return 0


def predict(shape: ModelShape, lengths: Sequence[int], visual: Sequence[int], needs: MethodNeeds,
            plan: StoragePlan) -> MemoryEstimate:
    """The predicted peak of a pruning run over samples of ``lengths`` tokens (``visual`` of them visual):
    what stays for the whole run (weights, stored activations) plus the largest of the moments it passes
    through (the pre-pass, a block's dense pass, the pruning of its largest matrix)."""
    model_bytes = _bytes(plan.model_dtype)
    stored_bytes = _bytes(plan.stored_dtype)
    tokens = sum(lengths)
    longest = max(lengths, default=0)
    block = shape.largest_block
    on_device = plan.run_device != "cpu"
    estimate = MemoryEstimate(same_place=not (on_device and plan.offload))
    weights = shape.total_params * model_bytes
    if needs.mot_pathway:
        weights += sum(b.pathway_params for b in shape.blocks) * model_bytes
    if plan.offload and on_device:
        estimate.host["weights"] = weights
        estimate.device["weights (one block)"] = block.params * model_bytes
    else:
        estimate.device["weights"] = weights
    if not (needs.statistics or needs.prepass):  # nothing is captured
        estimate.device["pruning"] = _pruning_bytes(block, needs)
        return estimate
    stored = 2 * tokens * shape.hidden * stored_bytes  # the captured block-0 inputs and the advancing copy
    place = estimate.host if plan.offload else estimate.device
    if plan.spill:
        estimate.disk = stored
        place["activations (the samples in use)"] = 2 * 2 * longest * shape.hidden * stored_bytes
    else:
        place["activations"] = stored
    place["position tables"] = 2 * tokens * shape.head_dim * model_bytes
    dense_pass = _replay_bytes(shape, block, longest, needs, model_bytes) + _statistics_bytes(block, needs)
    if needs.ranked is not None:
        rows = sum(ranked_rows(n - v, v, *needs.ranked) for n, v in zip(lengths, visual))
        dense_pass += rows * sum(block.stats_inputs.values()) * stored_bytes
    moments = {"a block's dense pass": dense_pass if needs.statistics else 0,
               "pruning a matrix": _pruning_bytes(block, needs),
               "the allocation's pre-pass": _prepass_bytes(shape, block, longest, needs, model_bytes)}
    busiest = max(moments, key=moments.get)
    estimate.device[busiest] = moments[busiest]
    return estimate


def host_available() -> int:
    """Bytes the host can still give this process (Linux ``MemAvailable``; total memory elsewhere)."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def device_available(device: str) -> int:
    """Free bytes on ``device`` (a CUDA device's free memory; the host's for the CPU)."""
    if torch.device(device).type == "cuda":
        free, _ = torch.cuda.mem_get_info(torch.device(device))
        return int(free)
    return host_available()


def candidate_plans(model_dtype: torch.dtype, run_device: str) -> list[StoragePlan]:
    """The plans ``--offload auto`` tries, cheapest in time first: everything in place; offload (GPU); then
    bfloat16 activations; then activations spilled to disk."""
    on_device = torch.device(run_device).type != "cpu"
    plans = [StoragePlan(model_dtype, None, False, False, run_device)]
    if on_device:
        plans.append(StoragePlan(model_dtype, None, True, False, run_device))
    half = torch.bfloat16 if model_dtype == torch.float32 else model_dtype
    for offload in ([False, True] if on_device else [False]):
        plans.append(StoragePlan(model_dtype, half, offload, False, run_device))
    for offload in ([False, True] if on_device else [False]):
        plans.append(StoragePlan(model_dtype, half, offload, True, run_device))
    unique: list[StoragePlan] = []
    for plan in plans:
        if plan not in unique:
            unique.append(plan)
    return unique


def fits(estimate: MemoryEstimate, device_free: int, host_free: int) -> bool:
    if estimate.same_place:
        return estimate.device_peak <= device_free
    return estimate.device_peak <= device_free and estimate.host_peak <= host_free


def choose_plan(shape: ModelShape, lengths: Sequence[int], visual: Sequence[int], needs: MethodNeeds,
                given: StoragePlan, auto: bool, device_free: int, host_free: int) -> tuple[StoragePlan, MemoryEstimate]:
    """The plan a run uses: ``given`` if it fits; with ``auto``, the first of :func:`candidate_plans` that fits.
    Raises :class:`MemoryPlanError` (one line: the predicted peak, the memory available and settings that
    would fit) when none does."""
    estimate = predict(shape, lengths, visual, needs, given)
    if fits(estimate, device_free, host_free):
        return given, estimate
    if auto:
        for plan in candidate_plans(given.model_dtype, given.run_device):
            candidate = predict(shape, lengths, visual, needs, plan)
            if fits(candidate, device_free, host_free):
                return plan, candidate
    raise MemoryPlanError(_refusal(shape, lengths, visual, needs, given, estimate, device_free, host_free, auto))


def _refusal(shape: ModelShape, lengths: Sequence[int], visual: Sequence[int], needs: MethodNeeds,
             given: StoragePlan, estimate: MemoryEstimate, device_free: int, host_free: int, auto: bool) -> str:
    available = (human_bytes(device_free) if estimate.same_place
                 else f"{human_bytes(device_free)} on the device, {human_bytes(host_free)} on the host")
    suggestions = []
    for plan in candidate_plans(given.model_dtype, given.run_device):
        if plan != given and fits(predict(shape, lengths, visual, needs, plan), device_free, host_free):
            suggestions.append(plan.describe())
            break
    plans = [given] + (candidate_plans(given.model_dtype, given.run_device) if auto else [])
    for n in range(len(lengths) - 1, 0, -1):
        if any(fits(predict(shape, lengths[:n], visual[:n], needs, p), device_free, host_free) for p in plans):
            suggestions.append(f"--nsamples {n}")
            break
    hint = " or ".join(suggestions) if suggestions else "a machine with more memory (the weights alone do not fit)"
    return (f"predicted peak {estimate.summary()} exceeds the {available} available with {given.describe()}; "
            f"would fit: {hint}")



def _status_kib(field_name: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field_name + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def resident_bytes() -> int:
    """This process's resident memory now (Linux ``VmRSS``; the peak so far elsewhere)."""
    kib = _status_kib("VmRSS")
    if kib is not None:
        return kib * 1024
    import resource

    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024


class PeakMemory:
    """Measures the peak memory of the work inside ``with PeakMemory(device) as peak:``: CUDA's peak allocated
    bytes on a GPU; on the CPU the resident set's high-water mark (Linux ``VmHWM``, reset on entry through
    ``/proc/self/clear_refs``; where that is refused, the resident set sampled every few milliseconds).
    ``peak.bytes`` is the peak, ``peak.start`` the memory held on entry."""

    def __init__(self, device: str | torch.device = "cpu") -> None:
        self.device = torch.device(device)
        self.start = 0
        self.bytes = 0
        self._sampler = None

    def __enter__(self) -> PeakMemory:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.start = int(torch.cuda.memory_allocated(self.device))
            return self
        self.start = resident_bytes()
        try:
            Path("/proc/self/clear_refs").write_text("5")
        except OSError:
            self._start_sampler()
        return self

    def _start_sampler(self) -> None:
        import threading

        stop = threading.Event()
        highest = [resident_bytes()]

        def sample() -> None:
            while not stop.wait(0.005):
                highest[0] = max(highest[0], resident_bytes())

        thread = threading.Thread(target=sample, daemon=True)
        thread.start()
        self._sampler = (stop, thread, highest)

    def __exit__(self, *exc: object) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.bytes = int(torch.cuda.max_memory_allocated(self.device))
        elif self._sampler is not None:
            stop, thread, highest = self._sampler
            stop.set()
            thread.join()
            self.bytes = max(highest[0], resident_bytes())
        else:
            self.bytes = (_status_kib("VmHWM") or 0) * 1024

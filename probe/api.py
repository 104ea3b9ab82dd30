"""One call from a model to a pruned checkpoint with its run record; ``probe prune`` only wraps it."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import torch

from probe.calibration.activation_store import ActivationStorage
from probe.calibration.calibrate import capture_items
from probe.core.manifest import check_free_space, check_output_dir, write_dir_atomic
from probe.core.record import RunRecord
from probe.data.calibration import CalibrationItem, CalibrationSpec, prepare, select
from probe.models.compat import copy_left_out_processor_files, save_processor
from probe.models.devices import check_device, machine_description
from probe.models.loading import ModelSkeleton, load_model, load_skeleton, parse_dtype
from probe.pruning.engine import PruneConfig, PruneReport, achieved_sparsity, prune
from probe.pruning.memory import (
    MemoryEstimate,
    MemoryPlanError,
    MethodNeeds,
    StoragePlan,
    choose_plan,
    device_available,
    host_available,
    model_shape,
)
from probe.pruning.tokens.base import TokenSelectorError
from probe.token_pruning.base import make_pruner
from probe.token_pruning.comp_style import CompStyleSettings
from probe.token_pruning.comp_style import comp_style as run_comp_style
from probe.token_pruning.runtime import TokenPruningRuntime
from probe.token_pruning.schedule import with_token_schedule


def prune_checkpoint(
    model: str,
    out: Path | str,
    config: PruneConfig,
    calibration: CalibrationSpec | None = None,
    dtype: str = "float32",
    device: str = "cpu",
    offload: bool | str = False,
    run_device: str | None = None,
    max_pixels: int | None = None,
    show_progress: bool = True,
    token_pruning: str | None = None,
    comp_style: CompStyleSettings | None = None,
    activation_dtype: str = "model",
    spill_activations: bool = False,
    memory_check: bool = True,
) -> RunRecord:
    """Load ``model`` (hub id, folder, ``reference`` or ``tiny:FAMILY``), prune it as ``config`` says with
    samples drawn by ``calibration`` (default: 128 bundled samples), and write a Hugging Face checkpoint
    with ``manifest.json`` (the :class:`~probe.core.record.RunRecord`) to ``out``, atomically.

    Every check (output folder, devices, calibration data, memory) runs before the weights load. With
    ``offload`` (True or ``"on"``) the model stays on the CPU and each block runs on ``run_device`` (default
    ``cuda``). The memory model (:mod:`probe.pruning.memory`) predicts the run's peak from the model's shapes and
    the calibration lengths; a run predicted not to fit is refused (unless ``memory_check`` is False), and
    ``offload="auto"`` takes the first plan that fits (offload, bfloat16 activations, disk spill).
    ``activation_dtype`` and ``spill_activations`` say how hidden states are kept between blocks.

    ``token_pruning`` (e.g. ``fastv(k=2, ratio=0.5)``) names the visual token pruning the model will be
    served with: it is written into the checkpoint's config (``probe_token_pruning``, which evaluation
    applies) and the record, and the ``kept`` token selector calibrates on the tokens it keeps. With
    ``comp_style`` the weight sparsity of ``config`` and the ratio of ``token_pruning`` are reached stage
    by stage (:mod:`probe.token_pruning.comp_style`), each stage recorded.
    """
    out = Path(out)
    check_output_dir(out, marker="manifest.json")
    calibration = calibration or CalibrationSpec()
    if offload not in (True, False, "on", "off", "auto"):
        raise MemoryPlanError(f"offload must be on, off or auto, got {offload!r}")
    auto = offload == "auto"
    offload = offload in (True, "on")
    run_device = run_device or ("cuda" if offload else device)
    check_device(device)
    check_device(run_device)
    started = time.time()
    pruner = make_pruner(token_pruning)
    if (config.tokens == "kept" or comp_style is not None) and pruner is None:
        raise TokenSelectorError("the kept token selector and comp-style need a token-pruning method "
                                 "(token_pruning=...)")
    selected = select(calibration) if config.needs_calibration else None  # every data check before loading
    skeleton = load_skeleton(model, dtype=parse_dtype(dtype), max_pixels=max_pixels)
    items = prepare(selected, skeleton.adapter, skeleton.processor, skeleton.config) if selected is not None else []
    storage_dtype = ActivationStorage.parse(activation_dtype).dtype
    plan = StoragePlan(parse_dtype(dtype), storage_dtype, offload, spill_activations, run_device)
    estimate = None
    if memory_check or auto:
        plan, estimate = plan_memory(skeleton, items, config, plan, auto)
    loaded = skeleton.loaded or load_model(model, dtype=parse_dtype(dtype), device="cpu", max_pixels=max_pixels)
    home = "cpu" if plan.offload else device
    loaded.model.to(home)
    if pruner is not None:
        TokenPruningRuntime(pruner, loaded.adapter).check(loaded.model)
    check_free_space(out, sum(p.numel() * p.element_size() for p in loaded.model.parameters()))
    storage = ActivationStorage(plan.activation_dtype, out.parent if plan.spill else None)
    samples = []
    capture_started = time.perf_counter()
    if config.needs_calibration:
        samples = capture_items(loaded, items, store_device=home, show_progress=show_progress, storage=storage)
    if pruner is not None and samples and comp_style is None:
        samples = with_token_schedule(loaded.model, loaded.adapter, samples, pruner)
    capture_seconds = time.perf_counter() - capture_started
    torch.manual_seed(calibration.seed)
    stages = None
    if comp_style is not None:
        result = run_comp_style(loaded, samples, [item.inputs for item in items], config.sparsity,
                                pruner.spec(), comp_style)
        loaded.model.load_state_dict(result.model.state_dict())
        pruner, stages = make_pruner(result.token_pruning), result.stages
        report = PruneReport(sparsity=achieved_sparsity(loaded.model, loaded.adapter),
                             parameters={f"layers.{b}.{n}": lin.weight.numel()
                                         for b, layer in enumerate(loaded.adapter.decoder_layers(loaded.model))
                                         for n, lin in loaded.adapter.prunable_linears(layer).items()})
    else:
        report = prune(loaded.model, loaded.adapter, samples, config, device=run_device, show_progress=show_progress,
                       storage=storage)
    record = RunRecord.from_report(
        config, report, model=model, family=loaded.model.config.model_type, dtype=dtype, device=run_device,
        calibration={**dataclasses.asdict(calibration), "sample_ids": [s.sample_id for s in samples]},
        timings={"capture": capture_seconds, "wall": time.time() - started},
        context={"command": "prune", "offload": plan.offload, "max_pixels": max_pixels,
                 "machine": machine_description(run_device),
                 "memory": {"plan": plan.describe(), "auto": auto,
                            **({"predicted": estimate.as_dict()} if estimate is not None else {})},
                 "token_pruning": pruner.spec() if pruner is not None else None,
                 **({"comp_style": {**dataclasses.asdict(comp_style), "stages": stages}} if stages else {})},
    )
    if stages:
        record.method = "comp-style"
    if pruner is not None:
        loaded.model.config.probe_token_pruning = pruner.spec()

    def fill(folder: Path) -> None:
        loaded.model.save_pretrained(folder)
        save_processor(loaded.processor, folder)
        if loaded.from_checkpoint:
            copy_left_out_processor_files(loaded.ref, folder)
        record.write(folder / "manifest.json")

    write_dir_atomic(out, fill)
    return record


def plan_memory(skeleton: ModelSkeleton, items: list[CalibrationItem], config: PruneConfig, plan: StoragePlan,
                auto: bool) -> tuple[StoragePlan, MemoryEstimate]:
    """The storage plan of a run and its predicted peak, from the model's shapes and the calibration lengths;
    raises :class:`~probe.pruning.memory.MemoryPlanError` where nothing fits (see
    :func:`probe.pruning.memory.choose_plan`)."""
    shape = model_shape(skeleton.model, skeleton.adapter)
    lengths = [item.meta["n_tokens"] for item in items]
    visual = [item.meta["n_visual"] for item in items]
    return choose_plan(shape, lengths, visual, MethodNeeds.of(config), plan, auto,
                       device_free=device_available(plan.run_device), host_free=host_available())

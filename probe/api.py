"""One call from a model to a pruned checkpoint with its run record; ``probe prune`` only wraps it."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import torch

from probe.calibrate import capture_items
from probe.data.calibration import CalibrationSpec, prepare, select
from probe.devices import check_device
from probe.engine import PruneConfig, PruneReport, achieved_sparsity, prune
from probe.loading import load_model, parse_dtype
from probe.manifest import check_free_space, check_output_dir, write_dir_atomic
from probe.models.compat import copy_left_out_processor_files, save_processor
from probe.record import RunRecord
from probe.token_pruning.base import make_pruner
from probe.token_pruning.comp_style import CompStyleSettings
from probe.token_pruning.comp_style import comp_style as run_comp_style
from probe.token_pruning.runtime import TokenPruningRuntime
from probe.token_pruning.schedule import with_token_schedule
from probe.tokens.base import TokenSelectorError


def prune_checkpoint(
    model: str,
    out: Path | str,
    config: PruneConfig,
    calibration: CalibrationSpec | None = None,
    dtype: str = "float32",
    device: str = "cpu",
    offload: bool = False,
    run_device: str | None = None,
    max_pixels: int | None = None,
    show_progress: bool = True,
    token_pruning: str | None = None,
    comp_style: CompStyleSettings | None = None,
) -> RunRecord:
    """Load ``model`` (hub id, folder, ``reference`` or ``tiny:FAMILY``), prune it as ``config`` says with
    samples drawn by ``calibration`` (default: 128 bundled samples), and write a Hugging Face checkpoint
    with ``manifest.json`` (the :class:`~probe.record.RunRecord`) to ``out``, atomically.

    Every check (output folder, devices, calibration data) runs before the model loads. With ``offload``
    the model stays on the CPU and each block runs on ``run_device`` (default ``cuda``).

    ``token_pruning`` (e.g. ``fastv(k=2, ratio=0.5)``) names the visual token pruning the model will be
    served with: it is written into the checkpoint's config (``probe_token_pruning``, which evaluation
    applies) and the record, and the ``kept`` token selector calibrates on the tokens it keeps. With
    ``comp_style`` the weight sparsity of ``config`` and the ratio of ``token_pruning`` are reached stage
    by stage (:mod:`probe.token_pruning.comp_style`), each stage recorded.
    """
    out = Path(out)
    check_output_dir(out, marker="manifest.json")
    calibration = calibration or CalibrationSpec()
    run_device = run_device or ("cuda" if offload else device)
    check_device(device)
    check_device(run_device)
    started = time.time()
    pruner = make_pruner(token_pruning)
    if (config.tokens == "kept" or comp_style is not None) and pruner is None:
        raise TokenSelectorError("the kept token selector and comp-style need a token-pruning method "
                                 "(token_pruning=...)")
    selected = select(calibration) if config.needs_calibration else None  # every data check before loading
    loaded = load_model(model, dtype=parse_dtype(dtype), device="cpu" if offload else device, max_pixels=max_pixels)
    if pruner is not None:
        TokenPruningRuntime(pruner, loaded.adapter).check(loaded.model)
    check_free_space(out, sum(p.numel() * p.element_size() for p in loaded.model.parameters()))
    samples = []
    capture_started = time.perf_counter()
    items = []
    if config.needs_calibration:
        items = prepare(selected, loaded.adapter, loaded.processor, loaded.model.config)
        samples = capture_items(loaded, items, store_device="cpu" if offload else device, show_progress=show_progress)
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
        report = prune(loaded.model, loaded.adapter, samples, config, device=run_device, show_progress=show_progress)
    record = RunRecord.from_report(
        config, report, model=model, family=loaded.model.config.model_type, dtype=dtype, device=run_device,
        calibration={**dataclasses.asdict(calibration), "sample_ids": [s.sample_id for s in samples]},
        timings={"capture": capture_seconds, "wall": time.time() - started},
        context={"command": "prune", "offload": offload, "max_pixels": max_pixels,
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

"""One call from a model to a pruned checkpoint with its run record; ``probe prune`` only wraps it."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import torch

from probe.calibrate import capture_calibration
from probe.data.calibration import CalibrationSpec, select
from probe.devices import check_device
from probe.engine import PruneConfig, prune
from probe.loading import load_model, parse_dtype
from probe.manifest import check_free_space, check_output_dir, write_dir_atomic
from probe.models.compat import copy_left_out_processor_files, save_processor
from probe.record import RunRecord


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
) -> RunRecord:
    """Load ``model`` (hub id, folder, ``reference`` or ``tiny:FAMILY``), prune it as ``config`` says with
    samples drawn by ``calibration`` (default: 128 bundled samples), and write a Hugging Face checkpoint
    with ``manifest.json`` (the :class:`~probe.record.RunRecord`) to ``out``, atomically.

    Every check (output folder, devices, calibration data) runs before the model loads. With ``offload``
    the model stays on the CPU and each block runs on ``run_device`` (default ``cuda``).
    """
    out = Path(out)
    check_output_dir(out, marker="manifest.json")
    calibration = calibration or CalibrationSpec()
    run_device = run_device or ("cuda" if offload else device)
    check_device(device)
    check_device(run_device)
    started = time.time()
    selected = select(calibration) if config.needs_calibration else None  # every data check before loading
    loaded = load_model(model, dtype=parse_dtype(dtype), device="cpu" if offload else device, max_pixels=max_pixels)
    check_free_space(out, sum(p.numel() * p.element_size() for p in loaded.model.parameters()))
    samples = []
    capture_started = time.perf_counter()
    if config.needs_calibration:
        samples = capture_calibration(loaded, selected, store_device="cpu" if offload else device,
                                      show_progress=show_progress)
    capture_seconds = time.perf_counter() - capture_started
    torch.manual_seed(calibration.seed)
    report = prune(loaded.model, loaded.adapter, samples, config, device=run_device, show_progress=show_progress)
    record = RunRecord.from_report(
        config, report, model=model, family=loaded.model.config.model_type, dtype=dtype, device=run_device,
        calibration={**dataclasses.asdict(calibration), "sample_ids": [s.sample_id for s in samples]},
        timings={"capture": capture_seconds, "wall": time.time() - started},
        context={"command": "prune", "offload": offload, "max_pixels": max_pixels},
    )

    def fill(folder: Path) -> None:
        loaded.model.save_pretrained(folder)
        save_processor(loaded.processor, folder)
        if loaded.from_checkpoint:
            copy_left_out_processor_files(loaded.ref, folder)
        record.write(folder / "manifest.json")

    write_dir_atomic(out, fill)
    return record

"""From a calibration spec to captured block inputs, with a memory estimate before the work starts."""

from __future__ import annotations

import contextlib
import logging

import torch

from probe.calibration.activation_store import ActivationStorage, spilled
from probe.calibration.capture import CapturedSample, activation_bytes, capture
from probe.core.manifest import human_bytes
from probe.core.progress import progress_bar
from probe.data.calibration import CalibrationItem, CalibrationSpec, SelectedSamples, prepare
from probe.models.loading import LoadedModel
from probe.models.vision_cache import VisionFeatureCache

log = logging.getLogger(__name__)


def estimate_activation_bytes(lengths: list[int], hidden_size: int, dtype: torch.dtype) -> int:
    """Bytes of the cached hidden states of samples with these token counts."""
    return sum(lengths) * hidden_size * torch.empty((), dtype=dtype).element_size()


def capture_calibration(
    loaded: LoadedModel,
    spec: CalibrationSpec | SelectedSamples,
    store_device: str = "cpu",
    show_progress: bool = True,
    vision_cache: VisionFeatureCache | None = None,
) -> list[CapturedSample]:
    """Prepare the calibration set (all checks first, unless already selected), then capture every
    sample's block inputs."""
    items = prepare(spec, loaded.adapter, loaded.processor, loaded.model.config)
    return capture_items(loaded, items, store_device, show_progress, vision_cache)


def capture_items(
    loaded: LoadedModel,
    items: list[CalibrationItem],
    store_device: str = "cpu",
    show_progress: bool = True,
    vision_cache: VisionFeatureCache | None = None,
    storage: ActivationStorage | None = None,
) -> list[CapturedSample]:
    """Capture the block inputs of prepared calibration items, reporting the memory they need first.

    A ``vision_cache`` shared across runs on the same checkpoint computes each image's features once.
    ``storage`` keeps each sample's block-0 input in its dtype, or in a memory-mapped file.
    """
    storage = storage or ActivationStorage()
    model, adapter = loaded.model, loaded.adapter
    hidden_size = adapter.final_norm(model).weight.shape[0]
    dtype = next(model.parameters()).dtype
    need = estimate_activation_bytes([i.meta["n_tokens"] for i in items], hidden_size, storage.dtype or dtype)
    where = "disk" if storage.spill_dir is not None else store_device
    log.info("cached activations: %s on %s for %d samples", human_bytes(need), where, len(items))
    samples = []
    attach = vision_cache.attached(model, adapter) if vision_cache is not None else contextlib.nullcontext()
    with attach, progress_bar("capture", len(items), show_progress) as bar:
        for item in items:
            sample = capture(model, adapter, item.inputs, item.sample_id, store_device)
            if storage.spill_dir is not None:
                sample.hidden = spilled(sample.hidden, storage.dtype, storage.spill_dir)
            elif storage.dtype is not None:
                sample.hidden = sample.hidden.to(storage.dtype)
            sample.meta.update(item.meta)
            samples.append(sample)
            bar.advance()
    log.info("captured %s of block inputs", human_bytes(activation_bytes(samples)))
    return samples

"""What runs on a GPU: pruning in float32, bfloat16 and float16 on ``PROBE_TEST_DEVICE`` (default: cuda where
one is visible, else the CPU) against float32 on the CPU, and offload against everything on the device.

``bench/gpu_suite.sh`` runs these on a GPU; its ``--dry-run`` runs them on the CPU in CI, so that they
cannot rot where no GPU is at hand (the offload peak check needs CUDA's allocator statistics and is
checked on a GPU only).
"""

from __future__ import annotations

import copy
import os

import pytest
import torch
from conftest import bench_module

from probe.calibration.calibrate import capture_calibration
from probe.data.calibration import CalibrationSpec
from probe.models import tiny_families
from probe.models.loading import LoadedModel, load_model
from probe.pruning.engine import PruneConfig, prune
from probe.pruning.memory import MethodNeeds, PeakMemory, StoragePlan, model_shape, predict
from probe.pruning.scorers.wanda import WandaScorer

pytestmark = pytest.mark.cuda

DEVICE = os.environ.get("PROBE_TEST_DEVICE") or ("cuda" if torch.cuda.is_available() else "cpu")
# how far a device run's column norms may stray from CPU float32's (relative, the largest over a matrix's
# columns): float32 by summation order; half precisions by their rounding (2^-8 for bfloat16, 2^-11 for
# float16) carried through the blocks, where the tiny models' smallest columns stray most (on the CPU, up
# to 12% in either; Gemma 3's scaled embeddings strain float16 most). This bound only catches a broken
# run: the check that matters is that masks differ only where scores moved across the boundary
NORM_TOLERANCE = {torch.float32: 1e-4, torch.bfloat16: 0.25, torch.float16: 0.25}
WANDA_PRUNE = WandaScorer.prune
near_tie_outliers = bench_module("bench_storage").near_tie_outliers


def _rounded(loaded: LoadedModel, dtype: torch.dtype) -> LoadedModel:
    """A float32 copy whose weights are exactly representable in ``dtype``: both runs prune the same values."""
    model = copy.deepcopy(loaded.model)
    for parameter in model.parameters():
        parameter.data = parameter.data.to(dtype).float()
    return LoadedModel(model, loaded.processor, loaded.adapter, loaded.ref)


def _prune_recorded(loaded: LoadedModel, device: str, dtype: torch.dtype, monkeypatch) -> tuple[list, list]:
    """Wanda at 50% with 3 samples captured on ``device`` in ``dtype``: the masks, and each pruned weight's
    float32 values and column norms."""
    seen = []

    def record(self, weight, stats, sparsity, pattern):
        seen.append((weight.detach().float().cpu().clone(), stats.column_norms().float().cpu().clone()))
        return WANDA_PRUNE(self, weight, stats, sparsity, pattern)

    monkeypatch.setattr(WandaScorer, "prune", record)
    model = copy.deepcopy(loaded.model).to(device, dtype)
    moved = LoadedModel(model, loaded.processor, loaded.adapter, loaded.ref)
    samples = capture_calibration(moved, CalibrationSpec(nsamples=3), store_device=device, show_progress=False)
    prune(model, loaded.adapter, samples, PruneConfig(method="wanda", sparsity=0.5), device=device,
          show_progress=False)
    masks = [(lin.weight == 0).cpu() for layer in loaded.adapter.decoder_layers(model)
             for lin in loaded.adapter.prunable_linears(layer).values()]
    return masks, seen


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("family", tiny_families())
def test_masks_on_the_device_equal_cpu_float32_except_near_ties(family, dtype, monkeypatch):
    loaded = _rounded(load_model(f"tiny:{family}"), dtype)
    reference_masks, reference = _prune_recorded(loaded, "cpu", torch.float32, monkeypatch)
    masks, device_run = _prune_recorded(loaded, DEVICE, dtype, monkeypatch)
    assert len(masks) == len(reference_masks)
    differing = 0
    for (weight, norms), (_, device_norms), ours, theirs in zip(reference, device_run, masks, reference_masks):
        stray = float(((device_norms - norms).abs() / norms.clamp(min=1e-12)).max())
        assert stray <= NORM_TOLERANCE[dtype]
        # a score moves by at most `stray` of itself: only entries that close to the boundary can swap sides
        assert near_tie_outliers(weight, norms, ours != theirs, 0.5, 2 * stray + 1e-6) == 0
        differing += int((ours != theirs).sum())
    if dtype == torch.float32 and DEVICE == "cpu":
        assert differing == 0  # the same computation on the same device


@pytest.mark.parametrize("family", ["llava_next", "qwen2_5_vl"])
def test_offload_equals_everything_on_the_device(family):
    """Blocks kept on the CPU and moved to the device one at a time prune exactly as a model held on the
    device; on a GPU the peak is about one block, the activations and the block's statistics."""
    loaded = load_model(f"tiny:{family}")
    samples = capture_calibration(loaded, CalibrationSpec(nsamples=3), show_progress=False)
    config = PruneConfig(method="wanda", sparsity=0.5)
    resident = copy.deepcopy(loaded.model).to(DEVICE)
    device_samples = [copy.copy(s) for s in samples]
    for sample in device_samples:
        sample.hidden = sample.hidden.to(DEVICE)
    prune(resident, loaded.adapter, device_samples, config, device=DEVICE, show_progress=False)
    offloaded = copy.deepcopy(loaded.model)
    with PeakMemory(DEVICE) as peak:
        prune(offloaded, loaded.adapter, samples, config, device=DEVICE, show_progress=False)
    for ours, theirs in zip(offloaded.parameters(), resident.parameters()):
        assert torch.equal(ours.cpu(), theirs.cpu())
    if DEVICE.startswith("cuda"):
        shape = model_shape(loaded.model, loaded.adapter)
        estimate = predict(shape, [s.seq_len for s in samples], [int(s.visual_mask.sum()) for s in samples],
                           MethodNeeds.of(config), StoragePlan(offload=True, run_device=DEVICE))
        assert peak.bytes <= 1.5 * estimate.device_peak + (1 << 20)

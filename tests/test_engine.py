"""The sequential engine on a tiny LLaVA-NeXT: pools, masks, untouched modules, determinism."""

import copy

import pytest
import torch

from probe.calibration.calibrate import capture_calibration
from probe.calibration.capture import run_block
from probe.core.registry import UnknownEntryError
from probe.data.calibration import CalibrationSpec
from probe.models.loading import load_model
from probe.pruning.engine import PruneConfig, PruneConfigError, prune
from probe.pruning.tokens.base import TokenSelectorError

SPEC = CalibrationSpec(source="bundled", nsamples=3, seed=0)


@pytest.fixture(scope="module")
def base():
    loaded = load_model("tiny:llava_next")
    return loaded, capture_calibration(loaded, SPEC, show_progress=False)


def fresh(base):
    loaded, samples = base
    return copy.deepcopy(loaded.model), loaded.adapter, copy.deepcopy(samples)


def reference_wanda_masks(model, adapter, samples, pool, sparsity):
    """Plain reference: per block, collect each linear's inputs at the pool's positions, score with
    |W| * ||X_j||, prune the lowest per row, then propagate."""
    masks = {}
    hidden = [s.hidden.clone() for s in samples]
    for b, layer in enumerate(adapter.decoder_layers(model)):
        linears = adapter.prunable_linears(layer)
        rows = {name: [] for name in linears}
        handles = [lin.register_forward_hook(lambda m, i, o, n=name, store=rows: store[n].append(i[0][0]))
                   for name, lin in linears.items()]
        for s, h in zip(samples, hidden):
            run_block(layer, h, s.calls[b])
        for handle in handles:
            handle.remove()
        for name, lin in linears.items():
            keep = []
            for s, x in zip(samples, rows[name]):
                sel = {"text": ~s.visual_mask, "visual": s.visual_mask, "mixed": torch.ones_like(s.visual_mask)}[pool]
                keep.append(x[sel])
            x = torch.cat(keep).double()
            norms = torch.sqrt((x ** 2).sum(0))
            score = lin.weight.abs().double() * norms
            k = int(score.shape[1] * sparsity)
            mask = torch.zeros_like(score, dtype=torch.bool)
            for i in range(score.shape[0]):
                order = sorted(range(score.shape[1]), key=lambda j: (score[i, j].item(), j))
                mask[i, order[:k]] = True
            lin.weight.data[mask] = 0
            masks[f"{b}.{name}"] = mask
        hidden = [run_block(layer, h, s.calls[b]) for s, h in zip(samples, hidden)]
    return masks


@pytest.mark.parametrize("pool", ["text", "visual", "mixed"])
def test_wanda_masks_match_plain_reference(base, pool):
    model, adapter, samples = fresh(base)
    ref_model = copy.deepcopy(model)
    ref = reference_wanda_masks(ref_model, adapter, copy.deepcopy(samples), pool, 0.5)
    prune(model, adapter, samples, PruneConfig(method="wanda", sparsity=0.5, tokens=pool), show_progress=False)
    for b, layer in enumerate(adapter.decoder_layers(model)):
        for name, lin in adapter.prunable_linears(layer).items():
            assert torch.equal(lin.weight == 0, ref[f"{b}.{name}"]), f"{b}.{name}"


def test_text_pool_ignores_visual_activations(base):
    """Replace the visual rows of block 0's input: text-pool masks of q/k/v (whose input is a per-token
    function of the block input) stay, mixed-pool masks change."""

    def first_block_masks(pool, perturb):
        model, adapter, samples = fresh(base)
        if perturb:
            for s in samples:
                s.hidden[0, s.visual_mask] = 50 * torch.randn_like(s.hidden[0, s.visual_mask])
        prune(model, adapter, samples, PruneConfig(method="wanda", sparsity=0.5, tokens=pool), show_progress=False)
        layer = adapter.decoder_layers(model)[0]
        return {n: (layer.get_submodule(n).weight == 0) for n in ("self_attn.q_proj", "self_attn.v_proj")}

    for name, mask in first_block_masks("text", False).items():
        assert torch.equal(mask, first_block_masks("text", True)[name])
    mixed_before, mixed_after = first_block_masks("mixed", False), first_block_masks("mixed", True)
    assert all(not torch.equal(mixed_before[n], mixed_after[n]) for n in mixed_before)


@pytest.mark.parametrize("method,pattern,sparsity", [
    ("wanda", "unstructured", 0.6), ("wanda", "2:4", 0.5), ("wanda", "4:8", 0.5),
    ("sparsegpt", "unstructured", 0.5), ("sparsegpt", "2:4", 0.5), ("magnitude", "unstructured", 0.5),
    ("magnitude", "4:8", 0.5),
])
def test_pruned_matrices_have_the_target_pattern_and_the_rest_is_untouched(base, method, pattern, sparsity):
    model, adapter, samples = fresh(base)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    config = PruneConfig(method=method, sparsity=sparsity, pattern=pattern, tokens="mixed")
    report = prune(model, adapter, samples, config, show_progress=False)
    pruned_names = set()
    for b, layer in enumerate(adapter.decoder_layers(model)):
        for name, lin in adapter.prunable_linears(layer).items():
            zeros = lin.weight == 0
            rows, cols = zeros.shape
            if pattern == "unstructured" and method == "wanda":
                assert (zeros.sum(1) == int(cols * sparsity)).all()
            elif pattern == "unstructured":
                assert zeros.sum().item() >= int(rows * cols * sparsity)
            else:
                n, m = (int(v) for v in pattern.split(":"))
                assert (zeros.reshape(rows, cols // m, m).sum(-1) >= m - n).all()
            assert abs(report.sparsity[f"layers.{b}.{name}"] - zeros.float().mean().item()) < 1e-6
            pruned_names.add(f"layers.{b}.{name}.weight")
    for key, value in model.state_dict().items():
        if not any(key.endswith(p) for p in pruned_names):
            assert torch.equal(value, before[key]), key


def test_same_seed_gives_identical_masks(base):
    loaded, _ = base
    results = []
    for _ in range(2):
        model = copy.deepcopy(loaded.model)
        again = type(loaded)(model, loaded.processor, loaded.adapter, loaded.ref)
        samples = capture_calibration(again, SPEC, show_progress=False)
        prune(model, loaded.adapter, samples, PruneConfig(method="sparsegpt", sparsity=0.5), show_progress=False)
        results.append({k: v for k, v in model.state_dict().items()})
    assert all(torch.equal(results[0][k], results[1][k]) for k in results[0])


def test_empty_pool_and_bad_settings_fail_before_work(base):
    model, adapter, samples = fresh(base)
    samples[1].visual_mask[:] = False
    samples[1].sample_id = "text-only"
    with pytest.raises(TokenSelectorError, match="text-only"):
        prune(model, adapter, samples, PruneConfig(tokens="visual"), show_progress=False)
    with pytest.raises(UnknownEntryError, match="unknown method 'obs'; choose from magnitude, wanda"):
        PruneConfig(method="obs")
    with pytest.raises(UnknownEntryError, match="unknown token selector 'atvv'; choose from text, visual, mixed"):
        PruneConfig(tokens="atvv")
    with pytest.raises(UnknownEntryError, match="unknown scorer 'obd'"):
        PruneConfig(scorer="obd")
    with pytest.raises(UnknownEntryError, match="unknown allocation 'owl2'; choose from uniform, owl, tamp"):
        PruneConfig(allocation="owl2")
    with pytest.raises(PruneConfigError, match="calibration"):
        prune(model, adapter, [], PruneConfig(), show_progress=False)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_models_prune_with_fp32_statistics(dtype, monkeypatch):
    from probe.pruning.sparsity import stats as stats_module

    seen = []
    original_add = stats_module.InputStats.add

    def spy(self, x, weights=None):
        seen.append((x.dtype, self.sq_sum.dtype))
        original_add(self, x, weights)

    monkeypatch.setattr(stats_module.InputStats, "add", spy)
    loaded = load_model("tiny:qwen2_vl", dtype=dtype)
    samples = capture_calibration(loaded, SPEC, show_progress=False)
    prune(loaded.model, loaded.adapter, samples, PruneConfig(method="wanda", pattern="4:8", sparsity=0.5),
          show_progress=False)
    assert seen and all(x == dtype and acc == torch.float32 for x, acc in seen)
    weight = loaded.adapter.decoder_layers(loaded.model)[2].mlp.down_proj.weight
    assert weight.dtype == dtype
    assert ((weight == 0).reshape(weight.shape[0], -1, 8).sum(-1) >= 4).all()


@pytest.mark.parametrize("method", ["wanda", "sparsegpt", "atv"])
def test_prune_leaves_its_samples_as_they_were(base, method):
    """The samples are inputs, not state: pruning twice from the same samples gives the same model, and
    every sample's hidden state is bit-identical afterwards."""
    loaded, samples = base
    before = [s.hidden.clone() for s in samples]
    models = []
    for _ in range(2):
        model = copy.deepcopy(loaded.model)
        prune(model, loaded.adapter, samples, PruneConfig(method=method, sparsity=0.5), show_progress=False)
        models.append(model)
    assert all(torch.equal(s.hidden, b) for s, b in zip(samples, before))
    first, second = (dict(m.named_parameters()) for m in models)
    assert all(torch.equal(first[name], second[name]) for name in first)

"""The MoT probe: exact equivalence when dense, isolation of pathways when pruned."""

import pytest
import torch
from conftest import FAMILIES, random_image, user_turn

from probe.calibration.calibrate import capture_calibration
from probe.data.calibration import CalibrationSpec
from probe.models import get_adapter
from probe.models.loading import LoadedModel
from probe.models.tiny import tiny_lvlm
from probe.pruning.engine import PruneConfig
from probe.pruning.mot import MoTError, RoutedLinear, prune_pathway, to_mot, weight_sharing_copy


def inputs_for(tiny, adapter, with_image=True, question="what color is the cat"):
    images = [random_image(0, 40, 48)] if with_image else []
    return adapter.build_inputs(tiny.processor, user_turn(question, with_image), images, add_generation_prompt=True)


@pytest.mark.parametrize("family", FAMILIES)
def test_dense_probe_equals_original_model(family):
    tiny = tiny_lvlm(family)
    adapter = get_adapter(tiny.model)
    cases = [inputs_for(tiny, adapter, True), inputs_for(tiny, adapter, False, "how many dog")]
    with torch.no_grad():
        reference = [tiny.model(**c).logits for c in cases]
        ref_gen = tiny.model.generate(**cases[0], max_new_tokens=6, do_sample=False)
    probe = to_mot(tiny.model, adapter)
    layer = adapter.decoder_layers(tiny.model)[0]
    assert isinstance(layer.self_attn.q_proj, RoutedLinear) and not isinstance(layer.self_attn.o_proj, RoutedLinear)
    with torch.no_grad():
        for case, ref in zip(cases, reference):
            assert (tiny.model(**case).logits - ref).abs().max().item() <= 1e-6
        generated = probe.model.generate(**cases[0], max_new_tokens=6, do_sample=False)
    assert torch.equal(generated, ref_gen)


def test_each_token_is_computed_by_its_own_pathway_only():
    tiny = tiny_lvlm("llava_next")
    adapter = get_adapter(tiny.model)
    probe = to_mot(tiny.model, adapter)
    routed = adapter.decoder_layers(tiny.model)[1].mlp.down_proj
    seen = {"text": [], "visual": []}
    routed.text.register_forward_hook(lambda m, i, o: seen["text"].append(i[0].shape[0]))
    routed.visual.register_forward_hook(lambda m, i, o: seen["visual"].append(i[0].shape[0]))
    inputs = inputs_for(tiny, adapter)
    n_visual = int(adapter.visual_mask(inputs["input_ids"], tiny.model.config).sum())
    with torch.no_grad():
        probe.model(**inputs)
    assert seen == {"text": [inputs["input_ids"].shape[1] - n_visual], "visual": [n_visual]}
    seen["text"].clear()
    seen["visual"].clear()
    with torch.no_grad():
        probe.model(**inputs_for(tiny, adapter, with_image=False))
    assert seen["visual"] == []


@pytest.fixture(scope="module")
def calibrated():
    def make():
        tiny = tiny_lvlm("llava_next", seed=0)
        adapter = get_adapter(tiny.model)
        probe = to_mot(tiny.model, adapter)
        loaded = LoadedModel(tiny.model, tiny.processor, adapter, "tiny:llava_next")
        samples = capture_calibration(loaded, CalibrationSpec(nsamples=3), show_progress=False)
        return tiny, probe, samples

    return make


def pathway_weights(probe, pathway):
    return {f"{b}.{n}": getattr(r, pathway).weight.clone()
            for b, layer in enumerate(probe.adapter.decoder_layers(probe.model))
            for n, r in probe.routed_linears(layer).items()}


@pytest.mark.parametrize("pathway,other", [("text", "visual"), ("visual", "text")])
@pytest.mark.parametrize("pool", ["text", "visual", "mixed"])
def test_pruning_one_pathway_leaves_the_other_bit_identical(calibrated, pathway, other, pool):
    tiny, probe, samples = calibrated()
    before_other = pathway_weights(probe, other)
    shared_before = {k: v.clone() for k, v in tiny.model.state_dict().items()
                     if ".text." not in k and ".visual." not in k}
    report = prune_pathway(probe, samples, PruneConfig(method="wanda", sparsity=0.5, tokens=pool), pathway,
                           show_progress=False)
    after_other = pathway_weights(probe, other)
    assert all(torch.equal(before_other[k], after_other[k]) for k in before_other)
    for key, weight in pathway_weights(probe, pathway).items():
        assert (weight == 0).sum(1).eq(weight.shape[1] // 2).all(), key
    assert set(report.sparsity) == {f"layers.{k}" for k in before_other}
    shared_after = tiny.model.state_dict()
    assert all(torch.equal(shared_before[k], shared_after[k]) for k in shared_before)


@pytest.mark.parametrize("pathway", ["text", "visual"])
def test_a_weight_sharing_copy_prunes_like_a_deep_copy_and_leaves_the_original_alone(pathway):
    import copy

    tiny = tiny_lvlm("llava_next", seed=0)
    adapter = get_adapter(tiny.model)
    loaded = LoadedModel(tiny.model, tiny.processor, adapter, "tiny:llava_next")
    samples = capture_calibration(loaded, CalibrationSpec(nsamples=3), show_progress=False)
    original = {k: v.clone() for k, v in tiny.model.state_dict().items()}
    config = PruneConfig(method="wanda", sparsity=0.5, tokens="mixed")

    shared = weight_sharing_copy(tiny.model)
    first = next(iter(shared.parameters()))
    assert first is not next(iter(tiny.model.parameters()))
    assert first.data_ptr() == next(iter(tiny.model.parameters())).data_ptr()  # no second copy of the weights
    shared_probe = to_mot(shared, adapter, private=pathway)
    prune_pathway(shared_probe, samples, config, pathway, show_progress=False)
    reference = to_mot(copy.deepcopy(tiny.model), adapter)  # a whole copy: obviously independent
    prune_pathway(reference, samples, config, pathway, show_progress=False)

    after = tiny.model.state_dict()
    assert all(torch.equal(original[k], after[k]) for k in original)  # the original is untouched
    for pruned in (pathway, "text" if pathway == "visual" else "visual"):
        ours, theirs = pathway_weights(shared_probe, pruned), pathway_weights(reference, pruned)
        assert all(torch.equal(ours[k], theirs[k]) for k in theirs)
    with pytest.raises(MoTError, match="unknown pathway"):
        RoutedLinear(torch.nn.Linear(2, 2), shared_probe.router, private="audio")


def test_pathway_statistics_come_from_the_pool_not_the_route(calibrated):
    """The text pathway calibrated on the visual pool differs from the one calibrated on the text pool."""
    masks = {}
    for pool in ("text", "visual"):
        tiny, probe, samples = calibrated()
        prune_pathway(probe, samples, PruneConfig(sparsity=0.5, tokens=pool), "text", show_progress=False)
        masks[pool] = probe.adapter.decoder_layers(probe.model)[0].self_attn.q_proj.text.weight == 0
    assert not torch.equal(masks["text"], masks["visual"])


def test_text_only_prompts_are_unaffected_by_pruning_the_visual_pathway(calibrated):
    tiny, probe, samples = calibrated()
    text_only = inputs_for(tiny, probe.adapter, with_image=False, question="what is the answer")
    with_image = inputs_for(tiny, probe.adapter)
    with torch.no_grad():
        before_text, before_image = tiny.model(**text_only).logits, tiny.model(**with_image).logits
    prune_pathway(probe, samples, PruneConfig(sparsity=0.6, tokens="mixed"), "visual", show_progress=False)
    with torch.no_grad():
        assert torch.equal(tiny.model(**text_only).logits, before_text)
        assert not torch.allclose(tiny.model(**with_image).logits, before_image)


def test_o_proj_replication_and_misuse():
    tiny = tiny_lvlm("qwen2_vl")
    adapter = get_adapter(tiny.model)
    inputs = inputs_for(tiny, adapter)
    with torch.no_grad():
        reference = tiny.model(**inputs).logits
    probe = to_mot(tiny.model, adapter, replicate_o_proj=True)
    assert isinstance(adapter.decoder_layers(tiny.model)[0].self_attn.o_proj, RoutedLinear)
    with torch.no_grad():
        assert (probe.model(**inputs).logits - reference).abs().max().item() <= 1e-6
    with pytest.raises(MoTError, match="already"):
        to_mot(tiny.model, adapter)
    with pytest.raises(MoTError, match="pathway"):
        probe.pathway_targets("audio")


def test_the_adapter_names_the_replicated_linears():
    """The probe replicates what the family's adapter names, not a fixed list."""
    from probe.models.base import DEFAULT_PRUNABLE

    tiny = tiny_lvlm("llava")
    adapter = get_adapter(tiny.model)
    assert "self_attn.o_proj" not in adapter.pathway_linears()
    assert set(adapter.pathway_linears(True)) == set(DEFAULT_PRUNABLE)

    class AttentionOnly(type(adapter)):
        prunable = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj")

    to_mot(tiny.model, AttentionOnly())
    layer = adapter.decoder_layers(tiny.model)[0]
    routed = {name for name, module in layer.named_modules() if isinstance(module, RoutedLinear)}
    assert routed == {"self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"}

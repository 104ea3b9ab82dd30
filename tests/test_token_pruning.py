"""Visual token pruning at inference against a hand-built reference forward: FastV and the random control,
prefill and greedy decoding, no-op settings, log-likelihood alignment, the kept-tokens selector, errors."""

import copy
import math

import numpy as np
import pytest
import torch
from PIL import Image

from probe.calibration.capture import BlockCall, capture, run_block
from probe.errors import ProbeError
from probe.evaluation.wrapper import ProbeLVLM
from probe.models.loading import load_model
from probe.pruning.engine import PruneConfig, prune
from probe.token_pruning.base import make_pruner
from probe.token_pruning.runtime import UNSUPPORTED, TokenPruningRuntime
from probe.token_pruning.schedule import with_token_schedule

FAMILIES = ["llava", "llava_next", "llava_onevision", "qwen2_vl", "qwen2_5_vl", "idefics3", "internvl", "fast_vlm"]


def image(seed=0):
    return Image.fromarray((np.random.RandomState(seed).rand(32, 32, 3) * 255).astype("uint8"))


def request(family, question="What is in the picture?", seed=0):
    loaded = load_model(f"tiny:{family}")
    wrapper = ProbeLVLM(loaded=loaded, show_progress=False)
    return loaded, wrapper._visual_inputs(question, [image(seed)])


def cut(call, index, length):
    """The block call with every sequence axis cut to ``index``, written out by hand."""
    kwargs = dict(call.kwargs)
    cos, sin = kwargs["position_embeddings"]
    kwargs["position_embeddings"] = (cos[..., index, :], sin[..., index, :])
    if kwargs.get("position_ids") is not None:
        kwargs["position_ids"] = kwargs["position_ids"][..., index]
    if kwargs.get("cache_position") is not None:
        kwargs["cache_position"] = kwargs["cache_position"][index]
    mask = kwargs.get("attention_mask")
    if isinstance(mask, torch.Tensor) and mask.dim() == 4 and mask.shape[-1] == length:
        kwargs["attention_mask"] = mask[:, :, index][:, :, :, index]
    return BlockCall(call.args, kwargs, call.injection)


def manual_logits(loaded, inputs, k, keep):
    """Layers 0..k-1 on every token, then only the positions ``keep`` (bool (seq,)); final norm and head."""
    model, adapter = loaded.model, loaded.adapter
    sample = capture(model, adapter, inputs)
    index = keep.nonzero().flatten()
    hidden = sample.hidden
    for i, layer in enumerate(adapter.decoder_layers(model)):
        call = sample.calls[i]
        if i == k:
            hidden = hidden[:, index]
        if i >= k:
            call = cut(call, index, sample.seq_len)
        hidden = run_block(layer, hidden, call)
    return model.lm_head(adapter.final_norm(model)(hidden))[0]


def served(loaded, inputs, spec, new_tokens):
    """(prefill logits, greedy tokens) of the model with the token method ``spec`` attached."""
    runtime = TokenPruningRuntime(make_pruner(spec), loaded.adapter)
    with runtime.attached(loaded.model):
        with runtime.request(inputs["input_ids"], loaded.model.config):
            logits = loaded.model(**inputs).logits
        with runtime.request(inputs["input_ids"], loaded.model.config):
            tokens = loaded.model.generate(**inputs, max_new_tokens=new_tokens, do_sample=False)
    return logits, tokens


def fastv_keep(loaded, inputs, k, ratio):
    """FastV's choice from the model's own eager attention probabilities at layer k-1."""
    eager = copy.deepcopy(loaded.model)
    eager.set_attn_implementation("eager")
    attentions = eager(**inputs, output_attentions=True).attentions
    score = attentions[k - 1][0, :, -1, :].mean(0)
    visual = loaded.adapter.visual_mask(inputs["input_ids"][0], loaded.model.config)
    positions = visual.nonzero().flatten()
    count = int(positions.numel() * (1 - ratio))
    top = positions[torch.sort(score[positions], descending=True, stable=True).indices[:count]]
    keep = ~visual
    keep[top] = True
    return keep


@torch.no_grad()
@pytest.mark.parametrize("family", ["llava", "qwen2_vl"])
def test_fastv_prefill_equals_a_hand_built_forward(family):
    loaded, inputs = request(family)
    keep = fastv_keep(loaded, inputs, 1, 0.5)
    expected = manual_logits(loaded, inputs, 1, keep)
    runtime = TokenPruningRuntime(make_pruner("fastv(k=1, ratio=0.5)"), loaded.adapter)
    with runtime.attached(loaded.model), runtime.request(inputs["input_ids"], loaded.model.config):
        ours = loaded.model(**inputs).logits[0]
    assert ours.shape == expected.shape and torch.allclose(ours, expected, atol=1e-5)
    visual = int(loaded.adapter.visual_mask(inputs["input_ids"][0], loaded.model.config).sum())
    counts = runtime.records[-1]["alive_visual"]
    assert counts == [visual] + [visual // 2] * (len(counts) - 1)


@torch.no_grad()
@pytest.mark.parametrize("attention", ["sdpa", "eager"])
def test_greedy_decoding_equals_full_forwards_with_the_same_kept_tokens(attention):
    """Each decoding step with the cache equals a full forward of prompt + answer so far with the prompt's
    dropped tokens left out of layers >= k (generated tokens are never dropped)."""
    loaded, inputs = request("llava")
    loaded.model.set_attn_implementation(attention)
    keep = fastv_keep(loaded, inputs, 2, 0.5)
    runtime = TokenPruningRuntime(make_pruner("fastv(k=2, ratio=0.5)"), loaded.adapter)
    with runtime.attached(loaded.model), runtime.request(inputs["input_ids"], loaded.model.config):
        ours = loaded.model.generate(**inputs, max_new_tokens=6, do_sample=False)[0, inputs["input_ids"].shape[1]:]
    ids = inputs["input_ids"]
    expected = []
    for _ in range(6):
        grown = {**inputs, "input_ids": ids, "attention_mask": torch.ones_like(ids)}
        full_keep = torch.cat([keep, torch.ones(ids.shape[1] - keep.numel(), dtype=torch.bool)])
        token = manual_logits(loaded, grown, 2, full_keep)[-1].argmax()
        expected.append(int(token))
        ids = torch.cat([ids, token.view(1, 1)], dim=1)
    assert ours.tolist() == expected


@torch.no_grad()
@pytest.mark.parametrize("family", FAMILIES)
def test_no_op_token_pruning_equals_the_dense_model(family):
    loaded, inputs = request(family)
    dense = loaded.model(**inputs).logits
    dense_tokens = loaded.model.generate(**inputs, max_new_tokens=4, do_sample=False)
    for spec in ("fastv(k=1, ratio=0)", "random(k=1, ratio=0)"):
        logits, tokens = served(loaded, inputs, spec, new_tokens=4)
        assert torch.allclose(logits, dense, atol=1e-5) and torch.equal(tokens, dense_tokens)


@torch.no_grad()
def test_loglikelihood_reads_the_tail_and_text_only_requests_run_dense():
    loaded, _ = request("llava")
    dense = ProbeLVLM(loaded=loaded, show_progress=False)
    pruned = ProbeLVLM(loaded=loaded, show_progress=False, token_pruning="random(k=1, ratio=0.75, seed=3)")
    context, answer = "What is in the picture?", " a cat"
    with pruned._serving():
        ours, _ = pruned.continuation_loglikelihood(context, answer, [image()])
    prefix = pruned._visual_inputs(context, [image()])["input_ids"][0]
    inputs = pruned._visual_inputs(context, [image()], answer=answer)
    ids = inputs["input_ids"][0]
    visual = loaded.adapter.visual_mask(ids, loaded.model.config)
    positions = visual.nonzero().flatten()
    order = torch.randperm(positions.numel(), generator=torch.Generator().manual_seed(3))
    keep = ~visual
    keep[positions[order[: int(positions.numel() * 0.25)]]] = True
    logits = manual_logits(loaded, inputs, 1, keep).log_softmax(-1)
    start, shift = len(prefix), logits.shape[0] - len(ids)
    expected = sum(logits[t - 1 + shift, ids[t]].item() for t in range(start, len(ids)))
    assert ours == pytest.approx(expected, abs=1e-4)
    with pruned._serving():
        text_only = pruned.continuation_loglikelihood("The cat sat on the", " mat")
    assert text_only == dense.continuation_loglikelihood("The cat sat on the", " mat")
    assert pruned.token_runtime.records[-1] == {"visual": 0, "alive_visual": []}


def test_random_control_is_seeded():
    from probe.token_pruning.base import StageView

    mask = torch.zeros(30, dtype=torch.bool)
    mask[5:25] = True
    view = StageView(2, torch.arange(30), mask, torch.zeros(30, 4), torch.zeros(30, 4))
    a, b, c = (make_pruner(f"random(ratio=0.5, seed={s})").select(view).keep for s in (1, 1, 2))
    assert torch.equal(a, b) and not torch.equal(a, c) and int(mask[a].sum()) == 10 and bool((~mask)[a].sum() == 10)
    assert make_pruner("fastv").spec() == "fastv(k=2, ratio=0.5)"


def test_kept_selector_follows_the_alive_tokens(tmp_path):
    loaded = load_model("tiny:llava")
    from probe.calibration.calibrate import capture_calibration
    from probe.data.calibration import CalibrationSpec

    samples = capture_calibration(loaded, CalibrationSpec(nsamples=2), show_progress=False)
    every = with_token_schedule(loaded.model, loaded.adapter, samples, make_pruner("fastv(k=1, ratio=0)"))
    kept, mixed = copy.deepcopy(loaded.model), copy.deepcopy(loaded.model)
    prune(kept, loaded.adapter, every, PruneConfig(tokens="kept"), show_progress=False)
    prune(mixed, loaded.adapter, samples, PruneConfig(tokens="mixed"), show_progress=False)
    assert all(torch.equal(a, b) for a, b in zip(kept.state_dict().values(), mixed.state_dict().values()))
    half = with_token_schedule(loaded.model, loaded.adapter, samples, make_pruner("fastv(k=1, ratio=0.5)"))
    alive = half[0].meta["alive"]
    visual = samples[0].visual_mask
    assert bool(alive[0].all()) and int((alive[1] & visual).sum()) == int(visual.sum()) // 2
    assert bool(alive[1][~visual].all()) and "alive" not in samples[0].meta
    with pytest.raises(ProbeError, match="needs a token-pruning method"):
        prune(copy.deepcopy(loaded.model), loaded.adapter, samples, PruneConfig(tokens="kept"), show_progress=False)


def test_pruned_checkpoint_carries_its_token_method(tmp_path):
    from probe.cli import main

    out = tmp_path / "joint"
    assert main(["prune", "tiny:llava", "--tokens", "kept", "--token-pruning", "fastv(k=1, ratio=0.5)",
                 "--nsamples", "2", "--out", str(out), "--no-progress"]) == 0
    wrapper = ProbeLVLM(pretrained=str(out), show_progress=False)
    assert wrapper.token_runtime.pruner.spec() == "fastv(k=1, ratio=0.5)"
    assert ProbeLVLM(pretrained=str(out), show_progress=False, token_pruning="none").token_runtime is None
    lmms_style = ProbeLVLM(pretrained="tiny:llava", show_progress=False, token_pruning="random", token_k=1,
                           token_ratio=0.25)
    assert lmms_style.token_runtime.pruner.spec() == "random(k=1, ratio=0.25, seed=0)"


@pytest.mark.parametrize("spec, family, match", [
    ("fastv(k=1)", "qwen3_vl", "DeepStack"),
    ("fastv(k=1)", "gemma3", "sliding-window"),
    ("fastv(k=0)", "llava", "first cannot be it"),
    ("fastv(k=99)", "llava", "layers 0.."),
    ("fastv(ratio=2)", "llava", "ratio must lie in"),
    ("fastv(r=2)", "llava", "unknown token pruning 'fastv' setting"),
    ("vitcop9", "llava", "unknown token-pruning method 'vitcop9'; choose from none, fastv, random, vitcop, vitcop-1/3"),
    ("vitcop(shallow=1, deep=2)", "qwen2_vl", "M-RoPE: use deep_positions=keep"),
    ("vitcop(shallow=2, deep=1)", "llava", "0 < shallow < deep"),
    ("vitcop(shallow=1, deep=2, merge=sum)", "llava", "merge must be one of upstream, mean"),
])
def test_unsupported_token_pruning_is_one_clear_error(spec, family, match):
    assert set(UNSUPPORTED) == {"qwen3_vl", "gemma3"}
    with pytest.raises(ProbeError, match=match):
        ProbeLVLM(loaded=load_model(f"tiny:{family}"), show_progress=False, token_pruning=spec)


def test_mot_probe_refuses_token_pruning():
    from probe.pruning.mot import to_mot

    loaded = load_model("tiny:llava")
    to_mot(loaded.model, loaded.adapter)
    with pytest.raises(ProbeError, match="MoT"):
        ProbeLVLM(loaded=loaded, show_progress=False, token_pruning="fastv(k=1)")


def comp_inputs(count=2):
    from probe.calibration.calibrate import capture_items
    from probe.data.calibration import CalibrationSpec, prepare

    loaded = load_model("tiny:llava")
    items = prepare(CalibrationSpec(nsamples=count), loaded.adapter, loaded.processor, loaded.model.config)
    return loaded, capture_items(loaded, items, show_progress=False), [item.inputs for item in items]


def plain_kl(p_logits, q_logits):
    p = torch.softmax(p_logits.double(), -1).tolist()
    q = torch.softmax(q_logits.double(), -1).tolist()
    return sum(a * math.log(a / b) for a, b in zip(p, q) if a > 0)


def test_comp_style_takes_the_cheaper_step_and_reaches_both_targets():
    from probe.token_pruning.comp_style import CompStyleSettings, comp_style

    loaded, samples, inputs = comp_inputs()
    result = comp_style(loaded, samples, inputs, 0.5, "fastv(k=1, ratio=0.5)", CompStyleSettings(stages=2, epsilon=0))
    assert [s["choice"] for s in result.stages].count("weights") == 2 == len(result.stages) - 2
    assert result.token_pruning == "fastv(k=1, ratio=0.5)" and result.stages[-1]["sparsity"] == 0.5
    for stage in result.stages:
        if len(stage["mixed"]) == 2:
            assert stage["choice"] == min(stage["mixed"], key=stage["mixed"].get) and not stage["explored"]
    q = loaded.adapter.decoder_layers(result.model)[0].self_attn.q_proj.weight
    assert (q == 0).float().mean().item() == 0.5
    # the first stage's costs, computed independently
    dense = [loaded.model(**x).logits[0, -1] for x in inputs]
    weights = copy.deepcopy(loaded.model)
    prune(weights, loaded.adapter, samples, PruneConfig(sparsity=0.25), show_progress=False)
    expected = sum(plain_kl(d, weights(**x).logits[0, -1]) for d, x in zip(dense, inputs)) / len(inputs)
    assert result.stages[0]["costs"]["weights"] == pytest.approx(expected, rel=1e-6)
    tokens = []
    for d, x in zip(dense, inputs):
        keep = fastv_keep(loaded, x, 1, 0.25)
        tokens.append(plain_kl(d, manual_logits(loaded, x, 1, keep)[-1]))
    assert result.stages[0]["costs"]["tokens"] == pytest.approx(sum(tokens) / len(tokens), rel=1e-4)
    explored = comp_style(loaded, samples, inputs, 0.5, "random(k=1, ratio=0.5)",
                          CompStyleSettings(stages=2, epsilon=1.0, seed=5))
    again = comp_style(loaded, samples, inputs, 0.5, "random(k=1, ratio=0.5)",
                       CompStyleSettings(stages=2, epsilon=1.0, seed=5))
    assert [s["choice"] for s in explored.stages] == [s["choice"] for s in again.stages]
    assert all(s["explored"] for s in explored.stages if len(s["mixed"]) == 2)


def test_cli_comp_style_writes_its_stages(tmp_path):
    import json

    from probe.cli import main

    out = tmp_path / "comp"
    assert main(["prune", "tiny:llava", "--comp-style", "2", "--token-pruning", "fastv(k=1, ratio=0.5)",
                 "--sparsity", "0.4", "--nsamples", "2", "--out", str(out), "--no-progress"]) == 0
    record = json.loads((out / "manifest.json").read_text())
    stages = record["context"]["comp_style"]["stages"]
    assert len(stages) == 4 and record["context"]["token_pruning"] == "fastv(k=1, ratio=0.5)"
    assert 0.35 < record["mean_sparsity"] <= 0.4 and record["method"] == "comp-style"  # int(d_in * 0.4) per row
    assert main(["prune", "tiny:llava", "--comp-style", "2", "--out", str(tmp_path / "x")]) == 2


def manual_vitcop(loaded, inputs, settings):
    """ViTCoP's decoder stages by hand on tiny llava: keys from k_proj of the layer's normed input, the
    maths functions for the choices, merges, cuts and (compact) renumbered positions written out."""
    from probe.pruning.sparsity.vitcop import (
        cluster_plan,
        deep_keep,
        grid_positions,
        key_saliency,
        vic_labels,
        vitcop_budgets,
    )

    model, adapter = loaded.model, loaded.adapter
    layers = adapter.decoder_layers(model)
    sample = capture(model, adapter, inputs)
    visual = sample.visual_mask
    n = int(visual.sum())
    if "patches" in settings:  # after Stage I: budgets of the image's patches
        budgets = vitcop_budgets(settings["rho"], settings["vision_keep"], settings["patches"], len(layers),
                                 settings["shallow"], settings["deep"], settings.get("deep_divisor", 5))
    else:
        budgets = vitcop_budgets(settings["rho"], 1.0, n, len(layers), settings["shallow"], settings["deep"],
                                 settings.get("deep_divisor", 5))
    r, d = min(budgets.shallow, n), min(budgets.deep, n)
    hidden, alive, positions = sample.hidden, torch.arange(visual.numel()), None
    first, previous_input = sample.hidden[0], sample.hidden
    for i, layer in enumerate(layers):
        call = sample.calls[i]
        if i in (settings["shallow"], settings["deep"]):
            prev = layers[i - 1]
            keys = prev.self_attn.k_proj(prev.input_layernorm(previous_input))[0].reshape(hidden.shape[1], -1, 8)
            local = visual[alive].nonzero().flatten()
            saliency = key_saliency(keys[local])
            vis = alive[local]
            if i == settings["shallow"]:
                side = int(math.isqrt(n))
                labels = settings.get("labels")
                if labels is None:
                    labels = vic_labels(first[vis], grid_positions(side, side), settings.get("cluster_pct", 0.18))
                plan = cluster_plan(labels, saliency, r)
                hidden = hidden.clone()
                for rep, group in zip(plan.representatives, plan.groups):
                    mean = hidden[0, local[group]].mean(0)
                    upstream = settings.get("merge", "upstream") == "upstream"
                    hidden[0, local[rep]] = hidden[0, local[rep]] + mean if upstream else mean
                chosen = sorted(plan.kept + plan.representatives)
            else:
                chosen = deep_keep(saliency, d).tolist()
            keep = torch.sort(torch.cat([alive[~visual[alive]], vis[chosen]])).values
            rows = torch.searchsorted(alive, keep)
            hidden = hidden[:, rows]
            if i == settings["deep"] and settings.get("deep_positions", "compact") == "compact":
                positions = rows
            alive = keep
        if alive.numel() < visual.numel():
            call = cut(call, alive, visual.numel())
            if positions is not None:
                ids = positions.unsqueeze(0)
                kwargs = dict(call.kwargs, position_ids=ids,
                              position_embeddings=adapter.language_model(model).rotary_emb(hidden, ids))
                call = BlockCall(call.args, kwargs, call.injection)
        previous_input = hidden
        hidden = run_block(layer, hidden, call)
    return model.lm_head(adapter.final_norm(model)(hidden))[0]


@torch.no_grad()
@pytest.mark.parametrize("options", [{}, {"merge": "mean", "deep_positions": "keep"}])
def test_vitcop_stages_equal_a_hand_built_forward(options):
    loaded, inputs = request("llava")
    settings = {"rho": 0.5, "shallow": 1, "deep": 2, "deep_divisor": 2, "cluster_pct": 0.25, "stage_one": "off",
                **options}
    spec = "vitcop(" + ", ".join(f"{k}={v}" for k, v in settings.items()) + ")"
    runtime = TokenPruningRuntime(make_pruner(spec), loaded.adapter)
    with runtime.attached(loaded.model), runtime.request(inputs["input_ids"], loaded.model.config):
        ours = loaded.model(**inputs).logits[0]
    expected = manual_vitcop(loaded, inputs, settings)
    assert ours.shape == expected.shape and torch.allclose(ours, expected, atol=1e-5)
    counts = runtime.records[-1]["alive_visual"]
    assert counts[0] == 16 and counts[0] > counts[1] > counts[2]  # tiny llava: 16 visual tokens, R, then D
    assert [s["stage"] for s in runtime.records[-1]["stages"]] == ["II", "III"]


@torch.no_grad()
@pytest.mark.parametrize("attention", ["sdpa", "eager"])
def test_vitcop_without_pruning_is_the_dense_model(attention):
    loaded, inputs = request("llava")
    loaded.model.set_attn_implementation(attention)
    dense = loaded.model(**inputs).logits
    dense_tokens = loaded.model.generate(**inputs, max_new_tokens=5, do_sample=False)
    spec = "vitcop(rho=1, shallow=1, deep=2, deep_divisor=1, merge=mean, deep_positions=keep, stage_one=off)"
    ours, tokens = served(loaded, inputs, spec, new_tokens=5)
    assert torch.allclose(ours, dense, atol=1e-5) and torch.equal(tokens, dense_tokens)
    real = TokenPruningRuntime(make_pruner("vitcop(rho=0.5, shallow=1, deep=2, deep_divisor=2)"), loaded.adapter)
    with real.attached(loaded.model):  # all three stages; decoding runs
        prepared = real.prepare(inputs, loaded.model.config)
        with real.request(prepared["input_ids"], loaded.model.config):
            pruned = loaded.model.generate(**prepared, max_new_tokens=5, do_sample=False, min_new_tokens=5)
    assert pruned.shape[1] - prepared["input_ids"].shape[1] == 5
    assert real.records[-1]["alive_visual"][0] == 8 > real.records[-1]["alive_visual"][2]  # 16 patches, 8 enter
    assert make_pruner("vitcop-1/9").settings.rho == pytest.approx(1 / 9)


@torch.no_grad()
def test_key_saliency_is_the_same_before_and_after_rope():
    """The head-mean key norm from k_proj's output equals the one from the cache's rotated keys."""
    from probe.models.compat import returned_cache
    from probe.pruning.sparsity.vitcop import key_saliency

    loaded, inputs = request("qwen2_vl")
    layer = loaded.adapter.decoder_layers(loaded.model)[0]
    seen = {}
    handle = layer.self_attn.k_proj.register_forward_hook(lambda m, i, o: seen.update(keys=o[0]))
    cache = returned_cache(loaded.model(**inputs, use_cache=True))
    handle.remove()
    from_hook = key_saliency(seen["keys"].reshape(seen["keys"].shape[0], -1, layer.self_attn.head_dim))
    from_cache = key_saliency(cache.layers[0].keys[0].transpose(0, 1))
    assert torch.allclose(from_hook, from_cache, atol=1e-5)


@torch.no_grad()
def test_cls_attention_from_projections_equals_eager_probabilities():
    from probe.token_pruning.vitcop import cls_saliency, stage_one_layer

    loaded, inputs = request("llava")
    tower = copy.deepcopy(loaded.model.model.vision_tower)
    tower.set_attn_implementation("eager")
    layer = stage_one_layer(loaded.model)
    attention = tower.encoder.layers[layer].self_attn
    seen = {}
    hooks = [attention.q_proj.register_forward_hook(lambda m, i, o: seen.update(q=o[0])),
             attention.k_proj.register_forward_hook(lambda m, i, o: seen.update(k=o[0]))]
    out = tower(inputs["pixel_values"], output_attentions=True)
    for hook in hooks:
        hook.remove()
    shape = (-1, attention.num_heads, attention.head_dim)
    ours = cls_saliency(seen["q"].reshape(shape), seen["k"].reshape(shape), attention.scale)
    assert torch.allclose(ours, out.attentions[layer][0, :, 0, 1:].sum(0), atol=1e-6)


@torch.no_grad()
def test_vitcop_with_its_vision_stage_equals_a_hand_built_forward():
    """Stage I on tiny llava: the most CLS-attended patches (from the eager attention probabilities), their
    features in place of fewer placeholders, clusters from the feature layer's keys; then Stages II-III."""
    from probe.pruning.sparsity.vitcop import grid_positions, vic_labels
    from probe.token_pruning.vitcop import stage_one_layer

    loaded, inputs = request("llava")
    model = loaded.model
    settings = {"rho": 0.4, "vision_keep": 0.75, "shallow": 1, "deep": 2, "deep_divisor": 2, "cluster_pct": 0.25}
    spec = "vitcop(" + ", ".join(f"{k}={v}" for k, v in settings.items()) + ")"
    wrapper = ProbeLVLM(loaded=loaded, show_progress=False, token_pruning=spec)
    with wrapper._serving():
        cut_inputs = wrapper._prepared(inputs)
        with wrapper._request(cut_inputs["input_ids"]):
            ours = model(**cut_inputs).logits[0]
    record = wrapper.token_runtime.records[-1]
    assert record["visual"] == 12 and record["stages"][0]["after_stage_one"]  # int(0.75 * 16) patches enter

    tower = copy.deepcopy(model.model.vision_tower)
    tower.set_attn_implementation("eager")
    layer = stage_one_layer(model)
    vision = tower(inputs["pixel_values"], output_attentions=True, output_hidden_states=True)
    saliency = vision.attentions[layer][0, :, 0, 1:].sum(0)
    kept = torch.sort(torch.topk(saliency, 12).indices).values
    attention = tower.encoder.layers[layer]
    keys = attention.self_attn.k_proj(attention.layer_norm1(vision.hidden_states[layer]))[0, 1:][kept]
    labels = vic_labels(keys, grid_positions(4, 4)[kept], 0.25)
    features = model.model.get_image_features(inputs["pixel_values"], vision_feature_layer=-1,
                                              vision_feature_select_strategy="default").pooler_output[0][kept]
    image = inputs["input_ids"][0] == model.config.image_token_id
    drop = image.nonzero().flatten()[12:]
    keep_ids = torch.ones_like(image)
    keep_ids[drop] = False
    manual_inputs = {**inputs, "input_ids": inputs["input_ids"][:, keep_ids],
                     "attention_mask": inputs["attention_mask"][:, keep_ids]}
    owner = loaded.adapter.image_features_owner(model)
    owner.get_image_features = lambda *a, **k: type(vision)(pooler_output=[features])
    try:
        expected = manual_vitcop(loaded, manual_inputs, {**settings, "labels": labels, "patches": 16})
    finally:
        del owner.get_image_features
    assert ours.shape == expected.shape and torch.allclose(ours, expected, atol=1e-5)


def test_weighted_statistics_equal_a_plain_sum():
    from probe.pruning.sparsity.stats import InputStats

    torch.manual_seed(2)
    x, w = torch.randn(7, 3), torch.rand(7)
    stats = InputStats.empty(3, "cpu", with_hessian=True)
    stats.add(x, w)
    for j in range(3):
        expected = sum(w[t].item() * x[t, j].item() ** 2 for t in range(7))
        assert stats.sq_sum[j].item() == pytest.approx(expected, rel=1e-5)
    for i in range(3):
        for j in range(3):
            expected = sum(w[t].item() * x[t, i].item() * x[t, j].item() for t in range(7))
            assert stats.xtx[i, j].item() == pytest.approx(expected, rel=1e-5, abs=1e-6)
    assert stats.count == pytest.approx(w.sum().item())


@torch.no_grad()
def test_kept_selector_weights_tokens_by_the_methods_saliency():
    from probe.calibration.calibrate import capture_calibration
    from probe.data.calibration import CalibrationSpec

    loaded = load_model("tiny:llava")
    samples = capture_calibration(loaded, CalibrationSpec(nsamples=2), show_progress=False)
    fastv = with_token_schedule(loaded.model, loaded.adapter, samples, make_pruner("fastv(k=1, ratio=0.5)"))
    # FastV's weights from layer 1 on: the layer-0 attention of the last query, mean 1 over the kept visual tokens
    eager = copy.deepcopy(loaded.model)
    eager.set_attn_implementation("eager")
    sample = samples[0]
    hidden = sample.hidden
    layer0 = loaded.adapter.decoder_layers(eager)[0]
    from probe.calibration.attention import eager_call, recording_attention

    with recording_attention(loaded.adapter.attention_module(layer0)) as record:
        run_block(layer0, hidden, eager_call(sample.calls[0], sample.seq_len, hidden.dtype, hidden.device))
    attention = record["probs"][:, -1, :].mean(0)
    alive, weights = fastv[0].meta["alive"][1], fastv[0].meta["alive_weights"][1]
    kept_visual = alive & sample.visual_mask
    expected = attention[kept_visual] / attention[kept_visual].mean()
    assert torch.allclose(weights[kept_visual], expected, atol=1e-5)
    assert bool((weights[alive & ~sample.visual_mask] == 1).all()) and bool((weights[~alive] == 0).all())
    assert bool((fastv[0].meta["alive_weights"][0] == 1).all())  # before the stage every token counts once
    # without saliency (random) the weighted selector is the unweighted one
    rand = with_token_schedule(loaded.model, loaded.adapter, samples, make_pruner("random(k=1, ratio=0.5)"))
    results = {}
    for weighted in (False, True):
        model = copy.deepcopy(loaded.model)
        config = PruneConfig(tokens="kept", tokens_settings={"weighted": weighted})
        prune(model, loaded.adapter, rand, config, show_progress=False)
        results[weighted] = list(model.state_dict().values())
    assert all(torch.equal(a, b) for a, b in zip(results[False], results[True]))
    # with FastV's, the statistics of block 1 receive exactly the alive tokens' weights
    from probe.pruning.sparsity import stats as stats_module

    passed = []
    original = stats_module.InputStats.add

    def spy(self, x, weights=None):
        passed.append(weights)
        original(self, x, weights)

    stats_module.InputStats.add = spy
    try:
        prune(copy.deepcopy(loaded.model), loaded.adapter, fastv[:1], PruneConfig(
            tokens="kept", tokens_settings={"weighted": True}), show_progress=False)
    finally:
        stats_module.InputStats.add = original
    expected = weights[alive]
    assert any(w is not None and w.shape == expected.shape and torch.allclose(w, expected) for w in passed)


@torch.no_grad()
def test_vitcop_vision_stage_on_llava_next_keeps_the_most_attended_patches_and_every_row_end():
    """LLaVA-NeXT (an extension of the released code): the kept tokens are the row ends plus the
    int(vision_keep * P) patch tokens whose crop's CLS attends them most, computed here from the eager
    attention probabilities of every crop and the model's own packing; with everything kept, ViTCoP's
    no-op settings give the dense model."""
    from probe.token_pruning.vitcop import stage_one_layer

    loaded = load_model("tiny:llava_next")
    model = loaded.model
    wrapper = ProbeLVLM(loaded=loaded, show_progress=False, token_pruning=(
        "vitcop(rho=0.4, vision_keep=0.75, shallow=1, deep=2, deep_divisor=2)"))
    picture = Image.fromarray((np.random.RandomState(1).rand(40, 64, 3) * 255).astype("uint8"))
    inputs = wrapper._visual_inputs("What is it?", [picture])
    with wrapper._serving():
        prepared = wrapper._prepared(inputs)
        pruner = wrapper.token_runtime.pruner
        ours = pruner._cached[1].pooler_output[0]
        with wrapper._request(prepared["input_ids"]):
            model(**prepared)
    tower = copy.deepcopy(model.model.vision_tower)
    tower.set_attn_implementation("eager")
    crops = inputs["pixel_values"][0]
    vision = tower(crops, output_attentions=True)
    saliency = vision.attentions[stage_one_layer(model)][:, :, 0, 1:].sum(1)  # (crops, patches)
    info = torch.stack([saliency, torch.ones_like(saliency)], dim=-1)
    packed = model.model.pack_image_features([info], inputs["image_sizes"], "default",
                                             image_newline=torch.zeros(2))[0][0]
    patch = packed[:, 1] > 0.5
    positions = patch.nonzero().flatten()
    top = positions[torch.topk(packed[positions, 0], int(0.75 * positions.numel())).indices]
    keep = ~patch
    keep[top] = True
    features = model.model.get_image_features(inputs["pixel_values"], inputs["image_sizes"]).pooler_output[0]
    assert torch.allclose(ours, features[keep], atol=1e-6)
    assert int((prepared["input_ids"] == model.config.image_token_id).sum()) == int(keep.sum())
    record = wrapper.token_runtime.records[-1]
    assert record["visual"] == int(keep.sum()) and record["stages"][0]["after_stage_one"]
    dense = model(**inputs).logits
    no_op = ProbeLVLM(loaded=loaded, show_progress=False, token_pruning=(
        "vitcop(rho=1, vision_keep=1, shallow=1, deep=2, deep_divisor=1, merge=mean, deep_positions=keep)"))
    with no_op._serving():
        same = no_op._prepared(inputs)
        with no_op._request(same["input_ids"]):
            logits = model(**same).logits
    assert torch.allclose(logits, dense, atol=1e-5)


def _stage_one_pruner(**settings):
    """A ViTCoP pruner in the state its vision stage leaves for a request (tiny geometry: 16 patches per image,
    ``vision_keep`` 0.75, so 12 enter the decoder per image)."""
    from probe.token_pruning.vitcop import VitcopPruner

    pruner = make_pruner("vitcop(" + ", ".join(f"{k}={v}" for k, v in {
        "rho": 0.5, "vision_keep": 0.75, "shallow": 1, "deep": 2, "deep_divisor": 2, "cluster_pct": 0.25,
        **settings}.items()) + ")")
    assert isinstance(pruner, VitcopPruner)
    pruner._vision_layer, pruner._patches, pruner._layers = 0, 16, 3
    return pruner


def test_vitcop_labels_of_several_images_are_offset_as_released():
    """Each image's labels, -1 included, are offset by image index x its kept tokens: the second image's
    unlabelled tokens form a pseudo-cluster of their own (label 12 - 1 = 11), and no cluster spans images."""
    from types import SimpleNamespace

    from probe.pruning.sparsity.vitcop import grid_positions, vic_labels
    from probe.token_pruning.vitcop import cls_saliency

    pruner = _stage_one_pruner(cluster_pct=0.1, dc=0.5)
    attention = SimpleNamespace(num_heads=2, head_dim=4, scale=0.5)
    for seed in range(200):  # random features until both images have tokens the clustering leaves unlabelled
        generator = torch.Generator().manual_seed(seed)
        seen = {"q": torch.randn(2, 17, 8, generator=generator), "k": torch.randn(2, 17, 8, generator=generator)}
        features = [torch.randn(16, 6, generator=generator) for _ in range(2)]
        expected, loose = [], []
        for image in range(2):
            saliency = cls_saliency(seen["q"][image].reshape(17, 2, 4), seen["k"][image].reshape(17, 2, 4), 0.5)
            kept = torch.sort(torch.topk(saliency, 12).indices).values
            found = vic_labels(seen["k"][image][1:][kept], grid_positions(4, 4)[kept], 0.1, 0.5, 0.6)
            expected += [int(label) + image * 12 for label in found]  # the release's offset, -1 included
            loose += [bool(label == -1) for label in found]
        if any(loose[:12]) and any(loose[12:]):
            break
    else:
        pytest.fail("no seed left tokens unlabelled in both images")
    out = pruner._select_patches(SimpleNamespace(pooler_output=features), seen, attention)
    assert pruner._labels.tolist() == expected and pruner._loose.tolist() == loose
    assert set(pruner._labels[12:][pruner._loose[12:]].tolist()) == {11}
    assert not set(pruner._labels[:12].tolist()) & set(pruner._labels[12:].tolist())
    assert [f.shape[0] for f in out.pooler_output] == [12, 12]


def test_vitcop_unlabelled_own_applies_after_its_vision_stage():
    """With Stage I's labels holding unlabelled tokens, ``unlabelled=own`` gives each its own cluster
    (before, Stage II took the vision stage's labels as they were and the option did nothing)."""
    from probe.pruning.sparsity.vitcop import cluster_plan, key_saliency
    from probe.token_pruning.base import KEYS, StageView

    labels = torch.tensor([0, 0, 0, 1, 1, -1, -1, -1, -1, 2, 2, 2, 11, 12, 12, 12, 13, 13, 11, 11, 11, 14, 14, 14])
    loose = (labels == -1) | (labels == 11)
    sequence = 30
    visual = torch.zeros(sequence, dtype=torch.bool)
    visual[3:27] = True
    keys = torch.randn(sequence, 2, 4, generator=torch.Generator().manual_seed(0))
    view = StageView(1, torch.arange(sequence), visual, torch.zeros(sequence, 8), torch.zeros(sequence, 8),
                     {KEYS: keys})
    kept = {}
    for mode in ("cluster", "own"):
        pruner = _stage_one_pruner(unlabelled=mode)
        pruner._labels, pruner._loose = labels, loose
        selection = pruner.select(view)
        kept[mode] = selection.keep.tolist()
        assert selection.record["unlabelled"] == 8
        budget, _ = pruner.budgets(24)
        saliency = key_saliency(keys[3:27])
        # the reference: each loose token relabelled by hand with a label no cluster has
        own = labels.clone()
        if mode == "own":
            for offset, position in enumerate(loose.nonzero().flatten().tolist()):
                own[position] = 100 + offset
        plan = cluster_plan(own, saliency, budget)
        text = [p for p in range(sequence) if not visual[p]]
        assert kept[mode] == sorted(text + [3 + i for i in plan.kept + plan.representatives])
        assert selection.record["clusters"] == len(set(own.tolist()))
    assert kept["cluster"] != kept["own"]

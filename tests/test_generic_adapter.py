"""The generic adapter: what it finds by structure equals what the family adapters state by hand, its
masks equal theirs bit for bit, and an architecture no family file names replays, prunes and probes
exactly; architectures the method cannot apply to are refused with the reason."""

import copy
import re

import pytest
import torch
import transformers as tf
from conftest import FAMILIES, random_image, user_turn

from probe.calibration.calibrate import capture_calibration
from probe.calibration.capture import capture, replay
from probe.data.calibration import CalibrationSpec
from probe.models import UnknownModelFamilyError, check_family, generic_families, get_adapter
from probe.models.generic import GenericAdapter, UnsupportedArchitectureError, discover
from probe.models.loading import LoadedModel, load_model
from probe.models.tiny import text_config
from probe.pruning.engine import PruneConfig, prune
from probe.pruning.mot import to_mot


@pytest.mark.parametrize("family", FAMILIES)
def test_structure_found_equals_the_family_adapters(family):
    loaded = load_model(f"tiny:{family}")
    model, own = loaded.model, loaded.adapter
    found = discover(model)
    assert isinstance(found, GenericAdapter) and not isinstance(own, GenericAdapter)
    assert found.language_model(model) is own.language_model(model)
    assert found.decoder_layers(model) is own.decoder_layers(model)
    assert found.final_norm(model) is own.final_norm(model)
    layer = own.decoder_layers(model)[0]
    assert found.attention_module(layer) is own.attention_module(layer)
    assert found.prunable == tuple(own.prunable)
    assert found.prunable_linears(layer) == own.prunable_linears(layer)
    assert {frozenset(g) for g in found.shared_inputs} == {frozenset(g) for g in own.shared_inputs}
    assert found.attention_output == own.attention_output
    assert found.pathway_linears() == own.pathway_linears()
    assert discover(model) is found  # found once per model


@pytest.mark.parametrize("family", FAMILIES)
def test_masks_with_the_generic_adapter_equal_the_family_adapters_bit_for_bit(family):
    loaded = load_model(f"tiny:{family}")
    samples = capture_calibration(loaded, CalibrationSpec(nsamples=2), show_progress=False)
    configs = [PruneConfig(method="wanda", tokens="text")]
    if family in ("llava", "qwen2_vl", "gemma3"):
        configs += [PruneConfig(method="sparsegpt", pattern="2:4"), PruneConfig(method="atv", true_sequential=True)]
    for config in configs:
        ours, theirs = copy.deepcopy(loaded.model), copy.deepcopy(loaded.model)
        prune(theirs, loaded.adapter, samples, config, show_progress=False)
        prune(ours, discover(ours), samples, config, show_progress=False)
        for (name, a), (_, b) in zip(ours.named_parameters(), theirs.named_parameters()):
            assert torch.equal(a, b), (config.label, name)


def tiny_vipllava() -> LoadedModel:
    """A tiny VipLlava (``vipllava``: no family file names it), with LLaVA's processor."""
    from probe.models.tiny import CHAT_TEMPLATE, word_tokenizer

    vocab, image = 128, 120
    vision = tf.CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                                 image_size=32, patch_size=8, projection_dim=32)
    config = tf.VipLlavaConfig(vision_config=vision, text_config=text_config(tf.LlamaConfig, vocab),
                               image_token_index=image, vision_feature_layers=[-2, -1])
    torch.manual_seed(0)
    model = tf.VipLlavaForConditionalGeneration(config).eval()
    tokenizer = word_tokenizer({"<image>": image}, vocab, image_token="<image>")
    images = tf.CLIPImageProcessorPil(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    processor = tf.LlavaProcessor(image_processor=images, tokenizer=tokenizer, patch_size=8,
                                  vision_feature_select_strategy="full", num_additional_image_tokens=0,
                                  chat_template=CHAT_TEMPLATE.replace("{{ image_placeholder }}", "<image>"))
    return LoadedModel(model, processor, get_adapter(model), "vipllava")


def test_an_architecture_without_a_family_file_replays_prunes_and_probes_exactly():
    loaded = tiny_vipllava()
    model, adapter = loaded.model, loaded.adapter
    assert "vipllava" in generic_families() and isinstance(adapter, GenericAdapter)
    check_family("vipllava")
    inputs = adapter.build_inputs(loaded.processor, user_turn("what is it"), [random_image(0, 40, 40)])
    with torch.no_grad():
        reference = model.model(**inputs, use_cache=False).last_hidden_state
        logits = model(**inputs).logits
    sample = capture(model, adapter, inputs, "s0")
    assert (replay(model, adapter, sample) - reference).abs().max().item() <= 1e-5
    # the visual positions are where the model's own image features went
    embeddings = model.get_input_embeddings()(inputs["input_ids"].clamp(max=127))[0]
    assert torch.equal((sample.hidden[0] - embeddings).abs().amax(-1) > 0, sample.visual_mask)
    assert int(sample.visual_mask.sum()) == 16

    probe = to_mot(copy.deepcopy(model), adapter)
    with torch.no_grad():
        # the dense MoT probe is the model, up to the rounding of products over the two pathways' rows
        assert (probe.model(**inputs).logits - logits).abs().max() <= 1e-6
    pruned = copy.deepcopy(model)
    report = prune(pruned, discover(pruned), [sample], PruneConfig(method="wanda", sparsity=0.5),
                   show_progress=False)
    assert all(abs(s - 0.5) < 1e-9 for s in report.sparsity.values())
    assert len(report.sparsity) == 7 * len(adapter.decoder_layers(model))


def test_architectures_the_method_cannot_apply_to_are_refused_with_the_reason():
    text = text_config(tf.LlamaConfig, 128)
    vision = tf.MllamaVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                   num_global_layers=1, attention_heads=4, image_size=32, patch_size=8,
                                   vision_output_dim=64, max_num_tiles=1, supported_aspect_ratios=[[1, 1]])
    mllama_text = tf.MllamaTextConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2, vocab_size=128,
                                      cross_attention_layers=[1], pad_token_id=0, bos_token_id=1, eos_token_id=2)
    mllama = tf.MllamaForConditionalGeneration(tf.MllamaConfig(vision_config=vision, text_config=mllama_text))
    with pytest.raises(UnsupportedArchitectureError, match="block 1 attends to image features through "
                                                           "cross-attention"):
        discover(mllama)
    with pytest.raises(UnknownModelFamilyError, match="unknown model family 'bert'"):
        check_family("bert")
    with pytest.raises(UnknownModelFamilyError, match="its structure is found on the loaded model"):
        get_adapter("vipllava")
    lm = tf.LlamaForCausalLM(text)
    lm.config.is_encoder_decoder = True  # as an encoder-decoder's config says
    with pytest.raises(UnsupportedArchitectureError, match="is an encoder-decoder model"):
        discover(lm)


def test_probe_check_passes_every_family_and_names_what_fails(tmp_path, capsys, monkeypatch):
    from probe.cli import main

    assert main(["check", "tiny:idefics3"]) == 0
    out = capsys.readouterr().out
    for name in ("decoder", "linears", "inputs", "visual positions", "replay", "prune", "MoT probe"):
        assert re.search(rf"^{name}\s+ok\s", out, re.M), (name, out)
    assert out.strip().endswith("tiny:idefics3: supported")

    # a config whose image token id is not where the features go: the visual positions row fails, exit 1
    from probe.models import get_adapter

    llava = get_adapter("llava")
    monkeypatch.setattr(type(llava), "visual_token_ids", lambda self, config: [5])
    assert main(["check", "tiny:llava"]) == 1
    out = capsys.readouterr().out
    assert re.search(r"^visual positions\s+FAILED\s", out, re.M)
    assert out.strip().endswith("not supported (visual positions failed)")
    monkeypatch.undo()

    # an architecture that cannot be supported, or is not one: one line and exit status 2
    (tmp_path / "bert").mkdir()
    (tmp_path / "bert" / "config.json").write_text('{"model_type": "bert"}')
    assert main(["check", str(tmp_path / "bert")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "unknown model family 'bert'" in err


def test_probe_check_refuses_an_architecture_the_method_cannot_apply_to(tmp_path, capsys):
    from probe.cli import main

    vision = tf.MllamaVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                   num_global_layers=1, attention_heads=4, image_size=32, patch_size=8,
                                   vision_output_dim=64, max_num_tiles=1, supported_aspect_ratios=[[1, 1]])
    text = tf.MllamaTextConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                               num_key_value_heads=2, vocab_size=128, cross_attention_layers=[1], pad_token_id=0,
                               bos_token_id=1, eos_token_id=2)
    model = tf.MllamaForConditionalGeneration(tf.MllamaConfig(vision_config=vision, text_config=text))
    model.save_pretrained(tmp_path / "mllama")
    loaded = load_model("tiny:llava")
    loaded.processor.save_pretrained(tmp_path / "mllama")  # any processor: the refusal comes first
    capsys.readouterr()
    assert main(["check", str(tmp_path / "mllama"), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "cross-attention; the method needs visual tokens in the sequence" in err


def test_probe_check_config_builds_a_small_model_of_that_exact_config(tmp_path, capsys):
    from transformers import CONFIG_MAPPING

    from probe.cli import main

    full = CONFIG_MAPPING["glm4v"]()  # a full-size config, as a hub model's config.json holds it
    full.save_pretrained(tmp_path / "glm")
    assert main(["check", "--config", str(tmp_path / "glm" / "config.json"), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"^decoder\s+ok\s+4 blocks of Glm4vTextDecoderLayer", out, re.M), out
    assert out.strip().endswith("glm/config.json: supported")
    assert main(["check", "--config", str(tmp_path / "missing.json")]) == 2
    assert "no such file" in capsys.readouterr().err
    assert main(["check", "tiny:llava", "--config", str(tmp_path / "glm")]) == 2
    assert "give MODEL or --config, not both" in capsys.readouterr().err
    assert main(["check", "--config", str(tmp_path / "glm"), "--max-pixels", "1000"]) == 2
    assert "--config builds its own inputs" in capsys.readouterr().err


def test_the_check_names_the_lmms_eval_stock_wrappers_that_load_a_model():
    from probe.contract.check import run_contract
    from probe.evaluation.stock_wrappers import stock_wrappers

    llava, qwen = load_model("tiny:llava"), load_model("tiny:qwen2_vl")
    assert "llava_hf" in stock_wrappers(llava.model)  # lmms-eval's llava_hf loads LlavaForConditionalGeneration
    assert "qwen2_vl" in stock_wrappers(qwen.model) and "llava_hf" not in stock_wrappers(qwen.model)
    row = next(r for r in run_contract(llava) if r.name == "lmms-eval wrappers")
    assert row.holds is None and "llava_hf" in row.detail

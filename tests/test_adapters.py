"""Adapters and layer-wise replay on tiny models of the real transformers classes."""

import pytest
import torch
from conftest import FAMILIES, random_image, user_turn

from probe.calibration.capture import capture, replay
from probe.models import InvalidInputsError, UnknownModelFamilyError, get_adapter, supported_families
from probe.models.tiny import tiny_lvlm

CASES = [(40, 56, "what color is the cat"), (64, 30, "how many dog are there in the picture on the left"),
         (24, 24, "describe this image")]


@pytest.mark.parametrize("family", FAMILIES)
def test_replay_reproduces_last_hidden_state_and_visual_mask(family):
    tiny = tiny_lvlm(family)
    adapter = get_adapter(tiny.model)
    embed = tiny.model.get_input_embeddings()
    lengths = set()
    for seed, (h, w, question) in enumerate(CASES):
        inputs = adapter.build_inputs(tiny.processor, user_turn(question), [random_image(seed, h, w)])
        lengths.add(inputs["input_ids"].shape[1])
        with torch.no_grad():
            reference = tiny.model.model(**inputs, use_cache=False).last_hidden_state
        sample = capture(tiny.model, adapter, inputs, f"s{seed}")
        out = replay(tiny.model, adapter, sample)
        assert (out - reference).abs().max().item() <= 1e-5

        # positions whose block-0 input differs from the token embedding are where image features went
        ids = inputs["input_ids"].clamp(max=embed.num_embeddings - 1)
        with torch.no_grad():
            token_embeddings = embed(ids)[0]
        changed = (sample.hidden[0] - token_embeddings).abs().amax(dim=-1) > 0
        assert sample.visual_mask.sum() > 0
        assert torch.equal(changed, sample.visual_mask)
    assert len(lengths) > 1, "samples should differ in length"


@pytest.mark.parametrize("family", ["llava_next", "qwen2_vl", "gemma3"])
def test_replay_of_text_only_sample(family):
    tiny = tiny_lvlm(family)
    adapter = get_adapter(tiny.model)
    inputs = adapter.build_inputs(tiny.processor, user_turn("what is the answer", with_image=False), [])
    with torch.no_grad():
        reference = tiny.model.model(**inputs, use_cache=False).last_hidden_state
    sample = capture(tiny.model, adapter, inputs)
    assert not sample.visual_mask.any()
    assert (replay(tiny.model, adapter, sample) - reference).abs().max().item() <= 1e-5


def test_gemma3_layers_get_their_own_masks():
    tiny = tiny_lvlm("gemma3")
    adapter = get_adapter(tiny.model)
    question = "what color is the cat and how many dog are there in the picture on the left"
    inputs = adapter.build_inputs(tiny.processor, user_turn(question), [random_image(0, 32, 32)])
    sample = capture(tiny.model, adapter, inputs)
    sliding, full = sample.calls[0].kwargs["attention_mask"], sample.calls[1].kwargs["attention_mask"]
    assert not torch.equal(sliding, full)


def test_visual_token_ids_come_from_the_config():
    tiny = tiny_lvlm("llava")
    tiny.model.config.image_token_index = 7
    adapter = get_adapter(tiny.model)
    assert adapter.visual_token_ids(tiny.model.config) == [7]
    mask = adapter.visual_mask(torch.tensor([1, 7, 7, 3]), tiny.model.config)
    assert mask.tolist() == [False, True, True, False]


def test_unknown_family_lists_supported():
    with pytest.raises(UnknownModelFamilyError) as err:
        get_adapter("bert")
    assert "bert" in str(err.value) and "llava_next" in str(err.value)
    assert {"llava", "llava_next", "llava_onevision", "qwen2_vl", "qwen2_5_vl"} <= set(supported_families())


def test_qwen2_5_vl_requires_mm_token_type_ids():
    adapter = get_adapter("qwen2_5_vl")
    with pytest.raises(InvalidInputsError, match="mm_token_type_ids"):
        adapter.check_inputs({"input_ids": torch.ones(1, 3), "pixel_values": torch.ones(4, 4),
                              "image_grid_thw": torch.ones(1, 3)})


def test_llava_next_requires_image_sizes():
    with pytest.raises(InvalidInputsError, match="image_sizes"):
        get_adapter("llava_next").check_inputs({"pixel_values": torch.ones(1)})


def test_max_pixels_caps_qwen_visual_tokens_and_is_refused_elsewhere():
    from probe.models.loading import load_model

    counts = []
    for cap in (None, 16 * 16):
        loaded = load_model("tiny:qwen2_vl", max_pixels=cap)
        inputs = loaded.adapter.build_inputs(loaded.processor, user_turn("what"), [random_image(0, 64, 64)])
        counts.append(int(loaded.adapter.visual_mask(inputs["input_ids"], loaded.model.config).sum()))
    # 64x64 with the tiny default cap of 48x48 pixels; patch 4, merge 2 -> (h/8)*(w/8) tokens
    assert counts[1] < counts[0] and counts[1] == (16 // 8) * (16 // 8)
    with pytest.raises(InvalidInputsError, match="max_pixels"):
        load_model("tiny:llava", max_pixels=1000)

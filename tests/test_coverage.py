"""The coverage table over transformers' image-text-to-text architectures: every architecture it marks
supported still passes the contract on its tiny model, every other one carries its reason, and the
config shrinking keeps what ties a config together."""

import re
from pathlib import Path

import pandas as pd
import pytest
import torch
import transformers as tf
from transformers.models.auto.modeling_auto import MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES

from probe.contract.coverage import cover
from probe.models import supported_families
from probe.models.shrink import _representative, _scale_rope_sections, tiny_config, token_ids
from probe.models.tiny import WORDS, word_tokenizer

TABLE = Path(__file__).resolve().parent.parent / "results" / "coverage.csv"
STORED = pd.read_csv(TABLE, keep_default_na=False)
SUPPORTED = sorted(STORED[STORED.status == "supported"].architecture)


def test_the_table_covers_every_architecture_and_names_a_reason_for_each_other_one():
    assert set(STORED.architecture) == set(MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES) | set(supported_families())
    assert set(STORED.status) <= {"supported", "refused", "fails", "not built"}
    others = STORED[STORED.status != "supported"]
    assert (others.reason.str.len() > 10).all() and (others.failing != "").all()
    assert set(supported_families()) <= set(SUPPORTED)  # every family file passes its own contract


@pytest.mark.parametrize("architecture", SUPPORTED)
def test_every_architecture_marked_supported_passes_the_contract(architecture):
    row = cover(architecture)
    assert (row.status, row.failing, row.reason) == ("supported", "", "")


def test_shrinking_keeps_what_ties_a_config_together():
    # a stack of alternating kinds keeps one of each kind, in the original order
    assert _representative(["linear", "linear", "linear", "full"] * 6, 4) == ["linear", "linear", "linear", "full"]
    assert _representative(["sliding"] * 5 + ["full"], 4) == ["sliding", "sliding", "sliding", "full"]
    # rotary sections scaled to half the smaller head, every section at least 1
    config = tf.PretrainedConfig()
    config.head_dim, config.rope_parameters = 8, {"mrope_section": [16, 24, 24]}
    _scale_rope_sections(config)
    assert sum(config.rope_parameters["mrope_section"]) == 4 and min(config.rope_parameters["mrope_section"]) >= 1
    # every width and depth shrunk, every special token id inside the vocabulary
    qwen = tiny_config("qwen2_vl")
    text = qwen.get_text_config()
    assert (text.hidden_size, text.num_hidden_layers, text.num_attention_heads) == (32, 4, 4)
    assert qwen.vision_config.depth == 4
    assert max(token_ids(qwen).values()) < text.vocab_size
    assert token_ids(qwen)["image"] == qwen.image_token_id


def test_feature_layers_and_rotary_sections_follow_the_shrunk_towers():
    vip = tiny_config("vipllava")  # full size: layers (-2, -5, -8, -11, 6) of a 24-block tower's 25 states
    states = vip.vision_config.num_hidden_layers + 1
    assert vip.vision_feature_layers == tuple(-((-i - 1) % states) - 1 if i < 0 else i % states
                                              for i in (-2, -5, -8, -11, 6))
    assert all(-states <= i < states for i in vip.vision_feature_layers)
    glm = tiny_config("glm4v")  # its modeling code's default sections (8, 12, 12) fit a 64-wide head only
    text = glm.get_text_config()
    head = getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads
    assert sum(text.rope_parameters["mrope_section"]) == head // 2


def test_word_tokenizer_places_words_around_low_special_ids():
    tokenizer = word_tokenizer({"<image>": 10, "<video>": 12}, 200)
    vocab = tokenizer.get_vocab()
    assert vocab["<image>"] == 10 and vocab["<video>"] == 12
    assert len({vocab[w] for w in WORDS} | {10, 12}) == len(WORDS) + 2  # no word shares an id
    with pytest.raises(ValueError, match="collides with the tokenizer's own tokens"):
        word_tokenizer({"<image>": 3}, 200)


def test_the_readme_lists_exactly_the_architectures_the_table_marks_supported():
    from probe.contract.coverage import SUPPORTED_MARKERS, SUPPORTED_PAGE

    text = SUPPORTED_PAGE.read_text()
    block = text.split(SUPPORTED_MARKERS[0], 1)[1].split(SUPPORTED_MARKERS[1], 1)[0]
    listed = set(re.findall(r"`([\w.-]+)`", block))
    assert listed == set(SUPPORTED)
    assert f"{len(SUPPORTED)} of {len(STORED)}" in block


@pytest.mark.parametrize("architecture", ["qwen2_vl", "llava"])  # patches with a grid; pixels of one side
def test_inputs_built_without_a_processor_match_the_architectures_own(architecture):
    from probe.contract.check import check_image, run_contract
    from probe.contract.coverage import tiny_from_config
    from probe.models.loading import LoadedModel
    from probe.models.shrink import direct_processor

    loaded = tiny_from_config(tiny_config(architecture), architecture)  # with its own processor
    direct = direct_processor(loaded.model, loaded.model.config)
    config = loaded.model.config
    vision = config.vision_config
    side = 2 * vision.patch_size * getattr(vision, "spatial_merge_size", 1) if architecture == "qwen2_vl" else 64
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Describe the image."}]}]
    image = check_image().resize((side, side))
    own = loaded.adapter.build_inputs(loaded.processor, messages, [image])
    built = loaded.adapter.build_inputs(direct, messages, [image])
    image_id = token_ids(config)["image"]
    assert int((built["input_ids"] == image_id).sum()) == int((own["input_ids"] == image_id).sum()) > 0
    assert built["pixel_values"].shape == own["pixel_values"].shape
    if "image_grid_thw" in own:
        assert torch.equal(built["image_grid_thw"], own["image_grid_thw"])
    rows = run_contract(LoadedModel(loaded.model, direct, loaded.adapter, architecture))
    assert all(row.holds is not False for row in rows), [(r.name, r.detail) for r in rows if r.holds is False]

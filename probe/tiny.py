"""Tiny randomly initialised LVLMs of the real transformers classes, built offline from configs.

They exercise exactly the code paths of the full-size models (same classes, same processors) at a
size that runs in milliseconds on a CPU. Used by the tests, the notebooks and quick demos.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass

import torch
import transformers as tf
from tokenizers import Tokenizer, models, pre_tokenizers

from probe.models.base import UnknownModelFamilyError
from probe.models.compat import processor_type_checks_tolerate_none

WORDS = (
    "the a an is are what which of in on to and this that image picture photo color shape "
    "answer question describe shows there how many red green blue cat dog car tree sky yes no "
    "one two three four five left right top bottom small large user assistant system"
).split()

CHAT_TEMPLATE = (
    "{% for m in messages %}{{ m['role'] }} : "
    "{% if m['content'] is string %}{{ m['content'] }}"
    "{% else %}{% for c in m['content'] %}"
    "{% if c['type'] == 'image' %}{{ image_placeholder }}{% else %}{{ c['text'] }}{% endif %} "
    "{% endfor %}{% endif %} ;"
    "{% endfor %}{% if add_generation_prompt %} assistant :{% endif %}"
)

TEXT_BASE = dict(
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=3,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=512,
)


def word_tokenizer(specials: dict[str, int], vocab_size: int, **attrs: str) -> tf.PreTrainedTokenizerFast:
    """A whitespace word-level tokenizer whose special tokens sit at the given ids."""
    vocab: dict[str, int] = {"<unk>": 0, "<pad>": 1, "<s>": 2, "</s>": 3, ";": 4, ":": 5}
    for word in WORDS:
        vocab.setdefault(word, len(vocab))
    for token, idx in specials.items():
        if idx in vocab.values():
            raise ValueError(f"special token id {idx} collides with the word vocabulary")
        vocab[token] = idx
    if max(vocab.values()) >= vocab_size:
        raise ValueError("vocab_size too small for the special token ids")
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    tok = tf.PreTrainedTokenizerFast(
        tokenizer_object=backend,
        unk_token="<unk>",
        pad_token="<pad>",
        bos_token="<s>",
        eos_token="</s>",
        extra_special_tokens=attrs,
    )
    tok.add_special_tokens({"additional_special_tokens": list(specials)})
    return tok


@dataclass
class TinyLVLM:
    """A tiny model, its processor (with a chat template) and its family."""

    model: tf.PreTrainedModel
    processor: tf.ProcessorMixin
    family: str


def _text_config(cls: type, vocab_size: int, **extra) -> tf.PretrainedConfig:
    return cls(vocab_size=vocab_size, **{**TEXT_BASE, **extra})


def _llava() -> TinyLVLM:
    V, IMG = 128, 120
    vision = tf.CLIPVisionConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        image_size=32, patch_size=8, projection_dim=32,
    )
    cfg = tf.LlavaConfig(
        vision_config=vision, text_config=_text_config(tf.LlamaConfig, V), image_token_index=IMG,
        vision_feature_select_strategy="default", vision_feature_layer=-1,
    )
    model = tf.LlavaForConditionalGeneration(cfg)
    tok = word_tokenizer({"<image>": IMG}, V, image_token="<image>")
    ip = tf.CLIPImageProcessorPil(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    proc = tf.LlavaProcessor(
        image_processor=ip, tokenizer=tok, patch_size=8, vision_feature_select_strategy="default",
        num_additional_image_tokens=1, chat_template=CHAT_TEMPLATE,
    )
    return TinyLVLM(model, proc, "llava")


def _llava_next() -> TinyLVLM:
    V, IMG = 128, 120
    vision = tf.CLIPVisionConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        image_size=32, patch_size=8, projection_dim=32,
    )
    grid = [[32, 32], [32, 64], [64, 32]]
    cfg = tf.LlavaNextConfig(
        vision_config=vision, text_config=_text_config(tf.LlamaConfig, V), image_token_index=IMG,
        image_grid_pinpoints=grid, vision_feature_select_strategy="default", vision_feature_layer=-1,
    )
    model = tf.LlavaNextForConditionalGeneration(cfg)
    tok = word_tokenizer({"<image>": IMG}, V, image_token="<image>")
    ip = tf.LlavaNextImageProcessorPil(
        size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}, image_grid_pinpoints=grid,
    )
    proc = tf.LlavaNextProcessor(
        image_processor=ip, tokenizer=tok, patch_size=8, vision_feature_select_strategy="default",
        num_additional_image_tokens=1, chat_template=CHAT_TEMPLATE,
    )
    return TinyLVLM(model, proc, "llava_next")


def _llava_onevision() -> TinyLVLM:
    V, IMG, VID = 128, 120, 121
    vision = tf.SiglipVisionConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        image_size=32, patch_size=8,
    )
    grid = [[32, 32], [32, 64], [64, 32]]
    cfg = tf.LlavaOnevisionConfig(
        vision_config=vision, text_config=_text_config(tf.Qwen2Config, V), image_token_index=IMG,
        video_token_index=VID, image_grid_pinpoints=grid, vision_feature_select_strategy="full",
        vision_feature_layer=-1,
    )
    model = tf.LlavaOnevisionForConditionalGeneration(cfg)
    tok = word_tokenizer({"<image>": IMG, "<video>": VID}, V, image_token="<image>", video_token="<video>")
    ip = tf.LlavaOnevisionImageProcessorPil(size={"height": 32, "width": 32}, image_grid_pinpoints=grid)
    with processor_type_checks_tolerate_none():
        proc = tf.LlavaOnevisionProcessor(
            image_processor=ip, tokenizer=tok, video_processor=None, num_image_tokens=16,
            vision_feature_select_strategy="full", chat_template=CHAT_TEMPLATE,
        )
    return TinyLVLM(model, proc, "llava_onevision")


def _qwen_vl(kind: str) -> Callable[[], TinyLVLM]:
    def build() -> TinyLVLM:
        V = 160
        ids = dict(image_token_id=150, video_token_id=151, vision_start_token_id=152, vision_end_token_id=153)
        if kind == "qwen2_vl":
            vision = dict(depth=2, embed_dim=32, hidden_size=32, num_heads=4, patch_size=4, spatial_merge_size=2,
                          temporal_patch_size=2, mlp_ratio=2)
            text = dict(TEXT_BASE, vocab_size=V, rope_parameters={"rope_type": "default", "mrope_section": [2, 1, 1],
                                                                   "rope_theta": 10000.0})
            cfg = tf.Qwen2VLConfig(vision_config=vision, text_config=text, **ids)
            model = tf.Qwen2VLForConditionalGeneration(cfg)
            ip_cls, proc_cls = tf.Qwen2VLImageProcessorPil, tf.Qwen2VLProcessor
        elif kind == "qwen2_5_vl":
            vision = dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=4, patch_size=4,
                          spatial_merge_size=2, temporal_patch_size=2, out_hidden_size=32, window_size=16,
                          fullatt_block_indexes=[1])
            text = dict(TEXT_BASE, vocab_size=V, rope_parameters={"rope_type": "default", "mrope_section": [2, 1, 1],
                                                                   "rope_theta": 10000.0})
            cfg = tf.Qwen2_5_VLConfig(vision_config=vision, text_config=text, **ids)
            model = tf.Qwen2_5_VLForConditionalGeneration(cfg)
            ip_cls, proc_cls = tf.Qwen2VLImageProcessorPil, tf.Qwen2_5_VLProcessor
        else:
            vision = dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=4, patch_size=4,
                          spatial_merge_size=2, temporal_patch_size=2, out_hidden_size=32,
                          num_position_embeddings=64, deepstack_visual_indexes=[0, 1])
            text = dict(TEXT_BASE, vocab_size=V, head_dim=8,
                        rope_parameters={"rope_type": "default", "mrope_section": [2, 1, 1], "rope_theta": 10000.0,
                                         "mrope_interleaved": True})
            cfg = tf.Qwen3VLConfig(vision_config=vision, text_config=text, **ids)
            model = tf.Qwen3VLForConditionalGeneration(cfg)
            ip_cls, proc_cls = tf.Qwen2VLImageProcessorPil, tf.Qwen3VLProcessor
        tok = word_tokenizer(
            {"<|image_pad|>": 150, "<|video_pad|>": 151, "<|vision_start|>": 152, "<|vision_end|>": 153}, V,
            image_token="<|image_pad|>", video_token="<|video_pad|>",
            vision_start_token="<|vision_start|>", vision_end_token="<|vision_end|>",
        )
        ip = ip_cls(patch_size=4, merge_size=2, temporal_patch_size=2, min_pixels=16 * 16, max_pixels=48 * 48)
        with processor_type_checks_tolerate_none():
            proc = proc_cls(image_processor=ip, tokenizer=tok, video_processor=None, chat_template=CHAT_TEMPLATE)
        return TinyLVLM(model, proc, kind)

    return build


def _idefics3(kind: str) -> Callable[[], TinyLVLM]:
    def build() -> TinyLVLM:
        V, IMG, FAKE, GLOB, EOU = 128, 120, 121, 122, 123
        vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                      image_size=32, patch_size=8)
        cfg_cls, model_cls, proc_cls, ip_cls = (
            (tf.Idefics3Config, tf.Idefics3ForConditionalGeneration, tf.Idefics3Processor,
             tf.Idefics3ImageProcessorPil)
            if kind == "idefics3"
            # SmolVLM's own processor needs the optional `num2words`; Idefics3's lays tokens out alike
            else (tf.SmolVLMConfig, tf.SmolVLMForConditionalGeneration, tf.Idefics3Processor,
                  tf.Idefics3ImageProcessorPil)
        )
        cfg = cfg_cls(vision_config=vision, text_config=dict(TEXT_BASE, model_type="llama", vocab_size=V),
                      image_token_id=IMG, scale_factor=2)
        model = model_cls(cfg)
        tok = word_tokenizer(
            {"<image>": IMG, "<fake_token_around_image>": FAKE, "<global-img>": GLOB, "<end_of_utterance>": EOU},
            V, image_token="<image>",
        )
        ip = ip_cls(size={"longest_edge": 64}, max_image_size={"longest_edge": 32})
        proc = proc_cls(image_processor=ip, tokenizer=tok, image_seq_len=4, chat_template=CHAT_TEMPLATE)
        return TinyLVLM(model, proc, kind)

    return build


def _gemma3() -> TinyLVLM:
    V, BOI, EOI, IMG = 128, 120, 121, 122
    vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                  image_size=32, patch_size=8)
    text = dict(TEXT_BASE, vocab_size=V, head_dim=8, sliding_window=8, num_hidden_layers=4,
                layer_types=["sliding_attention", "full_attention", "sliding_attention", "full_attention"])
    cfg = tf.Gemma3Config(vision_config=vision, text_config=text, boi_token_index=BOI, eoi_token_index=EOI,
                          image_token_index=IMG, mm_tokens_per_image=4)
    model = tf.Gemma3ForConditionalGeneration(cfg)
    tok = word_tokenizer({"<start_of_image>": BOI, "<end_of_image>": EOI, "<image_soft_token>": IMG}, V,
                     boi_token="<start_of_image>", eoi_token="<end_of_image>", image_token="<image_soft_token>")
    ip = tf.Gemma3ImageProcessorPil(size={"height": 32, "width": 32})
    proc = tf.Gemma3Processor(image_processor=ip, tokenizer=tok, image_seq_length=4, chat_template=CHAT_TEMPLATE)
    return TinyLVLM(model, proc, "gemma3")


def _internvl() -> TinyLVLM:
    V, CTX, START, END, VID = 128, 120, 121, 122, 123
    vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                  image_size=[32, 32], patch_size=[8, 8])
    cfg = tf.InternVLConfig(vision_config=vision, text_config=dict(TEXT_BASE, model_type="qwen2", vocab_size=V),
                            image_token_id=CTX, image_seq_length=4, downsample_ratio=0.5)
    model = tf.InternVLForConditionalGeneration(cfg)
    tok = word_tokenizer({"<IMG_CONTEXT>": CTX, "<img>": START, "</img>": END, "<video>": VID}, V,
                     context_image_token="<IMG_CONTEXT>", start_image_token="<img>", end_image_token="</img>",
                     video_token="<video>")
    ip = tf.GotOcr2ImageProcessorPil(size={"height": 32, "width": 32}, crop_to_patches=False)
    with processor_type_checks_tolerate_none():
        proc = tf.InternVLProcessor(image_processor=ip, tokenizer=tok, video_processor=None, image_seq_length=4,
                                    chat_template=CHAT_TEMPLATE)
    return TinyLVLM(model, proc, "internvl")


def _fast_vlm() -> TinyLVLM:
    V, IMG = 128, 120
    # a two-stage EfficientNet: 32x32 pixels -> stem /2 -> stage /2 -> an 8x8 map of 40 channels = 64 tokens
    vision = tf.EfficientNetConfig(
        image_size=32, width_coefficient=0.25, depth_coefficient=1.0, kernel_sizes=[3, 3], in_channels=[32, 16],
        out_channels=[16, 24], strides=[1, 2], num_block_repeats=[1, 1], expand_ratios=[1, 2], hidden_act="relu6",
        hidden_dim=320, hidden_size=320,
    )
    cfg = tf.FastVlmConfig(vision_config=vision, text_config=_text_config(tf.LlamaConfig, V), image_token_index=IMG,
                           image_seq_length=64, vision_feature_select_strategy="full", vision_feature_layer=-1)
    model = tf.FastVlmForConditionalGeneration(cfg)
    tok = word_tokenizer({"<image>": IMG}, V, image_token="<image>")
    ip = tf.CLIPImageProcessorPil(size={"height": 32, "width": 32}, do_center_crop=False)
    proc = tf.LlavaProcessor(image_processor=ip, tokenizer=tok, patch_size=4, vision_feature_select_strategy="full",
                             num_additional_image_tokens=0, chat_template=CHAT_TEMPLATE)
    return TinyLVLM(model, proc, "fast_vlm")


BUILDERS: dict[str, Callable[[], TinyLVLM]] = {
    "llava": _llava,
    "llava_next": _llava_next,
    "llava_onevision": _llava_onevision,
    "qwen2_vl": _qwen_vl("qwen2_vl"),
    "qwen2_5_vl": _qwen_vl("qwen2_5_vl"),
    "qwen3_vl": _qwen_vl("qwen3_vl"),
    "idefics3": _idefics3("idefics3"),
    "smolvlm": _idefics3("smolvlm"),
    "gemma3": _gemma3,
    "internvl": _internvl,
    "fast_vlm": _fast_vlm,
}

IMAGE_PLACEHOLDERS = {
    "llava": "<image>",
    "llava_next": "<image>",
    "llava_onevision": "<image>",
    "qwen2_vl": "<|vision_start|> <|image_pad|> <|vision_end|>",
    "qwen2_5_vl": "<|vision_start|> <|image_pad|> <|vision_end|>",
    "qwen3_vl": "<|vision_start|> <|image_pad|> <|vision_end|>",
    "idefics3": "<image>",
    "smolvlm": "<image>",
    "gemma3": "<start_of_image>",
    "internvl": "<IMG_CONTEXT>",
    "fast_vlm": "<image>",
}


def tiny_lvlm(family: str, seed: int = 0, dtype: torch.dtype = torch.float32) -> TinyLVLM:
    """Build a tiny randomly initialised model of ``family`` with a working processor."""
    if family not in BUILDERS:
        raise UnknownModelFamilyError(f"no tiny model for {family!r}; available: {', '.join(sorted(BUILDERS))}")
    torch.manual_seed(seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tiny = BUILDERS[family]()
    tiny.model.eval().to(dtype)
    tiny.processor.chat_template = tiny.processor.chat_template.replace(
        "{{ image_placeholder }}", IMAGE_PLACEHOLDERS[family]
    )
    return tiny

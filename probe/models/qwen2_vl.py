"""Qwen2-VL (``qwen2_vl``): native-resolution ViT, 3-D M-RoPE positions from ``image_grid_thw``."""

from __future__ import annotations

from typing import TYPE_CHECKING

from probe.models.base import Adapter, InvalidInputsError, register

if TYPE_CHECKING:
    from probe.models.tiny import TinyLVLM


@register
class Qwen2VLAdapter(Adapter):
    model_types = ("qwen2_vl",)
    tiny_image_placeholder = "<|vision_start|> <|image_pad|> <|vision_end|>"

    def check_inputs(self, inputs):
        if "pixel_values" in inputs and "image_grid_thw" not in inputs:
            raise InvalidInputsError(f"{self.model_types[0]} inputs with images need `image_grid_thw`")

    def set_max_pixels(self, processor, max_pixels):
        image_processor = processor.image_processor
        image_processor.size = {**dict(image_processor.size), "longest_edge": int(max_pixels)}

    def tiny_model(self, family: str) -> TinyLVLM:
        """A tiny randomly initialised model of ``family`` with a working processor."""
        import transformers as tf

        from probe.models.compat import processor_type_checks_tolerate_none
        from probe.models.tiny import CHAT_TEMPLATE, TEXT_BASE, TinyLVLM, word_tokenizer

        kind = family
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

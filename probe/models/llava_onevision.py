"""LLaVA-OneVision (``llava_onevision``): SigLIP tower, Qwen2 decoder, image and video tokens."""

from __future__ import annotations

from typing import TYPE_CHECKING

from probe.models.base import register
from probe.models.llava_next import LlavaNextAdapter

if TYPE_CHECKING:
    from probe.models.tiny import TinyLVLM


@register
class LlavaOnevisionAdapter(LlavaNextAdapter):
    model_types = ("llava_onevision",)

    def tiny_model(self, family: str) -> TinyLVLM:
        """A tiny randomly initialised model of this family with a working processor."""
        import transformers as tf

        from probe.models.compat import processor_type_checks_tolerate_none
        from probe.models.tiny import CHAT_TEMPLATE, TinyLVLM, text_config, word_tokenizer

        V, IMG, VID = 128, 120, 121
        vision = tf.SiglipVisionConfig(
            hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
            image_size=32, patch_size=8,
        )
        grid = [[32, 32], [32, 64], [64, 32]]
        cfg = tf.LlavaOnevisionConfig(
            vision_config=vision, text_config=text_config(tf.Qwen2Config, V), image_token_index=IMG,
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

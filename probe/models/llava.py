"""LLaVA 1.5 (``llava``): CLIP tower, MLP projector, Llama/Vicuna decoder."""

from __future__ import annotations

from typing import TYPE_CHECKING

from probe.models.base import Adapter, register

if TYPE_CHECKING:
    from probe.models.tiny import TinyLVLM


@register
class LlavaAdapter(Adapter):
    model_types = ("llava",)

    def tiny_model(self, family: str) -> TinyLVLM:
        """A tiny randomly initialised model of this family with a working processor."""
        import transformers as tf

        from probe.models.tiny import CHAT_TEMPLATE, TinyLVLM, text_config, word_tokenizer

        V, IMG = 128, 120
        vision = tf.CLIPVisionConfig(
            hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
            image_size=32, patch_size=8, projection_dim=32,
        )
        cfg = tf.LlavaConfig(
            vision_config=vision, text_config=text_config(tf.LlamaConfig, V), image_token_index=IMG,
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

"""FastVLM (``fast_vlm``): a convolutional vision tower whose last feature map, flattened, gives the
visual tokens; MLP projector; Qwen2 or Llama decoder. The offline reference model is of this family."""

from __future__ import annotations

from typing import TYPE_CHECKING

from probe.models.base import Adapter, register

if TYPE_CHECKING:
    from probe.models.tiny import TinyLVLM


@register
class FastVlmAdapter(Adapter):
    model_types = ("fast_vlm",)

    def tiny_model(self, family: str) -> TinyLVLM:
        """A tiny randomly initialised model of this family with a working processor."""
        import transformers as tf

        from probe.models.tiny import CHAT_TEMPLATE, TinyLVLM, text_config, word_tokenizer

        V, IMG = 128, 120
        # a two-stage EfficientNet: 32x32 pixels -> stem /2 -> stage /2 -> an 8x8 map of 40 channels = 64 tokens
        vision = tf.EfficientNetConfig(
            image_size=32, width_coefficient=0.25, depth_coefficient=1.0, kernel_sizes=[3, 3], in_channels=[32, 16],
            out_channels=[16, 24], strides=[1, 2], num_block_repeats=[1, 1], expand_ratios=[1, 2], hidden_act="relu6",
            hidden_dim=320, hidden_size=320,
        )
        cfg = tf.FastVlmConfig(vision_config=vision, text_config=text_config(tf.LlamaConfig, V), image_token_index=IMG,
                               image_seq_length=64, vision_feature_select_strategy="full", vision_feature_layer=-1)
        model = tf.FastVlmForConditionalGeneration(cfg)
        tok = word_tokenizer({"<image>": IMG}, V, image_token="<image>")
        ip = tf.CLIPImageProcessorPil(size={"height": 32, "width": 32}, do_center_crop=False)
        proc = tf.LlavaProcessor(image_processor=ip, tokenizer=tok, patch_size=4, vision_feature_select_strategy="full",
                                 num_additional_image_tokens=0, chat_template=CHAT_TEMPLATE)
        return TinyLVLM(model, proc, "fast_vlm")

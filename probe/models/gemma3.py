"""Gemma 3 (``gemma3``): SigLIP tower; sliding-window and global layers get different masks and rotary.

Per-layer keyword arguments are captured for every block, so each layer type replays with its own.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from probe.models.base import Adapter, register

if TYPE_CHECKING:
    from probe.models.tiny import TinyLVLM


@register
class Gemma3Adapter(Adapter):
    model_types = ("gemma3",)
    tiny_image_placeholder = "<start_of_image>"

    def tiny_model(self, family: str) -> TinyLVLM:
        """A tiny randomly initialised model of this family with a working processor."""
        import transformers as tf

        from probe.models.tiny import CHAT_TEMPLATE, TEXT_BASE, TinyLVLM, word_tokenizer

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

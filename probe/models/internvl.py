"""InternVL (``internvl``, the transformers-native port): InternViT tiles, Qwen2/Llama decoder."""

from __future__ import annotations

from typing import TYPE_CHECKING

from probe.models.base import Adapter, register

if TYPE_CHECKING:
    from probe.models.tiny import TinyLVLM


@register
class InternVLAdapter(Adapter):
    model_types = ("internvl",)
    tiny_image_placeholder = "<IMG_CONTEXT>"

    def tiny_model(self, family: str) -> TinyLVLM:
        """A tiny randomly initialised model of this family with a working processor."""
        import transformers as tf

        from probe.models.compat import processor_type_checks_tolerate_none
        from probe.models.tiny import CHAT_TEMPLATE, TEXT_BASE, TinyLVLM, word_tokenizer

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

"""Idefics3 and SmolVLM (``idefics3``, ``smolvlm``): SigLIP tiles with pixel shuffle, Llama decoder."""

from __future__ import annotations

from typing import TYPE_CHECKING

from probe.models.base import Adapter, register

if TYPE_CHECKING:
    from probe.models.tiny import TinyLVLM


@register
class Idefics3Adapter(Adapter):
    model_types = ("idefics3", "smolvlm")
    language_model_attr = "text_model"

    def tiny_model(self, family: str) -> TinyLVLM:
        """A tiny randomly initialised model of ``family`` with a working processor."""
        import transformers as tf

        from probe.models.tiny import CHAT_TEMPLATE, TEXT_BASE, TinyLVLM, word_tokenizer

        kind = family
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

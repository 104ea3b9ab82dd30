"""Idefics3 and SmolVLM (``idefics3``, ``smolvlm``): SigLIP tiles with pixel shuffle, Llama decoder."""

from probe.models.base import Adapter, register


@register
class Idefics3Adapter(Adapter):
    model_types = ("idefics3", "smolvlm")
    language_model_attr = "text_model"

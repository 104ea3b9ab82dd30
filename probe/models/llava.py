"""LLaVA 1.5 (``llava``): CLIP tower, MLP projector, Llama/Vicuna decoder."""

from probe.models.base import Adapter, register


@register
class LlavaAdapter(Adapter):
    model_types = ("llava",)

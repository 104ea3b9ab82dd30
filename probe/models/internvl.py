"""InternVL (``internvl``, the transformers-native port): InternViT tiles, Qwen2/Llama decoder."""

from probe.models.base import Adapter, register


@register
class InternVLAdapter(Adapter):
    model_types = ("internvl",)

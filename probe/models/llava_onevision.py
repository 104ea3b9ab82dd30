"""LLaVA-OneVision (``llava_onevision``): SigLIP tower, Qwen2 decoder, image and video tokens."""

from probe.models.base import register
from probe.models.llava_next import LlavaNextAdapter


@register
class LlavaOnevisionAdapter(LlavaNextAdapter):
    model_types = ("llava_onevision",)

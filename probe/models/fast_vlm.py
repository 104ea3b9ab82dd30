"""FastVLM (``fast_vlm``): a convolutional vision tower whose last feature map, flattened, gives the
visual tokens; MLP projector; Qwen2 or Llama decoder. The offline reference model is of this family."""

from probe.models.base import Adapter, register


@register
class FastVlmAdapter(Adapter):
    model_types = ("fast_vlm",)

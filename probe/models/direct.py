"""Model inputs built without an architecture's own processor, for tiny models whose processor cannot be
made here (its image processor needs torchvision).

:class:`DirectProcessor` stands in for the processor: it writes the chat with a word-level tokenizer whose
special tokens sit at the config's ids, repeats the image token once per feature the model's own
``get_image_features`` returns for one image, and passes pixels in one of the two layouts image towers read:

- ``pixels``: one image of the tower's side, ``(1, channels, side, side)`` (with ``image_sizes`` where the
  model asks for them);
- ``patches``: flattened patches and their grid, as Qwen-style towers read them (``image_grid_thw``).

The pixels are the image resized to the tower's side (``pixels``) or random patches (``patches``): the
family contract asks where features enter and what the blocks compute, not what the image shows.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn
from transformers import BatchFeature

from probe.models.tiny import CHAT_TEMPLATE

HANDLED = {"self", "pixel_values", "image_sizes", "image_grid_thw", "kwargs", "vision_feature_layer",
           "vision_feature_select_strategy"}


class DirectInputsError(Exception):
    """Why inputs cannot be built without the architecture's processor."""


def _vision_value(config: Any, *names: str, default: Any = None) -> Any:
    vision = getattr(config, "vision_config", None)
    for name in names:
        value = getattr(vision, name, None)
        if isinstance(value, (list, tuple)) and value:
            value = value[0]
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    return default


def _count_features(features: Any, width: int) -> int:
    """Rows of ``width`` in what ``get_image_features`` returned (a tensor, a list of them, or an output)."""
    if hasattr(features, "pooler_output") and features.pooler_output is not None:
        features = features.pooler_output
    elif hasattr(features, "last_hidden_state"):
        features = features.last_hidden_state
    if isinstance(features, torch.Tensor):
        features = [features]
    if not isinstance(features, (list, tuple)) or not all(isinstance(f, torch.Tensor) for f in features):
        raise DirectInputsError(f"its get_image_features returns {type(features).__name__}, not image features")
    if any(f.shape[-1] != width for f in features):
        raise DirectInputsError(f"its image features are not {width} wide (the language model's hidden size)")
    return sum(f.numel() // width for f in features)


def _patch_width(model: nn.Module) -> int:
    """How wide a flattened patch is: what the vision tower's first layer reads (a 3-D convolution's
    channels x time x patch x patch, or a linear's inputs)."""
    tower = next((getattr(model, n) for n in ("visual", "vision_tower", "vision_model", "vision_encoder")
                  if isinstance(getattr(model, n, None), nn.Module)), None)
    first = next((m for m in (tower.modules() if tower is not None else ()) if isinstance(
        m, (nn.Conv3d, nn.Conv2d, nn.Linear))), None)
    if isinstance(first, nn.Conv3d):
        return int(np.prod(first.weight.shape[1:]))
    if isinstance(first, nn.Linear):
        return first.in_features
    raise DirectInputsError("its vision tower does not read flattened patches through a first linear or 3-D "
                            "convolution")


class DirectProcessor:
    """A processor built from the model itself (see the module docstring)."""

    def __init__(self, model: nn.Module, tokenizer: Any, image_token: str, reason: str = "") -> None:
        self.reason = reason  # why the architecture's own processor is not used
        self.tokenizer = tokenizer
        self.image_token = image_token
        self.chat_template = CHAT_TEMPLATE.replace("{{ image_placeholder }}", image_token)
        config = model.config
        inner = getattr(model, "model", model)
        owner = inner if hasattr(inner, "get_image_features") else model
        taken = inspect.signature(owner.get_image_features).parameters
        unknown = [name for name in taken if name not in HANDLED]
        if unknown:
            raise DirectInputsError(f"its image features need {', '.join(unknown)}, which only its processor makes")
        self.layout = "patches" if "image_grid_thw" in taken else "pixels"
        self.token_types = "mm_token_type_ids" in inspect.signature(model.forward).parameters
        self.channels = _vision_value(config, "num_channels", "in_channels", "in_chans", default=3)
        self.side = _vision_value(config, "image_size", default=None)
        self.sizes = "image_sizes" in taken and taken["image_sizes"].default is inspect.Parameter.empty
        if self.layout == "pixels" and self.side is None:
            raise DirectInputsError("its vision config names no image size")
        self.patch_width = _patch_width(inner) if self.layout == "patches" else None
        self.grid_side = 2 * _vision_value(config, "spatial_merge_size", "merge_size", default=1)
        parameter = next(model.parameters())
        try:
            with torch.no_grad():
                grey = Image.new("RGB", (64, 64), (128, 128, 128))
                features = owner.get_image_features(**self._image_inputs(grey, parameter.dtype))
        except Exception as exc:  # noqa: BLE001 (whatever the tower raises is why these inputs do not fit it)
            first = str(exc).strip().splitlines()[0][:120] if str(exc).strip() else ""
            raise DirectInputsError(f"its image features fail on {self.layout} built without its processor "
                                    f"({type(exc).__name__}: {first})") from None
        self.tokens_per_image = _count_features(features, config.get_text_config().hidden_size)

    def _image_inputs(self, image: Image.Image, dtype: torch.dtype) -> dict[str, torch.Tensor]:
        if self.layout == "pixels":
            resized = image.convert("RGB").resize((self.side, self.side))
            array = np.asarray(resized, dtype=np.float32).transpose(2, 0, 1) / 127.5 - 1.0
            pixels = torch.from_numpy(array[: self.channels].copy())[None].to(dtype)
            found = {"pixel_values": pixels}
            if self.sizes:
                found["image_sizes"] = torch.tensor([[self.side, self.side]])
            return found
        return self._patches(dtype)

    def _patches(self, dtype: torch.dtype) -> dict[str, torch.Tensor]:
        """A grid of (1, 2 merge, 2 merge) patches, each flattened as the tower's patch embedding reads it."""
        side = self.grid_side
        generator = torch.Generator().manual_seed(0)
        pixels = torch.randn(side * side, self.patch_width, generator=generator)
        return {"pixel_values": pixels.to(dtype), "image_grid_thw": torch.tensor([[1, side, side]])}

    def apply_chat_template(self, messages: Sequence[dict], add_generation_prompt: bool = False,
                            tokenize: bool = False, **kwargs: Any) -> str:
        return self.tokenizer.apply_chat_template(list(messages), chat_template=self.chat_template,
                                                  add_generation_prompt=add_generation_prompt, tokenize=False)

    def __call__(self, text: Sequence[str], images: Sequence[Image.Image] | None = None, return_tensors: str = "pt",
                 return_mm_token_type_ids: bool = False, **kwargs: Any) -> BatchFeature:
        if len(text) != 1:
            raise ValueError("this processor takes one prompt at a time")
        images = list(images or [])
        ids = self.tokenizer(text[0], add_special_tokens=False)["input_ids"]
        image_id = self.tokenizer.convert_tokens_to_ids(self.image_token)
        if ids.count(image_id) != len(images):
            raise ValueError(f"{ids.count(image_id)} image tokens in the prompt for {len(images)} images")
        expanded: list[int] = []
        for token in ids:
            expanded += [token] * (self.tokens_per_image if token == image_id else 1)
        input_ids = torch.tensor([expanded])
        data: dict[str, torch.Tensor] = {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids)}
        parts = [self._image_inputs(image, torch.float32) for image in images]
        for key in parts[0] if parts else ():
            data[key] = torch.cat([part[key] for part in parts])
        if return_mm_token_type_ids or self.token_types:  # which positions hold images, where the model reads it
            data["mm_token_type_ids"] = (input_ids == image_id).long()
        return BatchFeature(data, tensor_type=return_tensors)


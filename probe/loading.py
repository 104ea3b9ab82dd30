"""Load a model, its processor and its adapter from a hub id, a local folder or a tiny spec."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import AutoConfig, AutoModelForImageTextToText

import probe.reference.vision  # noqa: F401  (registers the reference model's vision tower)
from probe.models import Adapter, get_adapter
from probe.models.compat import load_processor

TINY_PREFIX = "tiny:"
REFERENCE_REF = "reference"
DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
          "float16": torch.float16, "fp16": torch.float16}


class ModelLoadError(ValueError):
    """A model reference that cannot be loaded."""


@dataclass
class LoadedModel:
    """A model ready for the toolkit."""

    model: torch.nn.Module
    processor: Any
    adapter: Adapter
    ref: str

    @property
    def from_checkpoint(self) -> bool:
        """Whether ``ref`` names a checkpoint (local folder or hub id) rather than a built-in model."""
        return not self.ref.startswith(TINY_PREFIX) and self.ref != REFERENCE_REF


def parse_dtype(name: str) -> torch.dtype:
    """``float32``/``bfloat16``/``float16`` (or fp32/bf16/fp16)."""
    if name not in DTYPES:
        raise ModelLoadError(f"unknown dtype {name!r}; choose from {', '.join(DTYPES)}")
    return DTYPES[name]


def load_model(
    ref: str, dtype: torch.dtype = torch.float32, device: str = "cpu", max_pixels: int | None = None
) -> LoadedModel:
    """Load ``ref``: ``reference`` (the offline reference LVLM), ``tiny:FAMILY`` (a random tiny model),
    a local folder, or a hub id.

    The family is checked against the registry from the config before any weights are read.
    ``max_pixels`` caps the image resolution of Qwen-VL families; use the same value for
    calibration and evaluation.
    """
    loaded = _load(ref, dtype, device)
    if max_pixels is not None:
        loaded.adapter.set_max_pixels(loaded.processor, max_pixels)
    return loaded


def _load(ref: str, dtype: torch.dtype, device: str) -> LoadedModel:
    if ref == REFERENCE_REF:
        from probe.reference import load_reference

        model, processor = load_reference(dtype=dtype)
        return LoadedModel(model.to(device), processor, get_adapter(model), ref)
    if ref.startswith(TINY_PREFIX):
        from probe.tiny import tiny_lvlm

        tiny = tiny_lvlm(ref[len(TINY_PREFIX):], dtype=dtype)
        return LoadedModel(tiny.model.to(device), tiny.processor, get_adapter(tiny.model), ref)
    path = Path(ref)
    if ref.startswith((".", "/")) and not path.exists():
        raise ModelLoadError(f"model folder not found: {ref}")
    try:
        config = AutoConfig.from_pretrained(ref)
    except OSError as exc:
        raise ModelLoadError(f"cannot load {ref!r}: not a local model folder, and the hub did not provide it") from exc
    adapter = get_adapter(config)
    processor = load_processor(ref)
    model = AutoModelForImageTextToText.from_pretrained(ref, dtype=dtype)
    model.to(device).eval()
    return LoadedModel(model, processor, adapter, ref)

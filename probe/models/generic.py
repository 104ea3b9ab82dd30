"""An adapter derived from a loaded model, for a ``model_type`` no family file names.

What a family adapter states by hand is found on the model itself:

- the decoder stack: the module ``model.get_decoder()`` returns (transformers' own answer: for an LVLM its
  language model), its ``layers`` and its final norm;
- a block's attention module (``self_attn``, else the first submodule whose class is an attention);
- the prunable linears: every ``nn.Linear`` of a block, in the order one forward calls them;
- which of them read the same input: one text-only forward of the model through hooks on the first
  block's linears groups the linears that receive the same tensor (q, k, v; gate, up);
- the attention output: the last linear the attention module calls.

Architectures the method cannot apply to are refused with one line that says why
(:class:`UnsupportedArchitectureError`): encoder-decoder models, decoders without a ``layers`` stack or
a final norm, cross-attention image layers (visual features enter through attention, not as tokens),
mixture-of-experts blocks, and blocks whose linears differ from one block to another.
"""

from __future__ import annotations

import inspect
import weakref
from typing import Any

import torch
from torch import nn

from probe.models.base import VISUAL_TOKEN_ATTRS, Adapter, UnknownModelFamilyError

NORM_NAMES = ("norm", "final_layernorm", "final_layer_norm", "ln_f", "final_norm", "norm_f", "embedding_norm")


class UnsupportedArchitectureError(UnknownModelFamilyError):
    """A model whose architecture the pruning method cannot apply to; the message says why."""


class TracingError(UnsupportedArchitectureError):
    """The text-only forward that finds which linears share an input failed on this model."""


class GenericAdapter(Adapter):
    """An adapter whose structure (prunable linears, their shared inputs, the attention module and
    output) was found on one model by :func:`discover`."""

    def __init__(self, model_type: str, prunable: tuple[str, ...], shared_inputs: tuple[tuple[str, ...], ...],
                 attention: str, attention_output: str, token_types: bool = False) -> None:
        self.model_types = (model_type,)
        self.prunable = prunable
        self.shared_inputs = shared_inputs
        self.attention = attention
        self.attention_output = attention_output
        self.token_types = token_types  # the model reads mm_token_type_ids (which positions hold images)

    def processor_kwargs(self) -> dict[str, Any]:
        return {"return_mm_token_type_ids": True} if self.token_types else {}

    def language_model(self, model: nn.Module) -> nn.Module:
        return language_model_of(model)

    def final_norm(self, model: nn.Module) -> nn.Module:
        return final_norm_of(self.language_model(model))

    def attention_module(self, layer: nn.Module) -> nn.Module:
        return layer.get_submodule(self.attention)

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


def block_linears(layer: nn.Module) -> dict[str, nn.Linear]:
    """Every linear of a block by its name inside it."""
    return {name: module for name, module in layer.named_modules() if isinstance(module, nn.Linear)}


def attention_name(layer: nn.Module) -> str:
    """The name of a block's self-attention module."""
    if isinstance(getattr(layer, "self_attn", None), nn.Module):
        return "self_attn"
    for name, module in layer.named_children():
        if type(module).__name__.endswith("Attention"):
            return name
    raise UnsupportedArchitectureError(f"{type(layer).__name__} has no self-attention module")


def check_blocks(model_type: str, layers: nn.ModuleList) -> tuple[str, ...]:
    """The linear names every block shares, or an :class:`UnsupportedArchitectureError` naming why the blocks
    cannot be pruned as one kind."""
    names = tuple(block_linears(layers[0]))
    for index, layer in enumerate(layers):
        modules = [name for name, _ in layer.named_modules()]
        if any("cross_attn" in name or "cross_attention" in name for name in modules):
            raise UnsupportedArchitectureError(f"{model_type}: block {index} attends to image features through "
                                               "cross-attention; the method needs visual tokens in the sequence")
        if any(name.rsplit(".", 1)[-1] == "experts" for name in modules):
            raise UnsupportedArchitectureError(f"{model_type}: block {index} is a mixture of experts; pruning each "
                                               "expert with the statistics of its own tokens is not supported")
        if tuple(block_linears(layer)) != names:
            raise UnsupportedArchitectureError(f"{model_type}: block {index}'s linears differ from block 0's (a "
                                               "hybrid stack); the method prunes blocks of one kind")
    if not names:
        raise UnsupportedArchitectureError(f"{model_type}: its blocks hold no linear layers")
    return names


def traced_linears(model: nn.Module, layer: nn.Module, names: tuple[str, ...]) -> list[tuple[str, torch.Tensor]]:
    """One text-only forward of ``model`` (eight tokens, no image): the linears of ``layer`` in the order they
    are called, each with the tensor it read (kept, so that tensors are told apart by identity)."""
    calls: list[tuple[str, torch.Tensor]] = []
    handles = [layer.get_submodule(name).register_forward_pre_hook(
        lambda module, args, name=name: calls.append((name, args[0]))) for name in names]
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


def discover(model: nn.Module) -> GenericAdapter:
    """The :class:`GenericAdapter` of ``model`` (found once per model object)."""
    if model in _DISCOVERED:
        return _DISCOVERED[model]
    model_type = str(getattr(model.config, "model_type", type(model).__name__))
    _, layers = decoder_stack(model)
    names = check_blocks(model_type, layers)
    attention = attention_name(layers[0])
    calls = traced_linears(model, layers[0], names)
    order = list(dict.fromkeys(name for name, _ in calls))
    missing = [name for name in names if name not in order]
    if missing:
        raise UnsupportedArchitectureError(f"{model_type}: a text-only forward does not call {', '.join(missing)} "
                                           "of its first block")
    groups: list[tuple[torch.Tensor, list[str]]] = []
    for name, tensor in calls:
        group = next((g for t, g in groups if t is tensor), None)
        if group is None:
            groups.append((tensor, [name]))
        elif name not in group:
            group.append(name)
    shared = tuple(tuple(group) for _, group in groups if len(group) > 1)
    inside = [name for name in order if name.startswith(attention + ".")]
    if not inside:
        raise UnsupportedArchitectureError(f"{model_type}: its attention module {attention!r} holds no linear")
    token_types = "mm_token_type_ids" in inspect.signature(model.forward).parameters
    adapter = GenericAdapter(model_type, tuple(order), shared, attention, inside[-1], token_types)
    _DISCOVERED[model] = adapter
    return adapter

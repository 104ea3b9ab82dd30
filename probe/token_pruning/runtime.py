"""A token-pruning method attached to a loaded model: every decoder layer's forward is wrapped so that,
during the prefill of a request with visual tokens, the method drops visual tokens before its layer, and
every later layer sees only the tokens alive (hidden states, rotary embeddings, position ids, masks
and cache positions cut to them; kept tokens keep their original positions, as FastV does). Decoding
steps need no selection: the later layers' caches simply hold fewer entries, and a 4-D mask is cut to
them. Requests without visual tokens run dense. For each request the visual tokens alive at every layer
are recorded (:attr:`TokenPruningRuntime.records`), and with ``keep_alive`` the alive positions too.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from probe.attention import additive_mask
from probe.models.base import Adapter
from probe.token_pruning.base import TokenPruner, TokenPruningError

UNSUPPORTED = {
    "qwen3_vl": "its DeepStack adds visual features inside the first decoder layers",
    "gemma3": "its sliding-window layers' decoding masks are not cut to the alive tokens",
}


@dataclass
class _Request:
    visual: torch.Tensor  # (seq,) bool, of the prefill sequence
    alive: torch.Tensor  # positions (in the prefill sequence) still in the sequence
    attention: torch.Tensor | None = None  # last query's head-mean attention at the layer before pruning
    counts: list[int] = field(default_factory=list)  # visual tokens alive at each layer
    alive_by_layer: list[torch.Tensor] = field(default_factory=list)
    prefilled: bool = False


def _cut(value: Any, index: torch.Tensor, axes: tuple[int, ...], length: int) -> Any:
    """``value`` (a tensor, or a tuple / list of tensors) cut to ``index`` on each of ``axes`` whose size is
    ``length``."""
    if isinstance(value, (tuple, list)):
        return type(value)(_cut(v, index, axes, length) for v in value)
    if not isinstance(value, torch.Tensor):
        return value
    for axis in axes:
        if value.dim() >= -axis and value.shape[axis] == length:
            value = value.index_select(axis, index.to(value.device))
    return value


def cut_layer_kwargs(kwargs: dict[str, Any], index: torch.Tensor, length: int) -> dict[str, Any]:
    """A decoder layer's keyword arguments for a sequence of ``length`` cut to the positions ``index``."""
    out = dict(kwargs)
    for name, value in kwargs.items():
        if name.startswith("position_embeddings"):
            out[name] = _cut(value, index, (-2,), length)
        elif name in ("position_ids", "cache_position"):
            out[name] = _cut(value, index, (-1,), length)
        elif name == "attention_mask" and isinstance(value, torch.Tensor):
            out[name] = _cut(value, index, (-2, -1) if value.dim() == 4 else (-1,), length)
    return out


class TokenPruningRuntime:
    """One token-pruning method serving requests on one model (batch of one)."""

    def __init__(self, pruner: TokenPruner, adapter: Adapter, keep_alive: bool = False) -> None:
        self.pruner = pruner
        self.adapter = adapter
        self.keep_alive = keep_alive
        self.records: list[dict[str, Any]] = []
        self._request: _Request | None = None

    def check(self, model: nn.Module) -> None:
        """Raise :class:`TokenPruningError` before any work if the method cannot run on ``model``."""
        family = model.config.model_type
        if family in UNSUPPORTED:
            raise TokenPruningError(f"token pruning does not support {family}: {UNSUPPORTED[family]}")
        self.pruner.check(len(self.adapter.decoder_layers(model)))

    @contextlib.contextmanager
    def attached(self, model: nn.Module) -> Iterator[TokenPruningRuntime]:
        """Wrap the decoder layers of ``model`` for as long as the context lasts."""
        self.check(model)
        layers = self.adapter.decoder_layers(model)
        self._n_layers = len(layers)
        for index, layer in enumerate(layers):
            layer.forward = self._wrapped(index, layer, layer.forward)
        try:
            yield self
        finally:
            for layer in layers:
                del layer.forward  # back to the class's forward

    def request(self, input_ids: torch.Tensor, config: Any) -> contextlib.AbstractContextManager:
        """One request (its ``input_ids`` (1, seq)); requests without visual tokens run dense."""
        return self.request_for(self.adapter.visual_mask(input_ids[0], config).to(input_ids.device))

    @contextlib.contextmanager
    def request_for(self, visual: torch.Tensor) -> Iterator[None]:
        """One request given its visual mask (seq,), e.g. a captured calibration sample's."""
        self._request = _Request(visual, torch.arange(visual.numel(), device=visual.device)) if visual.any() else None
        try:
            yield
        finally:
            request, self._request = self._request, None
            if request is not None:
                record: dict[str, Any] = {"visual": int(request.visual.sum()), "alive_visual": request.counts}
                if self.keep_alive:
                    record["alive"] = [a.cpu() for a in request.alive_by_layer]
                self.records.append(record)
            else:
                self.records.append({"visual": 0, "alive_visual": []})

    def _wrapped(self, index: int, layer: nn.Module, forward: Any) -> Any:
        attention_module = self.adapter.attention_module(layer)

        def run(hidden_states: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
            request = self._request
            if request is None:
                return forward(hidden_states, *args, **kwargs)
            full = request.visual.numel()
            if hidden_states.shape[1] == 1 and request.prefilled:
                if index >= self.pruner.layer():
                    kwargs = self._decode_kwargs(kwargs, request, full)
                return forward(hidden_states, *args, **kwargs)
            if index == self.pruner.layer():
                before = request.alive
                self._select(request)
                local = torch.searchsorted(before, request.alive)
                hidden_states = hidden_states.index_select(1, local.to(hidden_states.device))
            if request.alive.numel() < full:
                kwargs = cut_layer_kwargs(kwargs, request.alive, full)
            request.counts.append(int(request.visual[request.alive].sum()))
            if self.keep_alive:
                alive = torch.zeros(full, dtype=torch.bool)
                alive[request.alive.cpu()] = True
                request.alive_by_layer.append(alive)
            if index == self._n_layers - 1:
                request.prefilled = True
            if index == self.pruner.layer() - 1 and self.pruner.needs_attention:
                with _eager_probs(attention_module, kwargs, hidden_states) as (call_kwargs, record):
                    out = forward(hidden_states, *args, **call_kwargs)
                request.attention = record["probs"][:, -1, :].mean(dim=0)
                return out
            return forward(hidden_states, *args, **kwargs)

        return run

    def _select(self, request: _Request) -> None:
        visual_positions = request.alive[request.visual[request.alive]]
        keep = self.pruner.keep(visual_positions, request.attention)
        text = request.alive[~request.visual[request.alive]]
        request.alive = torch.sort(torch.cat([text, keep.to(text.device)])).values

    @staticmethod
    def _decode_kwargs(kwargs: dict[str, Any], request: _Request, full: int) -> dict[str, Any]:
        """A decoding step at a layer whose cache holds only the alive prefill positions: cut a 4-D mask's
        key columns to them and the positions after the prefill."""
        mask = kwargs.get("attention_mask")
        if request.alive.numel() == full or not isinstance(mask, torch.Tensor) or mask.dim() != 4:
            return kwargs
        columns = torch.cat([request.alive, torch.arange(full, mask.shape[-1], device=request.alive.device)])
        return {**kwargs, "attention_mask": mask.index_select(-1, columns.to(mask.device))}


@contextlib.contextmanager
def _eager_probs(attention: nn.Module, kwargs: dict[str, Any], hidden: torch.Tensor
                 ) -> Iterator[tuple[dict[str, Any], dict[str, torch.Tensor]]]:
    """Run one layer's attention eagerly (an additive mask in place of an implicit causal one) and keep
    its probabilities (heads, queries, keys) of the first batch row."""
    record: dict[str, torch.Tensor] = {}

    def keep(module: nn.Module, args: Any, output: Any) -> None:
        if output[1] is None:
            raise TokenPruningError("this attention returns no probabilities in eager mode; FastV needs them")
        record["probs"] = output[1][0].float()

    call_kwargs = dict(kwargs)
    call_kwargs["attention_mask"] = additive_mask(kwargs.get("attention_mask"), hidden.shape[1], hidden.dtype,
                                                  hidden.device)
    config = attention.config
    previous = config._attn_implementation
    handle = attention.register_forward_hook(keep)
    config._attn_implementation = "eager"
    try:
        yield call_kwargs, record
    finally:
        config._attn_implementation = previous
        handle.remove()

"""A token-pruning method attached to a loaded model: every decoder layer's forward is wrapped so that,
during the prefill of a request with visual tokens, the method selects (drops, merges) visual tokens
before its stage layers, and every later layer sees only the tokens alive: hidden states, rotary
embeddings, position ids, masks and cache positions cut to them. Staying tokens keep their positions
unless a stage renumbers them (``compact``: rotary embeddings recomputed from the model's own rotary
module). Decoding steps need no selection: the later layers' caches hold fewer entries, and a 4-D mask is
cut to them. Requests without visual tokens run dense. For each request the visual tokens alive at every
layer are recorded (:attr:`TokenPruningRuntime.records`), with each stage's record, and with
``keep_alive`` the alive positions too.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from probe.calibration.attention import additive_mask, recording_attention
from probe.models.base import Adapter
from probe.token_pruning.base import ATTENTION, KEYS, StageView, TokenPruner, TokenPruningError

UNSUPPORTED = {
    "qwen3_vl": "its DeepStack adds visual features inside the first decoder layers",
    "gemma3": "its sliding-window layers' decoding masks are not cut to the alive tokens",
}


def check_token_method(pruner: TokenPruner, model_type: str, n_layers: int) -> None:
    """Raise :class:`TokenPruningError` if ``pruner`` cannot run on a model of ``model_type`` with ``n_layers``
    decoder layers (what a model's config tells, so it can run before the weights load)."""
    if model_type in UNSUPPORTED:
        raise TokenPruningError(f"token pruning does not support {model_type}: {UNSUPPORTED[model_type]}")
    pruner.check(n_layers, model_type)


@dataclass
class _Request:
    visual: torch.Tensor  # (seq,) bool, of the prefill sequence
    alive: torch.Tensor  # positions (in the prefill sequence) still in the sequence
    first_hidden: torch.Tensor | None = None
    observed: dict[str, torch.Tensor] = field(default_factory=dict)
    stages: list[tuple[int, torch.Tensor]] = field(default_factory=list)  # (layer, alive from it on)
    positions: torch.Tensor | None = None  # renumbered positions of the alive tokens (compact stages)
    counts: list[int] = field(default_factory=list)  # visual tokens alive at each layer
    alive_by_layer: list[torch.Tensor] = field(default_factory=list)
    weights: torch.Tensor | None = None  # (seq,) saliency weights of the last stage that gave some
    weights_by_layer: list[torch.Tensor] = field(default_factory=list)
    records: list[dict] = field(default_factory=list)
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
        self._rotary: nn.Module | None = None

    def check(self, model: nn.Module) -> None:
        """Raise :class:`TokenPruningError` before any work if the method cannot run on ``model``."""
        check_token_method(self.pruner, model.config.model_type, len(self.adapter.decoder_layers(model)))

    @contextlib.contextmanager
    def attached(self, model: nn.Module) -> Iterator[TokenPruningRuntime]:
        """Wrap the decoder layers of ``model`` for as long as the context lasts."""
        self.check(model)
        layers = self.adapter.decoder_layers(model)
        self._n_layers = len(layers)
        self._rotary = getattr(self.adapter.language_model(model), "rotary_emb", None)
        for index, layer in enumerate(layers):
            layer.forward = self._wrapped(index, layer, layer.forward)
        try:
            with self.pruner.attached(model, self.adapter):
                yield self
        finally:
            for layer in layers:
                del layer.forward  # back to the class's forward

    def prepare(self, inputs: dict[str, Any], config: Any) -> dict[str, Any]:
        """A request's model inputs as the method needs them (ViTCoP's Stage I: fewer image placeholders)."""
        return self.pruner.prepare_inputs(inputs, config)

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
            record: dict[str, Any] = {"visual": 0, "alive_visual": []}
            if request is not None:
                record = {"visual": int(request.visual.sum()), "alive_visual": request.counts,
                          "stages": request.records}
                if self.keep_alive:
                    record["alive"] = [a.cpu() for a in request.alive_by_layer]
                    record["weights"] = request.weights_by_layer
            self.records.append(record)

    def _wrapped(self, index: int, layer: nn.Module, forward: Any) -> Any:
        attention_module = self.adapter.attention_module(layer)
        stages = set(self.pruner.stage_layers())

        def run(hidden_states: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
            request = self._request
            if request is None:
                return forward(hidden_states, *args, **kwargs)
            full = request.visual.numel()
            if hidden_states.shape[1] == 1 and request.prefilled:
                return forward(hidden_states, *args, **self._decode_kwargs(kwargs, request, index, full))
            if index == 0:
                request.first_hidden = hidden_states[0]
            if index in stages:
                hidden_states = self._stage(index, request, hidden_states, kwargs, full)
            if request.alive.numel() < full:
                kwargs = cut_layer_kwargs(kwargs, request.alive, full)
                if request.positions is not None:
                    kwargs = self._renumbered(kwargs, request, hidden_states)
            request.counts.append(int(request.visual[request.alive].sum()))
            if self.keep_alive:
                alive = torch.zeros(full, dtype=torch.bool)
                alive[request.alive.cpu()] = True
                request.alive_by_layer.append(alive)
                weights = torch.ones(full) if request.weights is None else request.weights.clone()
                request.weights_by_layer.append(weights * alive)
            if index == self._n_layers - 1:
                request.prefilled = True
            wanted = self.pruner.observe(index)
            request.observed = {}
            with contextlib.ExitStack() as stack:
                if KEYS in wanted:
                    stack.enter_context(_recording_keys(attention_module, request.observed))
                if ATTENTION in wanted:
                    kwargs = stack.enter_context(_eager_probs(attention_module, kwargs, hidden_states,
                                                              request.observed))
                return forward(hidden_states, *args, **kwargs)

        return run

    def _stage(self, index: int, request: _Request, hidden: torch.Tensor, kwargs: dict, full: int) -> torch.Tensor:
        """Select before layer ``index``: merge rows, cut the sequence, record."""
        before = request.alive
        view = StageView(index, before, request.visual, hidden[0], request.first_hidden, dict(request.observed))
        selection = self.pruner.select(view)
        hidden = hidden.clone()
        for rep, group in selection.merged.items():
            rows = torch.searchsorted(before, torch.tensor(group, device=before.device))
            rep_row = int(torch.searchsorted(before, torch.tensor(rep, device=before.device)))
            mean = hidden[0, rows.to(hidden.device)].mean(dim=0)
            hidden[0, rep_row] = hidden[0, rep_row] + mean if selection.merge == "upstream" else mean
        keep = selection.keep.to(before.device)
        local = torch.searchsorted(before, keep)
        if selection.compact:
            request.positions = local
        elif request.positions is not None:
            request.positions = request.positions[local]
        request.alive = keep
        if selection.weights is not None:
            request.weights = torch.ones(full)
            request.weights[keep.cpu()] = selection.weights.float().cpu()
        request.stages.append((index, keep))
        request.records.append({"layer": index, "alive": int(keep.numel()),
                                "visual": int(request.visual[keep].sum()), **selection.record})
        return hidden.index_select(1, local.to(hidden.device))

    def _renumbered(self, kwargs: dict, request: _Request, hidden: torch.Tensor) -> dict:
        """Positions of a compact stage: position ids and rotary embeddings for the renumbered positions."""
        if self._rotary is None or "position_embeddings" not in kwargs:
            raise TokenPruningError("renumbering positions needs the decoder's rotary embedding")
        ids = request.positions.to(hidden.device).unsqueeze(0)
        if isinstance(kwargs.get("position_ids"), torch.Tensor) and kwargs["position_ids"].dim() != 2:
            raise TokenPruningError("renumbering positions needs 1-D rotary positions (not M-RoPE)")
        out = dict(kwargs)
        out["position_embeddings"] = self._rotary(hidden, ids)
        if "position_ids" in out:
            out["position_ids"] = ids
        return out

    @staticmethod
    def _decode_kwargs(kwargs: dict[str, Any], request: _Request, index: int, full: int) -> dict[str, Any]:
        """A decoding step at a layer whose cache holds only the positions alive there: cut a 4-D mask's key
        columns to them and the positions after the prefill."""
        alive = None
        for layer, kept in request.stages:
            if index >= layer:
                alive = kept
        mask = kwargs.get("attention_mask")
        if alive is None or not isinstance(mask, torch.Tensor) or mask.dim() != 4:
            return kwargs
        columns = torch.cat([alive, torch.arange(full, mask.shape[-1], device=alive.device)])
        return {**kwargs, "attention_mask": mask.index_select(-1, columns.to(mask.device))}


@contextlib.contextmanager
def _recording_keys(attention: nn.Module, observed: dict[str, torch.Tensor]) -> Iterator[None]:
    """Keep the layer's key projections (tokens, kv heads, head_dim) of the first batch row."""
    head_dim = attention.head_dim

    def keep(module: nn.Module, args: Any, output: torch.Tensor) -> None:
        observed[KEYS] = output[0].reshape(output.shape[1], -1, head_dim)

    handle = attention.k_proj.register_forward_hook(keep)
    try:
        yield
    finally:
        handle.remove()


@contextlib.contextmanager
def _eager_probs(attention: nn.Module, kwargs: dict[str, Any], hidden: torch.Tensor,
                 observed: dict[str, torch.Tensor]) -> Iterator[dict[str, Any]]:
    """Run one layer's attention eagerly (an additive mask in place of an implicit causal one); keep the
    head-mean attention its last query gives every token."""
    call_kwargs = dict(kwargs)
    call_kwargs["attention_mask"] = additive_mask(kwargs.get("attention_mask"), hidden.shape[1], hidden.dtype,
                                                  hidden.device)
    with recording_attention(attention) as record:
        yield call_kwargs
    if "probs" not in record:
        raise TokenPruningError("this attention returns no probabilities in eager mode")
    observed[ATTENTION] = record["probs"][:, -1, :].mean(dim=0)

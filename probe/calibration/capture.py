"""Capture the inputs of the LLM decoder blocks once, then run the blocks one at a time.

``capture`` runs the model with every decoder block replaced by a recorder that keeps the keyword
arguments the model passes to it (rotary ``position_embeddings`` as the model computed them, M-RoPE
included; attention masks; per-layer-type differences such as Gemma 3's sliding layers) and returns
its input unchanged. The recorder of the last block stops the forward with a private exception, so
nothing after the decoder runs. Anything the model adds to the hidden states *between* blocks (Qwen3-VL's
DeepStack visual features) is recorded as a sparse injection and re-applied by ``run_block``.

Samples keep their own lengths: each is a batch of one, never padded into a shared buffer.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from probe.errors import ProbeError
from probe.models.base import Adapter

SCHEDULE_KEY = "alive"  # in CapturedSample.meta: per decoder layer, a bool mask (seq,) of the alive positions
WEIGHTS_KEY = "alive_weights"  # per decoder layer, the method's saliency of the alive positions (0 elsewhere)



class _CaptureComplete(Exception):
    """Private signal that every decoder block's inputs were recorded."""


@dataclass
class BlockCall:
    """How the model called one decoder block, minus the hidden states."""

    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    # (row indices, values) added to this block's output before the next block; None if nothing
    injection: tuple[torch.Tensor, torch.Tensor] | None = None


@dataclass
class CapturedSample:
    """Hidden states entering block 0 and the per-block call arguments of one sample."""

    sample_id: str
    hidden: torch.Tensor  # (1, seq, hidden)
    calls: list[BlockCall]
    visual_mask: torch.Tensor  # (seq,) bool
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def seq_len(self) -> int:
        return self.hidden.shape[1]


def move(obj: Any, device: torch.device | str, dtype: torch.dtype | None = None) -> Any:
    """Move every tensor inside nested tuples, lists and dicts to ``device``; with ``dtype``, floating
    tensors (pixel values) are cast to it too, as a model in that dtype expects its inputs."""
    if isinstance(obj, torch.Tensor):
        return obj.to(device, dtype) if dtype is not None and obj.is_floating_point() else obj.to(device)
    if isinstance(obj, tuple):
        return tuple(move(o, device, dtype) for o in obj)
    if isinstance(obj, list):
        return [move(o, device, dtype) for o in obj]
    if isinstance(obj, dict):
        return {k: move(v, device, dtype) for k, v in obj.items()}
    return obj


@contextlib.contextmanager
def _recording(layers: nn.ModuleList, calls: list[BlockCall], first_input: list[torch.Tensor]) -> Iterator[None]:
    last_returned: list[torch.Tensor] = []

    def make_recorder(index: int):
        def recorder(hidden_states: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
            if index == 0:
                first_input.append(hidden_states)
            else:
                prev = last_returned[-1]
                if hidden_states is not prev:
                    diff = (hidden_states - prev)[0]
                    rows = diff.abs().amax(dim=-1).nonzero().flatten()
                    if rows.numel():
                        calls[-1].injection = (rows, diff[rows].clone())
            kwargs = {k: v for k, v in kwargs.items() if k not in ("past_key_values", "cache", "use_cache")}
            calls.append(BlockCall(args=args, kwargs=kwargs))
            if index == len(layers) - 1:
                raise _CaptureComplete
            last_returned.append(hidden_states)
            return hidden_states

        return recorder

    for i, layer in enumerate(layers):
        layer.forward = make_recorder(i)
    try:
        yield
    finally:
        for layer in layers:
            del layer.forward  # restore the class's forward


class CaptureError(ProbeError):
    """A model whose decoder blocks cannot be recorded and replayed one at a time."""


@torch.no_grad()
def capture(
    model: nn.Module,
    adapter: Adapter,
    inputs: dict[str, torch.Tensor],
    sample_id: str = "",
    store_device: torch.device | str = "cpu",
) -> CapturedSample:
    """Record block-0 hidden states and every block's call arguments for one sample (batch of one)."""
    input_ids = inputs["input_ids"]
    if input_ids.shape[0] != 1:
        raise ValueError("capture takes one sample at a time (batch size 1)")
    layers = adapter.decoder_layers(model)
    parameter = next(model.parameters())
    calls: list[BlockCall] = []
    first: list[torch.Tensor] = []
    with _recording(layers, calls, first):
        try:
            model(**move(inputs, parameter.device, parameter.dtype), use_cache=False)
        except _CaptureComplete:
            pass
        except (ValueError, TypeError) as exc:  # a stack whose blocks hand on more than hidden states
            if not calls:
                raise
            raise CaptureError(
                f"{model.config.model_type}: the decoder fails once its blocks return only their hidden states "
                f"({type(exc).__name__}: {str(exc).splitlines()[0][:120]}): its blocks pass more than hidden states "
                "to the next block, which layer-wise replay does not support") from None
    if len(calls) != len(layers) or not first:
        raise RuntimeError(f"captured {len(calls)} of {len(layers)} decoder blocks for sample {sample_id!r}")
    calls = [
        BlockCall(
            args=move(c.args, store_device),
            kwargs=move(c.kwargs, store_device),
            injection=move(c.injection, store_device),
        )
        for c in calls
    ]
    return CapturedSample(
        sample_id=sample_id,
        hidden=first[0].to(store_device),
        calls=calls,
        visual_mask=adapter.visual_mask(input_ids[0], model.config).to(store_device),
    )


def run_block(layer: nn.Module, hidden: torch.Tensor, call: BlockCall) -> torch.Tensor:
    """Run one decoder block on ``hidden`` with its captured arguments (moved to ``hidden``'s device);
    hidden states stored in another dtype (bfloat16 storage) are cast to the block's dtype first."""
    device = hidden.device
    weight = next(layer.parameters(), None)
    if weight is not None and weight.is_floating_point() and hidden.dtype != weight.dtype:
        hidden = hidden.to(weight.dtype)
    out = layer(hidden, *move(call.args, device), **move(call.kwargs, device))
    if isinstance(out, tuple):
        out = out[0]
    if call.injection is not None:
        rows, values = call.injection
        out = out.clone()
        out[0, rows.to(device)] += values.to(device, out.dtype)
    return out


@torch.no_grad()
def replay(model: nn.Module, adapter: Adapter, sample: CapturedSample) -> torch.Tensor:
    """Run every decoder block in turn and the final norm: the LLM's last hidden state."""
    layers = adapter.decoder_layers(model)
    device = next(layers[0].parameters()).device
    hidden = sample.hidden.to(device)
    for layer, call in zip(layers, sample.calls):
        hidden = run_block(layer, hidden, call)
    return adapter.final_norm(model)(hidden)


def activation_bytes(samples: list[CapturedSample]) -> int:
    """Memory the cached block inputs take (one hidden-state buffer per sample)."""
    return sum(s.hidden.numel() * s.hidden.element_size() for s in samples)


class BlockRangeError(ProbeError):
    """A decoder block index the model does not have."""


@torch.no_grad()
def hidden_at(model: nn.Module, adapter: Adapter, sample: CapturedSample, block: int) -> torch.Tensor:
    """The hidden states (seq, hidden) entering decoder block ``block`` for one captured sample."""
    layers = adapter.decoder_layers(model)
    if not 0 <= block < len(layers):
        raise BlockRangeError(f"block {block} out of range: the model has {len(layers)} decoder blocks")
    device = next(layers[0].parameters()).device
    hidden = sample.hidden.to(device)
    for layer, call in zip(list(layers)[:block], sample.calls):
        hidden = run_block(layer, hidden, call)
    return hidden[0]

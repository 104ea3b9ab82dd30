"""Attention probabilities of one decoder block during a replay (for ABS selection and TAMP).

Fused attention kernels (SDPA, flash) never form the probability matrix, so inside
:func:`recording_attention` the block's attention runs the eager path and a hook keeps its
probabilities. The captured mask is turned into the additive float mask the eager path expects: a
causal mask where the model passed none (SDPA's implicit causal case), 0 / -inf where it passed a
boolean one.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from probe.calibration.capture import BlockCall


def additive_mask(mask: torch.Tensor | None, seq_len: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """A float mask (1, 1, seq, seq) to add to attention logits: 0 where allowed, -inf elsewhere."""
    if mask is None:
        return torch.full((seq_len, seq_len), float("-inf"), dtype=dtype, device=device).triu(1)[None, None]
    if mask.dtype == torch.bool:
        zero = torch.zeros((), dtype=dtype, device=device)
        return torch.where(mask.to(device), zero, torch.tensor(float("-inf"), dtype=dtype, device=device))
    return mask.to(device, dtype)


def eager_call(call: BlockCall, seq_len: int, dtype: torch.dtype, device: torch.device) -> BlockCall:
    """The same block call with a mask the eager attention path understands."""
    kwargs: dict[str, Any] = dict(call.kwargs)
    kwargs["attention_mask"] = additive_mask(call.kwargs.get("attention_mask"), seq_len, dtype, device)
    return BlockCall(call.args, kwargs, call.injection)


@contextlib.contextmanager
def recording_attention(attention: nn.Module) -> Iterator[dict[str, torch.Tensor]]:
    """Run ``attention`` (a block's self-attention module) eagerly; the yielded dict holds, after each
    call, ``"probs"``: its probabilities (heads, queries, keys) in fp32 for the first batch row."""
    record: dict[str, torch.Tensor] = {}

    def keep(module: nn.Module, args: Any, output: Any) -> None:
        record["probs"] = output[1][0].float()

    config = attention.config
    previous = config._attn_implementation
    handle = attention.register_forward_hook(keep)
    config._attn_implementation = "eager"
    try:
        yield record
    finally:
        config._attn_implementation = previous
        handle.remove()

"""Which positions of each calibration sample a token-pruning method keeps alive at every decoder layer,
recorded by replaying the captured samples through the model with the method attached. The ``kept``
token selector feeds weight statistics from exactly these positions."""

from __future__ import annotations

import dataclasses

import torch
from torch import nn

from probe.calibration.capture import SCHEDULE_KEY, WEIGHTS_KEY, CapturedSample, run_block
from probe.models.base import Adapter
from probe.token_pruning.base import TokenPruner, TokenPruningError
from probe.token_pruning.runtime import TokenPruningRuntime


@torch.no_grad()
def with_token_schedule(model: nn.Module, adapter: Adapter, samples: list[CapturedSample],
                        pruner: TokenPruner) -> list[CapturedSample]:
    """Copies of ``samples`` whose meta holds the alive positions per layer under ``pruner`` (the samples
    given are left as they are)."""
    runtime = TokenPruningRuntime(pruner, adapter, keep_alive=True)
    layers = adapter.decoder_layers(model)
    device = next(model.parameters()).device
    out = []
    with runtime.attached(model):
        if getattr(pruner, "stage_one", False):
            raise TokenPruningError("the kept token selector cannot follow ViTCoP's vision stage (calibration "
                                    "samples keep every patch); use vitcop(stage_one=off)")
        for sample in samples:
            with runtime.request_for(sample.visual_mask.to(device)):
                hidden = sample.hidden.to(device)
                for index, layer in enumerate(layers):
                    hidden = run_block(layer, hidden, sample.calls[index])
            record = runtime.records[-1]
            alive = record.get("alive") or [torch.ones(sample.seq_len, dtype=torch.bool)] * len(layers)
            weights = record.get("weights") or [a.float() for a in alive]
            out.append(dataclasses.replace(sample, meta={**sample.meta, SCHEDULE_KEY: alive, WEIGHTS_KEY: weights}))
    return out

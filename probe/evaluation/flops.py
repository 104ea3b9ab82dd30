"""FLOPs of one request, counted by ``torch.utils.flop_counter`` (every matmul and attention op as it runs,
token pruning included): the language side (decoder and LM head) and the vision tower apart, and the
language side as sparse kernels would run it (each prunable linear's FLOPs times its share of nonzero
weights; dense kernels on this machine multiply the zeros too)."""

from __future__ import annotations

import contextlib
from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from probe.calibration.capture import move
from probe.models.base import Adapter


def image_request(model: nn.Module, adapter: Adapter, processor: Any, image: Any, question: str) -> dict[str, Any]:
    """The model inputs of one chat turn holding ``image`` and ``question``, on the model's device (pixel
    values in its dtype)."""
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
    inputs = adapter.build_inputs(processor, messages, [image], add_generation_prompt=True)
    parameter = next(model.parameters())
    return move(inputs, parameter.device, parameter.dtype)


@torch.no_grad()
def count_flops(model: nn.Module, adapter: Adapter, inputs: dict[str, Any], runtime: Any = None) -> dict[str, float]:
    """``gflops`` (language side), ``gflops_sparse`` (the same with pruned weights skipped) and
    ``vision_gflops`` of one forward over ``inputs``, with a token-pruning ``runtime`` attached if given."""
    counter = FlopCounterMode(display=False)
    with runtime.attached(model) if runtime is not None else contextlib.nullcontext():
        served = runtime.prepare(inputs, model.config) if runtime is not None else inputs
        with runtime.request(served["input_ids"], model.config) if runtime is not None else contextlib.nullcontext():
            with counter:
                model(**served, use_cache=False)
    counts = counter.get_flop_counts()
    vision = FlopCounterMode(display=False)
    with vision:
        adapter.image_features_owner(model).get_image_features(
            **{k: v for k, v in inputs.items() if k.startswith(("pixel", "image"))})
    names = {module: f"{type(model).__name__}.{name}" for name, module in model.named_modules()}
    skipped = 0.0
    for layer in adapter.decoder_layers(model):
        for linear in adapter.prunable_linears(layer).values():
            flops = sum(counts.get(names[linear], {}).values())
            skipped += flops * float((linear.weight == 0).float().mean())
    language = counter.get_total_flops() - vision.get_total_flops()
    return {"gflops": language / 1e9, "gflops_sparse": (language - skipped) / 1e9,
            "vision_gflops": vision.get_total_flops() / 1e9}

"""Cache of image features across runs of models that share their (never pruned) vision side.

Pruning touches only the LLM decoder, so a pruned model, a dense one and an MoT probe made from the
same checkpoint compute the same image features (vision tower + projector). A
:class:`VisionFeatureCache` attached to each of them in turn computes the features of every distinct
image once: evaluation across grid cells and repeated calibration reuse them. The key is the content
of the image tensors (pixels and any size/grid arguments), not their identity.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import hashlib
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from probe.models.base import Adapter


def _digest(value: Any, h: hashlib._Hash) -> None:
    if isinstance(value, torch.Tensor):
        t = value.detach().cpu().contiguous()
        h.update(f"{t.dtype}{tuple(t.shape)}".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    elif isinstance(value, (list, tuple)):
        for v in value:
            _digest(v, h)
    elif isinstance(value, dict):
        for k in sorted(value):
            h.update(str(k).encode())
            _digest(value[k], h)
    else:
        h.update(repr(value).encode())


def _move(value: Any, device: torch.device | str) -> Any:
    """``value`` with its tensors on ``device``; containers are new, ``value`` itself is left as it is."""
    if isinstance(value, torch.Tensor):
        return value.to(device)
    if isinstance(value, (list, tuple)):
        return type(value)(_move(v, device) for v in value)
    if hasattr(value, "keys") and hasattr(value, "__setitem__"):  # ModelOutput and dict
        moved = copy.copy(value)
        for k in list(value.keys()):
            moved[k] = _move(value[k], device)
        return moved
    return value


class VisionFeatureCache:
    """Image features keyed by the content of their inputs, kept on ``store_device``."""

    def __init__(self, store_device: torch.device | str = "cpu") -> None:
        self.store_device = store_device
        self._store: dict[str, Any] = {}
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._store)

    @contextlib.contextmanager
    def attached(self, model: nn.Module, adapter: Adapter | None = None) -> Iterator[None]:
        """Serve ``model``'s image features from the cache while inside the context; ``adapter`` (of the
        model's family) says which module computes them."""
        inner = (adapter or Adapter()).image_features_owner(model)
        compute = inner.get_image_features

        @functools.wraps(compute)  # generation reads the encoder's signature to pick its arguments
        def cached(*args: Any, **kwargs: Any) -> Any:
            h = hashlib.sha256()
            _digest((args, kwargs), h)
            key = h.hexdigest()
            device = next(inner.parameters()).device
            if key in self._store:
                self.hits += 1
                return _move(self._store[key], device)
            self.misses += 1
            out = compute(*args, **kwargs)
            self._store[key] = _move(out, self.store_device)
            return _move(self._store[key], device)

        inner.get_image_features = cached
        try:
            yield
        finally:
            del inner.get_image_features

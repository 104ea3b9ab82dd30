"""Where the per-sample hidden states of a pruning run are kept between blocks: in memory in the model's
dtype (the default), in memory in a narrower dtype (bfloat16 halves float32's bytes), or in a memory-mapped
file on disk when RAM is short. Statistics always accumulate in float32 (:mod:`probe.pruning.sparsity.stats`), and
each block computes in its own dtype: a stored state is cast back when it is read."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from probe.errors import ProbeError


class ActivationStorageError(ProbeError):
    """Activation storage settings that cannot be used."""


STORAGE_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass(frozen=True)
class ActivationStorage:
    """How stored activations are kept: ``dtype`` (None: as computed) and ``spill_dir`` (None: in memory;
    a folder: one memory-mapped file there, removed when the run ends)."""

    dtype: torch.dtype | None = None
    spill_dir: Path | None = None

    def __post_init__(self) -> None:
        if self.dtype is not None and self.dtype not in STORAGE_DTYPES.values():
            raise ActivationStorageError(f"activation storage dtype {self.dtype} is not one of "
                                         f"{', '.join(STORAGE_DTYPES)}")
        if self.spill_dir is not None and not Path(self.spill_dir).is_dir():
            raise ActivationStorageError(f"activation spill folder not found: {self.spill_dir}")

    @classmethod
    def parse(cls, dtype: str | None, spill_dir: str | Path | None = None) -> ActivationStorage:
        """From command-line values: a dtype name (``model`` or None: as computed) and a folder."""
        if dtype in (None, "", "model"):
            chosen = None
        elif dtype in STORAGE_DTYPES:
            chosen = STORAGE_DTYPES[dtype]
        else:
            raise ActivationStorageError(f"unknown activation storage dtype {dtype!r}; choose model or "
                                         f"{', '.join(STORAGE_DTYPES)}")
        return cls(chosen, Path(spill_dir) if spill_dir is not None else None)

    def states(self, initial: Sequence[torch.Tensor]) -> StateStore:
        """A store holding a copy of each of ``initial`` (the samples' block-0 inputs), to advance block by block."""
        return StateStore(initial, self)


def mapped_empty(numel: int, dtype: torch.dtype, folder: Path) -> torch.Tensor:
    """A 1-D tensor of ``numel`` elements backed by a new file in ``folder``, mapped shared so that the
    kernel can write its pages back to disk and drop them under memory pressure. The file is unlinked at
    once: the mapping keeps it alive, and nothing is left behind however the run ends."""
    handle, name = tempfile.mkstemp(prefix="probe-activations-", suffix=".bin", dir=folder)
    os.close(handle)
    try:
        return torch.from_file(name, shared=True, size=max(numel, 1), dtype=dtype)
    finally:
        os.unlink(name)


def spilled(tensor: torch.Tensor, dtype: torch.dtype | None, folder: Path) -> torch.Tensor:
    """A copy of ``tensor`` (in ``dtype``, or its own) held in a memory-mapped file in ``folder``."""
    flat = mapped_empty(tensor.numel(), dtype or tensor.dtype, folder)
    view = flat[:tensor.numel()].view(tensor.shape)
    view.copy_(tensor)
    return view


class StateStore:
    """A list of per-sample hidden states (1, seq, hidden): ``store[i]`` reads sample i in its computed dtype
    on the device it was stored from; ``store[i] = x`` replaces it (cast to the storage dtype, or written
    into the memory-mapped file)."""

    def __init__(self, initial: Sequence[torch.Tensor], storage: ActivationStorage) -> None:
        self._dtypes = [t.dtype for t in initial]
        self._devices = [t.device for t in initial]
        self._dtype = storage.dtype
        self._spilled = False
        if storage.spill_dir is None:
            self._items = [t if self._dtype in (None, t.dtype) else t.to(self._dtype) for t in initial]
            return
        dtype = self._dtype or (initial[0].dtype if len(initial) else torch.float32)
        flat = mapped_empty(sum(t.numel() for t in initial), dtype, storage.spill_dir)
        self._spilled = True
        self._items = []
        offset = 0
        for tensor in initial:
            view = flat[offset:offset + tensor.numel()].view(tensor.shape)
            view.copy_(tensor)
            self._items.append(view)
            offset += tensor.numel()

    def __len__(self) -> int:
        return len(self._items)

    def __getitem__(self, i: int) -> torch.Tensor:
        item = self._items[i]
        return item.to(self._devices[i], self._dtypes[i])

    def __setitem__(self, i: int, value: torch.Tensor) -> None:
        self._dtypes[i] = value.dtype
        if self._spilled:
            if value.shape != self._items[i].shape:
                raise ActivationStorageError(f"sample {i}: a spilled state keeps its shape "
                                             f"{tuple(self._items[i].shape)}, got {tuple(value.shape)}")
            self._items[i].copy_(value)
            return
        self._items[i] = value.to(self._devices[i], self._dtype or value.dtype)

    def stored_bytes(self) -> int:
        """Bytes of the states held in memory (0 when spilled to disk)."""
        if self._spilled:
            return 0
        return sum(t.numel() * t.element_size() for t in self._items)

    def close(self) -> None:
        """Drop the states (a spilled file's mapping with them)."""
        self._items = []

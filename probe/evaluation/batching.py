"""How the evaluation wrapper groups requests into batches, and how ``auto`` finds the largest that fits.

Requests are grouped by what must be the same across a batch (generation settings, whether they carry
images), sorted longest first inside a group so that rows of one batch pad little and the first batch
is the largest a run meets, then cut into batches. Every result goes back to its request's own place.

``auto`` starts at :data:`AUTO_START` rows on a GPU and halves on an out-of-memory error until the first
(longest) batch fits; the size found serves the rest of the run. On the CPU a memory error ends the
process rather than raising, so ``auto`` there means :data:`CPU_AUTO`.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence
from typing import TypeVar

import torch

from probe.errors import ProbeError

AUTO = "auto"
AUTO_START = 64
CPU_AUTO = 8

T = TypeVar("T")


class BatchSizeError(ProbeError):
    """A batch size that is neither a positive integer nor ``auto``."""


def parse_batch_size(value: int | str) -> int | str:
    """A positive int, or ``"auto"``; anything else raises :class:`BatchSizeError`."""
    if isinstance(value, str) and value.strip().lower() == AUTO:
        return AUTO
    try:
        size = int(value)
    except (TypeError, ValueError):
        raise BatchSizeError(f"batch size must be a positive integer or auto, got {value!r}") from None
    if size < 1 or str(size) != str(value).strip():
        raise BatchSizeError(f"batch size must be a positive integer or auto, got {value!r}")
    return size


def grouped_order(keys: Sequence[Hashable], lengths: Sequence[int]) -> list[list[int]]:
    """Request indices grouped by key (in order of first appearance), longest first within a group
    (ties keep their order)."""
    groups: dict[Hashable, list[int]] = {}
    for index, key in enumerate(keys):
        groups.setdefault(key, []).append(index)
    return [sorted(members, key=lambda i: -lengths[i]) for members in groups.values()]


def out_of_memory(error: BaseException) -> bool:
    """Whether ``error`` is the accelerator running out of memory."""
    return isinstance(error, torch.OutOfMemoryError) or "out of memory" in str(error).lower()


class BatchRunner:
    """Runs ``step`` over batches of request indices; holds the size ``auto`` settled on."""

    def __init__(self, batch_size: int | str, device: torch.device) -> None:
        size = parse_batch_size(batch_size)
        if size == AUTO:
            self.size: int | None = None if device.type == "cuda" else CPU_AUTO
        else:
            self.size = int(size)

    def run(self, group: Sequence[int], step: Callable[[list[int]], list[T]]) -> list[T]:
        """``step`` applied to consecutive batches of ``group``; its results in ``group``'s order."""
        results: list[T] = []
        position = 0
        while position < len(group):
            if self.size is None:
                batch, found = self._first_fit(list(group[position:]), step)
                results += batch
                position += found
                continue
            chunk = list(group[position:position + self.size])
            results += step(chunk)
            position += len(chunk)
        return results

    def _first_fit(self, rest: list[int], step: Callable[[list[int]], list[T]]) -> tuple[list[T], int]:
        """Halve from :data:`AUTO_START` until a batch of the longest requests fits; keep that size."""
        size = min(AUTO_START, len(rest))
        while True:
            try:
                out = step(rest[:size])
            except RuntimeError as error:  # torch.OutOfMemoryError is one
                if not out_of_memory(error) or size == 1:
                    raise
                torch.cuda.empty_cache()
                size //= 2
                continue
            halved = size < min(AUTO_START, len(rest))
            if halved or size == AUTO_START:  # a whole short group that fit says nothing about a longer one
                self.size = size
            return out, size

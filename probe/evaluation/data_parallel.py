"""Data-parallel evaluation as ``torchrun`` launches it: one process per GPU (or CPU process under gloo),
each scoring its share of the requests; lmms-eval splits them by rank and gathers them on rank 0.

    torchrun --nproc-per-node 4 -m probe.cli eval MODEL --device cuda --tasks paper9
"""

from __future__ import annotations

import os

from probe.errors import ProbeError


class DataParallelError(ProbeError):
    """A data-parallel launch that lacks what its processes need to find each other."""


def data_parallel_rank() -> tuple[int, int]:
    """(this process's rank, the number of processes) of a ``torchrun`` launch; (0, 1) otherwise."""
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def data_parallel_device(device: str) -> str:
    """The device this process serves on: under ``torchrun`` with ``cuda``, the GPU of its local rank."""
    if device == "cuda" and data_parallel_rank()[1] > 1:
        return f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}"
    return device


def start_data_parallel(device: str) -> None:
    """Join the ``torchrun`` launch's process group before any scoring (NCCL between GPUs, gloo on the
    CPU); nothing for a single process or a group already joined."""
    import torch.distributed as dist

    if data_parallel_rank()[1] == 1 or dist.is_initialized():
        return
    missing = [v for v in ("MASTER_ADDR", "MASTER_PORT") if not os.environ.get(v)]
    if missing:
        raise DataParallelError(f"WORLD_SIZE is set but {', '.join(missing)} is not: launch with torchrun "
                                "(torchrun --nproc-per-node N -m probe.cli eval ...)")
    if device.startswith("cuda"):
        import torch

        torch.cuda.set_device(torch.device(device))
    dist.init_process_group(backend="nccl" if device.startswith("cuda") else "gloo")

"""Device strings checked against what this machine has, before any model work."""

from __future__ import annotations

import logging
import platform
from pathlib import Path
from typing import Any

import torch

from probe.errors import DeviceError

log = logging.getLogger(__name__)

# CPU flags (Linux /proc/cpuinfo) with which a half-precision matrix product runs in hardware
HALF_PRECISION_FLAGS = {torch.bfloat16: ("avx512_bf16", "amx_bf16"), torch.float16: ("avx512_fp16", "amx_fp16")}


def check_device(name: str | torch.device) -> torch.device:
    """``name`` as a :class:`torch.device`, or a :class:`DeviceError` naming why it cannot be used here
    (not a device string, no CUDA in this torch build or no GPU, a GPU index beyond those present)."""
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        raise DeviceError(f"invalid device {str(name)!r}; use e.g. cpu, cuda or cuda:1") from None
    if device.type == "cpu":
        if device.index not in (None, 0):
            raise DeviceError(f"device {str(name)!r}: torch has one CPU device (cpu or cpu:0); its cores are threads "
                              "(OMP_NUM_THREADS), not device indices")
        return device
    if device.type == "cuda":
        if not torch.cuda.is_available():
            why = "this torch build has no CUDA" if torch.version.cuda is None else "no GPU is visible"
            raise DeviceError(f"device {str(name)!r} needs CUDA, which this machine lacks ({why}); use cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise DeviceError(f"device {str(name)!r}: only {torch.cuda.device_count()} GPU(s) here")
        return device
    if device.type == "mps" and torch.backends.mps.is_available():
        return device
    raise DeviceError(f"device {str(name)!r} is not available here; use cpu or cuda")


def _cpuinfo_lines(cpuinfo: Path) -> list[str] | None:
    """The lines of Linux's CPU description, or None where the system has none."""
    try:
        return cpuinfo.read_text().splitlines()
    except OSError:
        return None


def cpu_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> set[str] | None:
    """The instruction-set flags of this machine's CPU, or None where the system does not list them."""
    lines = _cpuinfo_lines(cpuinfo)
    if lines is None:
        return None
    return {flag for line in lines if line.startswith("flags") for flag in line.split(":", 1)[1].split()}


KERNEL_FLAGS = frozenset({"sse4_2", "avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl", "avx512_vnni",
                          "avx512_bf16", "avx512_fp16", "avx_vnni", "amx_tile", "amx_bf16", "amx_int8", "asimd",
                          "sve", "bf16"})  # the CPU flags that choose torch's kernels (x86 and Arm)


def machine_description(device: str | torch.device = "cpu", cpuinfo: Path = Path("/proc/cpuinfo")) -> dict[str, Any]:
    """The hardware a run computed on: the CPU's model, the vector instructions torch's kernels use on it
    (AVX2, AVX512, ...) and the CPU's flags among :data:`KERNEL_FLAGS`, torch's thread count and, for a
    CUDA device, the GPU. Float results such as calibration statistics, and so pruning masks near their
    threshold, can differ in the last bits between machines."""
    lines = _cpuinfo_lines(cpuinfo) or []
    model = next((line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")), None)
    flags = cpu_flags(cpuinfo) or set()
    machine: dict[str, Any] = {"cpu": model or platform.processor() or platform.machine(),
                               "cpu_capability": torch.backends.cpu.get_cpu_capability(),
                               "cpu_flags": sorted(flags & KERNEL_FLAGS),
                               "torch_threads": torch.get_num_threads()}
    if torch.device(device).type == "cuda" and torch.cuda.is_available():
        machine["gpu"] = torch.cuda.get_device_name(torch.device(device))
    return machine


def slow_dtype_warning(device: str | torch.device, dtype: torch.dtype, flags: set[str] | None) -> str | None:
    """A warning when ``dtype`` is a half precision that this CPU (its ``flags``) can only emulate, which
    makes every matrix product many times slower than float32; None otherwise or when the flags are unknown."""
    wanted = HALF_PRECISION_FLAGS.get(dtype)
    if torch.device(device).type != "cpu" or wanted is None or flags is None or flags & set(wanted):
        return None
    name = str(dtype).removeprefix("torch.")
    return (f"{name} on this CPU (no {' or '.join(wanted)}) is emulated and many times slower than float32; "
            "choose --dtype float32 here")


def warn_if_slow_dtype(device: str | torch.device, dtype: torch.dtype) -> None:
    """Log :func:`slow_dtype_warning` for this machine."""
    message = slow_dtype_warning(device, dtype, cpu_flags())
    if message:
        log.warning(message)

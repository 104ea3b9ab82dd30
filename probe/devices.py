"""Device strings checked against what this machine has, before any model work."""

from __future__ import annotations

import torch

from probe.errors import DeviceError


def check_device(name: str | torch.device) -> torch.device:
    """``name`` as a :class:`torch.device`, or a :class:`DeviceError` naming why it cannot be used here
    (not a device string, no CUDA in this torch build or no GPU, a GPU index beyond those present)."""
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        raise DeviceError(f"invalid device {str(name)!r}; use e.g. cpu, cuda or cuda:1") from None
    if device.type == "cpu":
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

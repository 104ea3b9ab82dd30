"""Gemma 3 (``gemma3``): SigLIP tower; sliding-window and global layers get different masks and rotary.

Per-layer keyword arguments are captured for every block, so each layer type replays with its own.
"""

from probe.models.base import Adapter, register


@register
class Gemma3Adapter(Adapter):
    model_types = ("gemma3",)

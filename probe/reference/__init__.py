"""The offline reference LVLM (SmolLM2-135M-Instruct + EfficientNet-Lite0 + a trained projector), built
from stock transformers classes only."""

from probe.reference.build import (
    ReferenceModelError,
    build_reference,
    default_dir,
    load_reference,
    reference_available,
)

__all__ = [
    "ReferenceModelError",
    "build_reference",
    "default_dir",
    "load_reference",
    "reference_available",
]

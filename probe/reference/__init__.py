"""The offline reference LVLM (SmolLM2-135M-Instruct + EfficientNet-Lite0 + a trained projector).

Importing this package registers the EfficientNet-Lite vision tower with transformers' Auto classes.
"""

from probe.reference.build import (
    ReferenceModelError,
    build_reference,
    default_dir,
    load_reference,
    reference_available,
)
from probe.reference.vision import EfficientNetLiteVisionConfig, EfficientNetLiteVisionModel

__all__ = [
    "EfficientNetLiteVisionConfig",
    "EfficientNetLiteVisionModel",
    "ReferenceModelError",
    "build_reference",
    "default_dir",
    "load_reference",
    "reference_available",
]

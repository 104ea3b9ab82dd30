"""The offline reference LVLMs (SmolLM2-135M-Instruct or Qwen2.5-Coder-1.5B-Instruct + EfficientNet-Lite0
+ a trained projector), built from stock transformers classes only."""

from probe.core.names import REFERENCE_MODELS
from probe.reference.build import (
    SMALL,
    ReferenceModelError,
    ReferenceSpec,
    build_reference,
    load_reference,
    reference_available,
)


def reference_spec(name: str) -> ReferenceSpec:
    """The spec of the reference called ``name`` (one of :data:`probe.core.names.REFERENCE_MODELS`)."""
    if name == SMALL.name:
        return SMALL
    from probe.reference.large import LARGE

    if name == LARGE.name:
        return LARGE
    raise ReferenceModelError(f"unknown reference model {name!r}; choose from {', '.join(REFERENCE_MODELS)}")


__all__ = [
    "ReferenceModelError",
    "ReferenceSpec",
    "build_reference",
    "load_reference",
    "reference_available",
    "reference_spec",
]

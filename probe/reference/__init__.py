"""The offline reference LVLMs (SmolLM2-135M-Instruct or Qwen2.5-Coder-1.5B-Instruct + EfficientNet-Lite0
+ a trained projector), built from stock transformers classes only."""

from probe.reference.build import (  # noqa: I001
    SMALL,
    ReferenceModelError,
    ReferenceSpec,
    build_reference,
    default_dir,
    load_reference,
    reference_available,
)

from probe.names import REFERENCE_MODELS as REFERENCE_NAMES


def reference_spec(name: str) -> ReferenceSpec:
    """The spec of the reference called ``name`` (``reference`` or ``reference-large``)."""
    if name == SMALL.name:
        return SMALL
    if name == "reference-large":
        from probe.reference.large import LARGE

        return LARGE
    raise ReferenceModelError(f"unknown reference model {name!r}; choose from {', '.join(REFERENCE_NAMES)}")


__all__ = [
    "REFERENCE_NAMES",
    "ReferenceModelError",
    "ReferenceSpec",
    "build_reference",
    "default_dir",
    "load_reference",
    "reference_available",
    "reference_spec",
]

"""LVLM family adapters. Importing this package registers every built-in family."""

from probe.models import (  # noqa: F401  (imported for registration)
    fast_vlm,
    gemma3,
    idefics3,
    internvl,
    llava,
    llava_next,
    llava_onevision,
    qwen2_5_vl,
    qwen2_vl,
    qwen3_vl,
)
from probe.models.base import (
    Adapter,
    InvalidInputsError,
    UnknownModelFamilyError,
    check_family,
    check_tiny_family,
    generic_families,
    get_adapter,
    register,
    supported_families,
    tiny_families,
)

__all__ = [
    "Adapter",
    "InvalidInputsError",
    "UnknownModelFamilyError",
    "check_family",
    "check_tiny_family",
    "generic_families",
    "get_adapter",
    "register",
    "supported_families",
    "tiny_families",
]

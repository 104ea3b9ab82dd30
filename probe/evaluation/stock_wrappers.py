"""Which of lmms-eval's stock model wrappers load a model: those whose source names the model's class.
Read from the installed lmms-eval's files (its wrappers are not imported: many need packages this toolkit
does not install)."""

from __future__ import annotations

import importlib.util
import re
from functools import cache
from pathlib import Path

from torch import nn


@cache
def _sources() -> dict[str, str]:
    """lmms-eval's simple (stock) wrappers by name, with their source text."""
    try:
        from lmms_eval.models import AVAILABLE_SIMPLE_MODELS
    except ImportError:
        return {}
    found = {}
    for name in AVAILABLE_SIMPLE_MODELS:
        spec = importlib.util.find_spec(f"lmms_eval.models.simple.{name}")
        if spec is not None and spec.origin is not None and Path(spec.origin).is_file():
            found[name] = Path(spec.origin).read_text(encoding="utf-8", errors="replace")
    return found


def stock_wrappers(model: nn.Module) -> list[str]:
    """The stock wrappers whose source names ``model``'s class."""
    name = type(model).__name__
    return [wrapper for wrapper, source in sorted(_sources().items()) if re.search(rf"\b{name}\b", source)]


def describe(model: nn.Module) -> str:
    """One line for ``probe check``: which stock wrappers load the model (the `probe` wrapper always does)."""
    if not _sources():
        return "lmms-eval is not installed; the probe wrapper loads every supported model"
    found = stock_wrappers(model)
    named = ", ".join(found) if found else "none"
    return (f"stock wrappers naming {type(model).__name__}: {named}; the probe wrapper loads every supported "
            "model (token pruning and the MoT probe need it)")

"""Grid method entries as text, ``atv(alpha=2, signal=random)``: parsed into a method name and its
settings. It imports nothing heavy, so ``analysis/`` reads the method column of stored results without
the grid runner."""

from __future__ import annotations

from probe.errors import ProbeError


class MethodSpecError(ProbeError):
    """A method entry that is not ``name`` or ``name(key=value, ...)``."""


def parse_method_spec(spec: str) -> tuple[str, dict]:
    """``atv(alpha=2, signal=random)`` -> ("atv", {"alpha": 2.0, "signal": "random"}); ``wanda`` -> ("wanda", {})."""
    text = str(spec).strip()
    if "(" not in text:
        return text, {}
    if not text.endswith(")"):
        raise MethodSpecError(f"method {text!r}: settings go in parentheses, e.g. atv(alpha=2)")
    name, _, inner = text[:-1].partition("(")
    overrides: dict = {}
    for part in filter(None, (p.strip() for p in inner.split(","))):
        key, sep, value = part.partition("=")
        if not sep:
            raise MethodSpecError(f"method {text!r}: {part!r} is not key=value")
        try:
            overrides[key.strip()] = float(value)
        except ValueError:  # not a number: the setting is a word (signal=random)
            overrides[key.strip()] = value.strip()
    return name.strip(), overrides

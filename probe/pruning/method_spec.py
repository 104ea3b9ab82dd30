"""Grid method entries: text, ``atv(alpha=2, signal=random)``, or a mapping, ``{method: atv, alpha: 2}``,
``{tokens: text, scorer: sparsegpt, allocation: owl}``. It imports nothing heavy, so ``analysis/`` reads
the method labels of stored results without the grid runner."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from probe.core.registry import DEFAULTS, check_name, check_preset
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


ENTRY_KEYS = ("method", "tokens", "scorer", "allocation", "true_sequential", "label")


def _format(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


@dataclass(frozen=True)
class MethodEntry:
    """One method of a grid: a named method and/or a choice per axis, the entries' settings (flat: each
    goes to the chosen entry that has it) and the label its rows carry in the results."""

    method: str = ""
    tokens: str = ""
    scorer: str = ""
    allocation: str = ""
    true_sequential: bool = False
    settings: dict[str, Any] = field(default_factory=dict)
    label: str = ""

    def axes(self) -> dict[str, str]:
        """The entry chosen on each axis: given, else the method's, else the default."""
        preset = check_preset(self.method) if self.method else {}
        axes = {axis: getattr(self, axis) or preset.get(axis) or DEFAULTS[axis] for axis in DEFAULTS}
        for axis, name in axes.items():
            check_name(axis, name)
        return axes

    def config(self, sparsity: float, pattern: str = "unstructured", **axis_settings: Any):
        """The PruneConfig of this entry at one sparsity; ``axis_settings`` (e.g. ``tokens_settings``) replace
        what the flat settings give that axis."""
        from probe.core.registry import entry_class
        from probe.core.settings import setting_names
        from probe.pruning.engine import PruneConfig

        axes = self.axes()
        takes = {axis: setting_names(entry_class(axis, name).Settings) for axis, name in axes.items()}
        split: dict[str, dict[str, Any]] = {axis: {} for axis in axes}
        for key, value in self.settings.items():
            owners = [axis for axis in axes if key in takes[axis]]
            if not owners:
                known = "; ".join(f"{axis} {axes[axis]!r} takes {', '.join(takes[axis]) or 'none'}" for axis in axes)
                raise MethodSpecError(f"unknown setting {key!r} ({known})")
            split[owners[0]][key] = value
        for axis in axes:
            split[axis] = axis_settings.get(f"{axis}_settings", split[axis])
        return PruneConfig(method=self.method, tokens=self.tokens, scorer=self.scorer, allocation=self.allocation,
                           sparsity=sparsity, pattern=pattern, true_sequential=self.true_sequential,
                           tokens_settings=split["tokens"], scorer_settings=split["scorer"],
                           allocation_settings=split["allocation"])


def method_entry(value: str | Mapping[str, Any] | MethodEntry) -> MethodEntry:
    """A grid's method entry from text (``atv``, ``atv(alpha=2)``) or a mapping (``{method: atv, alpha: 2}``,
    ``{tokens: text, scorer: sparsegpt, allocation: owl}``); names on the axes are checked here, settings
    when the entry becomes a PruneConfig."""
    if isinstance(value, MethodEntry):
        return value
    if isinstance(value, str):
        name, overrides = parse_method_spec(value)
        check_preset(name)
        return MethodEntry(method=name, settings=overrides, label=value.strip())
    if not isinstance(value, Mapping):
        raise MethodSpecError(f"a method is a name such as atv or a mapping such as {{method: atv, alpha: 2}}, "
                              f"not {value!r}")
    data = {str(k): v for k, v in value.items()}
    for key in ("method", "tokens", "scorer", "allocation", "label"):
        if not isinstance(data.get(key, ""), str):
            raise MethodSpecError(f"{key} should be a name, got {data[key]!r}")
    if not isinstance(data.get("true_sequential", False), bool):
        raise MethodSpecError(f"true_sequential should be true or false, got {data['true_sequential']!r}")
    if not any(data.get(k) for k in ("method", "tokens", "scorer", "allocation")):
        raise MethodSpecError("a method mapping needs method, or at least one of tokens, scorer, allocation")
    settings = {k: v for k, v in data.items() if k not in ENTRY_KEYS}
    entry = MethodEntry(**{k: data[k] for k in ENTRY_KEYS[:-1] if k in data}, settings=settings)
    entry.axes()  # names checked
    return replace(entry, label=data.get("label") or _default_label(entry))


def _default_label(entry: MethodEntry) -> str:
    name = entry.method or "+".join(getattr(entry, axis) or DEFAULTS[axis] for axis in DEFAULTS)
    extras = {**entry.settings, **({"true_sequential": True} if entry.true_sequential else {})}
    inner = ", ".join(f"{k}={_format(v)}" for k, v in extras.items())
    return f"{name}({inner})" if inner else name

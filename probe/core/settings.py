"""Settings of an axis entry (a token selector, scorer or allocation): a frozen dataclass per entry,
built from a mapping that may hold only its fields, each coerced to its annotated type."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from probe.errors import ProbeError


class SettingsError(ProbeError):
    """Settings an entry does not have, or of the wrong type."""


@dataclasses.dataclass(frozen=True)
class NoSettings:
    """The settings of an entry that has none."""


def setting_names(settings_type: type) -> tuple[str, ...]:
    """The fields of a settings dataclass."""
    return tuple(f.name for f in dataclasses.fields(settings_type))


def build_settings(settings_type: type, value: Any, where: str) -> Any:
    """``value`` (None, a mapping or already an instance) as an instance of ``settings_type``; unknown names
    and values of the wrong type are :class:`SettingsError` naming ``where`` and the setting."""
    if isinstance(value, settings_type):
        return value
    if value is None:
        value = {}
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        raise SettingsError(f"{where} takes {settings_type.__name__}, not {type(value).__name__}")
    if not isinstance(value, Mapping):
        raise SettingsError(f"{where} settings should be a mapping of name: value, got {value!r}")
    known = setting_names(settings_type)
    unknown = sorted(str(k) for k in value if k not in known)
    if unknown:
        raise SettingsError(f"unknown {where} setting(s) {', '.join(unknown)}; known: {', '.join(known) or 'none'}")
    from pydantic import TypeAdapter, ValidationError

    try:
        return TypeAdapter(settings_type).validate_python(dict(value))
    except ValidationError as exc:
        error = exc.errors()[0]
        name = ".".join(str(part) for part in error["loc"]) or "settings"
        message = error["msg"]
        if message.startswith("Input should be "):
            expected = message.removeprefix("Input should be ").split(",")[0].rstrip(".")
            raise SettingsError(f"{where} setting {name!r} should be {expected}, got {error.get('input')!r}") from None
        raise SettingsError(f"{where} setting {name!r}: {message.removeprefix('Value error, ')}") from None

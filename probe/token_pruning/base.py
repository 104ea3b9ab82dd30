"""The token-pruning protocol and how a method is named: ``fastv``, ``fastv(k=3, ratio=0.75)``."""

from __future__ import annotations

from typing import Any, ClassVar

import torch

from probe.errors import ProbeError
from probe.settings import NoSettings


class TokenPruningError(ProbeError):
    """A token-pruning method or setting that does not fit the model or the request."""


class TokenPruner:
    """Drops visual tokens once, before decoder layer :meth:`layer` runs, during the prefill of a request.

    ``needs_attention``: the method ranks by the attention the last query gives each token at the layer
    before (computed eagerly there). :meth:`keep` gets the positions (in the current sequence) of the
    visual tokens and returns those to keep.
    """

    name: ClassVar[str] = ""
    Settings: ClassVar[type] = NoSettings
    needs_attention: ClassVar[bool] = False

    def __init__(self, settings: Any = None) -> None:
        self.settings = settings if settings is not None else self.Settings()

    def layer(self) -> int:
        """The decoder layer before which the tokens are dropped."""
        raise NotImplementedError

    def check(self, n_layers: int) -> None:
        """Raise :class:`TokenPruningError` before any work if the method cannot run on ``n_layers`` layers."""
        if not 0 < self.layer() < n_layers:
            raise TokenPruningError(f"{self.name} prunes before layer {self.layer()}; the model has layers "
                                    f"0..{n_layers - 1} and the first cannot be it")

    def keep(self, visual: torch.Tensor, attention: torch.Tensor | None) -> torch.Tensor:
        """The subset of ``visual`` (positions, ascending) to keep; ``attention`` (seq,) is the head-mean
        attention of the last query at the previous layer when :attr:`needs_attention`."""
        raise NotImplementedError

    def spec(self) -> str:
        """The method as text, ``name(key=value, ...)``: what records, configs and grids store."""
        from dataclasses import asdict

        values = asdict(self.settings).items()
        inner = ", ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in values)
        return f"{self.name}({inner})" if inner else self.name


def make_pruner(spec: str | TokenPruner | None) -> TokenPruner | None:
    """A token pruner from its text (``fastv``, ``fastv(k=3, ratio=0.75)``, ``random(ratio=0.5, seed=1)``);
    None or ``none`` for none."""
    if spec is None or isinstance(spec, TokenPruner):
        return spec
    from probe.method_spec import parse_method_spec
    from probe.registry import TOKEN_PRUNERS, UnknownEntryError, load_entry
    from probe.settings import build_settings

    name, settings = parse_method_spec(spec)
    if name in ("", "none"):
        return None
    if name not in TOKEN_PRUNERS:
        raise UnknownEntryError(f"unknown token-pruning method {name!r}; choose from none, {', '.join(TOKEN_PRUNERS)}")
    cls = load_entry(TOKEN_PRUNERS[name])
    return cls(build_settings(cls.Settings, settings, f"token pruning {name!r}"))


def kept_count(n_visual: int, ratio: float) -> int:
    """Visual tokens kept when a fraction ``ratio`` of ``n_visual`` is dropped: ``int(n_visual * (1 - ratio))``."""
    return int(n_visual * (1.0 - ratio))

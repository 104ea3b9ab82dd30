"""The token-pruning protocol and how a method is named: ``fastv``, ``fastv(k=3, ratio=0.75)``."""

from __future__ import annotations

import contextlib
from dataclasses import asdict, dataclass, field
from typing import Any, ClassVar

import torch

from probe.core.settings import NoSettings
from probe.errors import ProbeError

ATTENTION = "attention"  # the head-mean attention the last query gives every token (computed eagerly)
KEYS = "keys"  # the key projections of every token (tokens, kv heads, head_dim)


class TokenPruningError(ProbeError):
    """A token-pruning method or setting that does not fit the model or the request."""


@dataclass
class StageView:
    """What a method sees when it selects, before decoder layer ``layer`` of a prefill."""

    layer: int
    alive: torch.Tensor  # positions (in the request's sequence) alive now, ascending
    visual: torch.Tensor  # (seq,) bool: which positions of the request are visual
    hidden: torch.Tensor  # (alive, d): the layer's input rows
    first_hidden: torch.Tensor  # (seq, d): the first layer's input rows (the embeddings)
    observed: dict[str, torch.Tensor] = field(default_factory=dict)  # what :meth:`TokenPruner.observe` asked for,
    # from the layer before, over the alive positions


@dataclass
class Selection:
    """A stage's decision: the positions that stay (and how salient they are); rows of ``merged`` groups are
    merged into their representative's row (``merge="mean"``: the group's mean; ``"upstream"``: the
    representative plus that mean); with ``compact`` the staying tokens are renumbered from this layer on
    (their index in the sequence before the stage), else they keep their positions."""

    keep: torch.Tensor
    weights: torch.Tensor | None = None  # saliency of the staying tokens (mean 1 over the visual ones), for
    # weight statistics that count each token by it; None: all alike
    merged: dict[int, list[int]] = field(default_factory=dict)
    merge: str = "mean"
    compact: bool = False
    record: dict[str, Any] = field(default_factory=dict)


class TokenPruner:
    """Drops (and may merge) visual tokens before the decoder layers :meth:`stage_layers` during the prefill
    of a request with images. Before a stage layer, :meth:`select` sees the alive positions and what
    :meth:`observe` asked to record at the layer before it."""

    name: ClassVar[str] = ""
    Settings: ClassVar[type] = NoSettings

    def __init__(self, settings: Any = None) -> None:
        self.settings = settings if settings is not None else self.Settings()

    def stage_layers(self) -> list[int]:
        """The decoder layers before which tokens are selected, ascending."""
        raise NotImplementedError

    def attached(self, model: Any, adapter: Any) -> contextlib.AbstractContextManager:
        """Whatever the method changes outside the decoder while it serves ``model`` (e.g. the vision tower)."""
        return contextlib.nullcontext()

    def prepare_inputs(self, inputs: dict[str, Any], config: Any) -> dict[str, Any]:
        """A request's model inputs as the method needs them (e.g. fewer image placeholders)."""
        return inputs

    def observe(self, layer: int) -> set[str]:
        """What to record while ``layer`` runs (:data:`ATTENTION`, :data:`KEYS`)."""
        return set()

    def check(self, n_layers: int, model_type: str) -> None:
        """Raise :class:`TokenPruningError` before any work if the method cannot run on this model."""
        for layer in self.stage_layers():
            if not 0 < layer < n_layers:
                raise TokenPruningError(f"{self.name} prunes before layer {layer}; the model has layers "
                                        f"0..{n_layers - 1} and the first cannot be it")

    def select(self, view: StageView) -> Selection:
        raise NotImplementedError

    def spec(self) -> str:
        """The method as text, ``name(key=value, ...)``: what records, configs and grids store."""
        values = asdict(self.settings).items()
        inner = ", ".join(f"{k}={v:.10g}" if isinstance(v, float) else f"{k}={v}" for k, v in values)
        return f"{self.name}({inner})" if inner else self.name


def make_pruner(spec: str | TokenPruner | None) -> TokenPruner | None:
    """A token pruner from its text (``fastv``, ``fastv(k=3, ratio=0.75)``, ``vitcop-1/9``); None or ``none``
    for none."""
    if spec is None or isinstance(spec, TokenPruner):
        return spec
    from probe.core.registry import TOKEN_PRUNER_PRESETS, TOKEN_PRUNERS, UnknownEntryError, load_entry
    from probe.core.settings import build_settings
    from probe.pruning.method_spec import parse_method_spec

    if not spec.strip():
        raise UnknownEntryError("the token-pruning method is empty; name one (e.g. fastv) or none")
    name, settings = parse_method_spec(spec)
    if name == "none":
        return None
    if name in TOKEN_PRUNER_PRESETS:
        name, settings = TOKEN_PRUNER_PRESETS[name][0], {**TOKEN_PRUNER_PRESETS[name][1], **settings}
    if name not in TOKEN_PRUNERS:
        choices = ", ".join(["none", *TOKEN_PRUNERS, *TOKEN_PRUNER_PRESETS])
        raise UnknownEntryError(f"unknown token-pruning method {name!r}; choose from {choices}")
    cls = load_entry(TOKEN_PRUNERS[name])
    return cls(build_settings(cls.Settings, settings, f"token pruning {name!r}"))


def kept_count(n_visual: int, ratio: float) -> int:
    """Visual tokens kept when a fraction ``ratio`` of ``n_visual`` is dropped: ``int(n_visual * (1 - ratio))``."""
    return int(n_visual * (1.0 - ratio))


def with_text(view: StageView, visual_kept: torch.Tensor) -> torch.Tensor:
    """The alive non-visual positions plus ``visual_kept``, ascending."""
    text = view.alive[~view.visual[view.alive]]
    return torch.sort(torch.cat([text, visual_kept.to(text.device)])).values

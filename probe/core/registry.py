"""The four axes of a pruning run and the entries each offers, as ``name -> "module:Class"``.

- token selector (:mod:`probe.pruning.tokens`): which token rows of the calibration set feed a weight's statistics;
- scorer (:mod:`probe.pruning.scorers`): which weights go, and what the kept weights become;
- allocation (:mod:`probe.pruning.allocation`): how much sparsity each block or linear gets;
- pattern (:mod:`probe.pruning.sparsity.masks`): unstructured, or N:M.

Adding an entry is one file plus one line here. Entries are imported only when a run uses them, so this
module (and the CLI's choices derived from it) loads no torch. :data:`PRESETS` are the named methods:
each is a choice on the axes.
"""

from __future__ import annotations

import importlib
from typing import Any

from probe.errors import ProbeError

TOKEN_SELECTORS: dict[str, str] = {
    "text": "probe.pruning.tokens.modality:TextTokens",
    "visual": "probe.pruning.tokens.modality:VisualTokens",
    "mixed": "probe.pruning.tokens.modality:MixedTokens",
    "atv": "probe.pruning.tokens.atv:AtvTokens",
    "tamp": "probe.pruning.tokens.tamp:TampTokens",
    "kept": "probe.pruning.tokens.kept:KeptTokens",  # the tokens a token-pruning method keeps (joint pruning)
}

SCORERS: dict[str, str] = {
    "magnitude": "probe.pruning.scorers.magnitude:MagnitudeScorer",
    "wanda": "probe.pruning.scorers.wanda:WandaScorer",
    "sparsegpt": "probe.pruning.scorers.sparsegpt:SparseGptScorer",
    "ria": "probe.pruning.scorers.ria:RiaScorer",
}

ALLOCATIONS: dict[str, str] = {
    "uniform": "probe.pruning.allocation.uniform:UniformAllocation",
    "owl": "probe.pruning.allocation.owl:OwlAllocation",
    "tamp": "probe.pruning.allocation.tamp:TampAllocation",
}

# Named methods: a choice on each axis (axes left out take the defaults: mixed tokens, uniform allocation).
PRESETS: dict[str, dict[str, str]] = {
    "magnitude": {"scorer": "magnitude"},
    "wanda": {"scorer": "wanda"},
    "sparsegpt": {"scorer": "sparsegpt"},
    "ria": {"scorer": "ria"},
    "atv": {"tokens": "atv", "scorer": "wanda"},  # ATV-Pruning
    "tamp": {"tokens": "tamp", "scorer": "wanda"},  # TAMP's AMIA tokens at uniform sparsity (the ATV paper's TAMP)
    "tamp-full": {"tokens": "tamp", "scorer": "wanda", "allocation": "tamp"},  # with TAMP's layer-wise sparsity
    "owl": {"scorer": "wanda", "allocation": "owl"},  # OWL: Wanda with outlier-weighted layer-wise sparsity
}

# Visual token pruning at inference (probe.token_pruning): not an axis of weight pruning, but a runtime
# that evaluation, grids and the kept-tokens selector use.
TOKEN_PRUNERS: dict[str, str] = {
    "fastv": "probe.token_pruning.fastv:FastvPruner",
    "random": "probe.token_pruning.random_tokens:RandomPruner",
    "vitcop": "probe.token_pruning.vitcop:VitcopPruner",
}
# named settings of a token-pruning method: ViTCoP's three shipped configurations (its rho, vision_keep and
# cluster share)
TOKEN_PRUNER_PRESETS: dict[str, tuple[str, dict[str, float]]] = {
    "vitcop-1/3": ("vitcop", {"rho": 1 / 3, "vision_keep": 0.5, "cluster_pct": 0.18}),
    "vitcop-2/9": ("vitcop", {"rho": 2 / 9, "vision_keep": 0.4, "cluster_pct": 0.15}),
    "vitcop-1/9": ("vitcop", {"rho": 1 / 9, "vision_keep": 0.3, "cluster_pct": 0.12}),
}

AXES: dict[str, dict[str, str]] = {"tokens": TOKEN_SELECTORS, "scorer": SCORERS, "allocation": ALLOCATIONS}
DEFAULTS: dict[str, str] = {"tokens": "mixed", "scorer": "wanda", "allocation": "uniform"}
AXIS_TITLES: dict[str, str] = {"tokens": "token selector", "scorer": "scorer", "allocation": "allocation"}


class UnknownEntryError(ProbeError):
    """A name that no registry holds."""


def check_name(axis: str, name: str) -> None:
    """Raise :class:`UnknownEntryError` (listing the choices) unless ``name`` is an entry of ``axis``."""
    if name not in AXES[axis]:
        raise UnknownEntryError(f"unknown {AXIS_TITLES[axis]} {name!r}; choose from {', '.join(AXES[axis])}")


def check_preset(name: str) -> dict[str, str]:
    """The axes of a named method, or :class:`UnknownEntryError` listing the methods."""
    if name not in PRESETS:
        raise UnknownEntryError(f"unknown method {name!r}; choose from {', '.join(PRESETS)}")
    return PRESETS[name]


def load_entry(path: str) -> Any:
    """The object a registry names as ``module:attribute`` (imported now)."""
    module, _, attribute = path.partition(":")
    return getattr(importlib.import_module(module), attribute)


def entry_class(axis: str, name: str) -> Any:
    """The class implementing entry ``name`` of ``axis`` (imported now)."""
    check_name(axis, name)
    return load_entry(AXES[axis][name])

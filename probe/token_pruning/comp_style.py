"""``comp-style``: a training-free, unofficial reading of CoMP's multi-mode pruning strategy (Collaborative
Multi-Mode Pruning, arXiv 2604.02956; its code is not public, only the abstract is known, so this is not
CoMP).

The target (weight sparsity ``s``, visual-token drop ratio ``r``) is reached in ``stages`` equal steps of
each mode. Before every stage both next steps are tried on the calibration set: a weight step prunes the
current weights further to the next sparsity (Wanda, statistics from the tokens the current token method
keeps), a token step raises the token method's ratio. A step's cost is the mean KL divergence of the
final-position logits from the dense model's over the calibration samples. It is mixed with a moving
average of that mode's past costs (``momentum``); the cheaper mode is taken with probability
``1 - epsilon``, otherwise a seeded random mode (a mode whose steps are used up is not offered). Every
stage's costs and choice are recorded.
"""

from __future__ import annotations

import copy
import random
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from probe.calibration.capture import CapturedSample
from probe.errors import ProbeError
from probe.models.loading import LoadedModel
from probe.pruning.engine import PruneConfig, prune
from probe.token_pruning.base import TokenPruner, make_pruner
from probe.token_pruning.runtime import TokenPruningRuntime
from probe.token_pruning.schedule import with_token_schedule

MODES = ("weights", "tokens")


@dataclass(frozen=True)
class CompStyleSettings:
    stages: int = 4  # steps of each mode
    epsilon: float = 0.1  # probability of a random mode
    momentum: float = 0.5  # weight of the moving average of past costs
    seed: int = 0

    def __post_init__(self) -> None:
        if self.stages < 1:
            raise ProbeError(f"comp-style needs at least one stage, got {self.stages}")
        if not (0 <= self.epsilon <= 1 and 0 <= self.momentum < 1):
            raise ProbeError("comp-style epsilon must lie in [0, 1] and momentum in [0, 1)")


@dataclass
class CompStyleResult:
    model: nn.Module
    token_pruning: str  # the token method at its final ratio
    stages: list[dict[str, Any]] = field(default_factory=list)


def logits_kl(dense: torch.Tensor, other: torch.Tensor) -> float:
    """KL(dense || other) of two logit vectors (fp64)."""
    p = torch.log_softmax(dense.double(), dim=-1)
    q = torch.log_softmax(other.double(), dim=-1)
    return float((p.exp() * (p - q)).sum())


@torch.no_grad()
def final_logits(loaded: LoadedModel, model: nn.Module, inputs: list[dict], pruner: TokenPruner | None
                 ) -> list[torch.Tensor]:
    """The last position's logits of each request, with the token method attached (if any)."""
    runtime = TokenPruningRuntime(pruner, loaded.adapter) if pruner is not None else None
    out = []
    for request in inputs:
        if runtime is None:
            out.append(model(**request).logits[0, -1])
            continue
        with runtime.attached(model), runtime.request(request["input_ids"], model.config):
            out.append(model(**request).logits[0, -1])
    return out


def comp_style(loaded: LoadedModel, samples: list[CapturedSample], inputs: list[dict], sparsity: float,
               token_pruning: str, settings: CompStyleSettings | None = None) -> CompStyleResult:
    """Reach ``sparsity`` and the ratio of ``token_pruning`` (e.g. ``fastv(k=2, ratio=0.5)``) stage by stage
    on a copy of ``loaded.model``; ``samples`` are the captured calibration samples, ``inputs`` the same
    samples' model inputs (for the costs)."""
    settings = settings or CompStyleSettings()
    target = make_pruner(token_pruning)
    if target is None or not hasattr(target.settings, "ratio"):
        raise ProbeError("comp-style needs a token-pruning method with a ratio, e.g. 'fastv(k=2, ratio=0.5)'")
    TokenPruningRuntime(target, loaded.adapter).check(loaded.model)
    dense_logits = final_logits(loaded, loaded.model, inputs, None)
    rng = random.Random(settings.seed)
    model = copy.deepcopy(loaded.model)
    steps = {"weights": sparsity / settings.stages, "tokens": target.settings.ratio / settings.stages}
    taken = dict.fromkeys(MODES, 0)
    history: dict[str, float | None] = dict.fromkeys(MODES)
    stages: list[dict[str, Any]] = []

    def with_ratio(count: int) -> TokenPruner | None:
        if count == 0:
            return None
        return type(target)(type(target.settings)(**{**vars(target.settings), "ratio": steps["tokens"] * count}))

    def candidate(mode: str) -> tuple[nn.Module, float]:
        pruner_now = with_ratio(taken["tokens"] + (mode == "tokens"))
        weights = model
        if mode == "weights":
            weights = copy.deepcopy(model)
            current = with_ratio(taken["tokens"])
            calibration = with_token_schedule(model, loaded.adapter, samples, current) if current else samples
            config = PruneConfig(tokens="kept" if current else "mixed", sparsity=steps["weights"] * (taken[mode] + 1))
            prune(weights, loaded.adapter, calibration, config, show_progress=False)
        logits = final_logits(loaded, weights, inputs, pruner_now)
        cost = sum(logits_kl(d, o) for d, o in zip(dense_logits, logits)) / len(inputs)
        return weights, cost

    while any(taken[m] < settings.stages for m in MODES):
        open_modes = [m for m in MODES if taken[m] < settings.stages]
        tried = {m: candidate(m) for m in open_modes}
        costs = {m: tried[m][1] for m in open_modes}
        mixed = {m: costs[m] if history[m] is None else settings.momentum * history[m]
                 + (1 - settings.momentum) * costs[m] for m in open_modes}
        explore = len(open_modes) > 1 and rng.random() < settings.epsilon
        choice = rng.choice(open_modes) if explore else min(open_modes, key=lambda m: (mixed[m], MODES.index(m)))
        model = tried[choice][0]
        taken[choice] += 1
        for m in open_modes:
            history[m] = mixed[m]
        stages.append({"stage": len(stages), "costs": costs, "mixed": mixed, "choice": choice, "explored": explore,
                       "sparsity": steps["weights"] * taken["weights"],
                       "token_ratio": steps["tokens"] * taken["tokens"]})
    final = with_ratio(taken["tokens"])
    return CompStyleResult(model, final.spec() if final else "none", stages)

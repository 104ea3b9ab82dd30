"""The Mixture-of-Transformer (MoT) sensitivity probe (paper section 3.2, appendix A4).

In every decoder block the QKV and FFN linears (and optionally ``o_proj``) are replicated into a text
and a visual pathway. A routing mask by token modality sends each visual token through the visual
copy and every other token through the text copy; norms, residuals, rotary positions and the
attention computation stay shared. Each token is computed by its own pathway only, so the probe costs
no extra compute, and memory grows only by the replicated linears. With both pathways unpruned the
probe computes what the original model computes.

The modality mask comes from the adapter's visual mask: for full forwards (evaluation, generation
with a KV cache) a pre-hook reads it off ``input_ids``; for layer-wise replay the pruning engine sets
it per sample through :meth:`MoTProbe.routing`.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Iterator

import torch
from torch import nn

from probe.calibration.capture import CapturedSample
from probe.errors import ProbeError
from probe.models.base import Adapter, LinearStandIn
from probe.models.experts import private_copy, routed_positions
from probe.pruning.engine import PruneConfig, PruneReport, Target, TargetFn, prune, stats_keys

PATHWAYS: tuple[str, ...] = ("text", "visual")


class MoTError(ProbeError):
    """Invalid use of the MoT probe."""


class Router:
    """The modality mask of the tokens currently flowing through the probe (True = visual)."""

    def __init__(self) -> None:
        self.visual: torch.Tensor | None = None


class RoutedLinear(LinearStandIn):
    """A linear replicated into a text and a visual copy; each token goes through its own copy. The
    ``private`` pathway gets a new copy of the weights; the other keeps ``linear`` itself."""

    def __init__(self, linear: nn.Linear, router: Router, private: str = "visual") -> None:
        super().__init__()
        if private not in PATHWAYS:
            raise MoTError(f"unknown pathway {private!r}; choose text or visual")
        own = private_copy(linear)
        self.text = own if private == "text" else linear
        self.visual = own if private == "visual" else linear
        self.router = router

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        visual = self.router.visual
        if visual is None:
            raise MoTError("the MoT probe was run without a routing mask")
        routed = routed_positions()  # an expert's matrix reads only the tokens routed to it
        if routed is not None:
            positions, tokens = routed
            if visual.numel() != tokens:
                raise MoTError(f"routing mask of {visual.numel()} tokens does not fit an experts module that "
                               f"received {tokens}")
            visual = visual.reshape(-1)[positions.to(visual.device)]
        if visual.numel() != x[..., 0].numel():  # MoE blocks run their shared experts on the flattened tokens
            raise MoTError(f"routing mask of shape {tuple(visual.shape)} does not fit tokens {tuple(x.shape[:-1])}")
        if not visual.any():
            return self.text(x)
        if visual.all():
            return self.visual(x)
        flat = x.reshape(-1, x.shape[-1])
        route = visual.reshape(-1).to(x.device)
        out = flat.new_empty(flat.shape[0], self.text.out_features)
        out[~route] = self.text(flat[~route])
        out[route] = self.visual(flat[route])
        return out.reshape(*x.shape[:-1], self.text.out_features)


class MoTProbe:
    """A model converted in place into its MoT probe (see the module docstring). The ``private``
    pathway's linears are new copies; the other pathway's are the model's own."""

    def __init__(self, model: nn.Module, adapter: Adapter, replicate_o_proj: bool = False,
                 private: str = "visual") -> None:
        self.model = model
        self.adapter = adapter
        self.router = Router()
        self.replicate_o_proj = replicate_o_proj
        for layer in adapter.decoder_layers(model):
            for name in adapter.pathway_linears(replicate_o_proj, layer):
                parent_name, _, child = name.rpartition(".")
                parent = layer.get_submodule(parent_name)
                linear = getattr(parent, child)
                if isinstance(linear, RoutedLinear):
                    raise MoTError("this model is already an MoT probe")
                setattr(parent, child, RoutedLinear(linear, self.router, private))
        self._hook = model.register_forward_pre_hook(self._route_from_inputs, with_kwargs=True)

    def _route_from_inputs(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        input_ids = kwargs.get("input_ids", args[0] if args else None)
        if input_ids is None:
            raise MoTError("the MoT probe routes by input_ids; call it with input_ids, not inputs_embeds")
        self.router.visual = self.adapter.visual_mask(input_ids, self.model.config)

    @contextlib.contextmanager
    def routing(self, visual_mask: torch.Tensor) -> Iterator[None]:
        """Route one replayed sample (batch of one) by its visual mask."""
        previous = self.router.visual
        self.router.visual = visual_mask.reshape(1, -1)
        try:
            yield
        finally:
            self.router.visual = previous

    def sample_routing(self, sample: CapturedSample) -> contextlib.AbstractContextManager:
        """The routing context of a captured sample, for the pruning engine."""
        return self.routing(sample.visual_mask)

    def routed_linears(self, layer: nn.Module) -> dict[str, RoutedLinear]:
        """The replicated linears of one block, by name."""
        return {name: layer.get_submodule(name) for name in self.adapter.pathway_linears(self.replicate_o_proj, layer)}

    def pathway_targets(self, pathway: str) -> TargetFn:
        """Engine targets that prune one pathway's copies, observing the routed (shared) input.

        Statistics come from every selected position, whichever pathway those tokens take: the
        probe asks how a pathway's weights fare when calibrated on text, visual or mixed tokens.
        """
        if pathway not in PATHWAYS:
            raise MoTError(f"unknown pathway {pathway!r}; choose text or visual")

        def targets(block: int, layer: nn.Module) -> dict[str, Target]:
            routed = self.routed_linears(layer)
            keys = stats_keys(self.adapter, list(routed))
            return {name: Target(getattr(r, pathway), r, keys[name]) for name, r in routed.items()}

        return targets

    def remove_hook(self) -> None:
        """Detach the input-routing hook (the replicated linears stay)."""
        self._hook.remove()


def to_mot(model: nn.Module, adapter: Adapter, replicate_o_proj: bool = False, private: str = "visual") -> MoTProbe:
    """Convert ``model`` in place into its MoT probe; the ``private`` pathway's linears are new copies
    (prune that one when the model's own weights are shared with another model, see
    :func:`weight_sharing_copy`)."""
    return MoTProbe(model, adapter, replicate_o_proj, private)


def weight_sharing_copy(model: nn.Module) -> nn.Module:
    """A copy of ``model``'s modules whose parameters and buffers are new tensor objects over the same
    storage: moving or replacing a tensor of the copy leaves ``model`` alone, but writing into one in
    place writes into ``model``. An MoT probe of it whose pruned pathway is ``private`` costs only that
    pathway's linears, instead of a whole model copy besides."""
    memo: dict[int, object] = {}
    for tensor in [*model.parameters(), *model.buffers()]:
        if id(tensor) not in memo:
            memo[id(tensor)] = (nn.Parameter(tensor.data, requires_grad=tensor.requires_grad)
                                if isinstance(tensor, nn.Parameter) else tensor.detach())
    return copy.deepcopy(model, memo)


def prune_pathway(
    probe: MoTProbe,
    samples: list[CapturedSample],
    config: PruneConfig,
    pathway: str,
    **kwargs,
) -> PruneReport:
    """Prune one pathway of the probe with the sequential engine; the other pathway stays dense.

    Statistics come from ``config.tokens``; each block's propagation pass runs the partly pruned probe,
    so the next block sees the probe's own outputs.
    """
    return prune(
        probe.model,
        probe.adapter,
        samples,
        config,
        targets=probe.pathway_targets(pathway),
        sample_context=probe.sample_routing,
        **kwargs,
    )

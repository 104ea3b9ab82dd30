"""Mixture-of-experts blocks: each expert's matrices as linears of their own.

transformers stores a block's experts as fused 3-D parameters (``gate_up_proj`` of shape
(experts, out, in), ``down_proj``; ``is_transposed`` layouts hold (experts, in, out)) that one module
applies expert by expert to the tokens the router sent there. To prune every expert with statistics from
its own tokens, :func:`split_experts` gives each experts module a child ``per_expert`` holding, per fused
parameter, one :class:`ExpertLinear` per expert: a parameter-free view whose ``weight`` is that expert's
slice of the fused tensor, so pruning it prunes the model and the state dict does not change.

While an experts module runs, a :class:`torch.overrides.TorchFunctionMode` sends each product with an
expert's slice (``F.linear(x, W[e])`` or ``x @ W[e]``) through the module that stands in that slot (the
:class:`ExpertLinear`, or what the MoT probe put there), so forward hooks see each expert's input rows,
and :func:`routed_positions` says which token each row belongs to. The experts run as transformers'
``eager`` implementation (expert by expert) while this happens.
"""

from __future__ import annotations

import contextlib
import contextvars
import copy
import inspect

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

from probe.errors import ProbeError
from probe.models.base import LinearStandIn

FUSED_NAMES = ("gate_up_proj", "gate_proj", "up_proj", "down_proj")
CONTAINER = "per_expert"


class ExpertsError(ProbeError):
    """A mixture-of-experts module this toolkit cannot split into experts; the message says why."""


_POSITIONS: contextvars.ContextVar[tuple[torch.Tensor, int] | None] = contextvars.ContextVar(
    "expert_positions", default=None)


def routed_positions() -> tuple[torch.Tensor, int] | None:
    """While an expert's matrix runs: the token index of each of its input rows, and how many tokens the
    experts module received; None elsewhere."""
    return _POSITIONS.get()


def rows_by_position(rows: torch.Tensor) -> torch.Tensor:
    """``rows`` (one per input row of the module running now) as one row per token: an expert's rows go to
    the tokens routed to it, zeros elsewhere (they add nothing to sums of squares or of products). Rows of
    any other module are returned as they are."""
    current = routed_positions()
    if current is None:
        return rows
    positions, tokens = current
    full = rows.new_zeros(tokens, rows.shape[-1])
    full[positions.to(rows.device)] = rows
    return full


class ExpertLinear(LinearStandIn):
    """Expert ``index``'s matrix of a fused experts parameter, as a linear (``weight`` is (out, in)).
    It holds no parameter: its weight is a view of the fused tensor, read when asked."""

    def __init__(self, experts: nn.Module, fused: str, index: int, transposed: bool) -> None:
        super().__init__()
        self._owner = (experts,)  # in a tuple, so that the experts module is not registered as a child
        self.fused, self.index, self.transposed = fused, index, transposed
        shape = tuple(getattr(experts, fused).shape[1:])
        self.out_features, self.in_features = shape[::-1] if transposed else shape

    @property
    def weight(self) -> torch.Tensor:
        view = getattr(self._owner[0], self.fused).data[self.index]
        return view.T if self.transposed else view

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight)

    def extra_repr(self) -> str:
        return f"expert {self.index} of {self.fused}, in_features={self.in_features}, out_features={self.out_features}"


def private_copy(linear: nn.Module) -> nn.Linear:
    """A linear with its own copy of ``linear``'s weights (an :class:`ExpertLinear` becomes an ``nn.Linear``)."""
    if not isinstance(linear, ExpertLinear):
        return copy.deepcopy(linear)
    weight = linear.weight
    own = nn.Linear(linear.in_features, linear.out_features, bias=False, device=weight.device, dtype=weight.dtype)
    own.weight.data.copy_(weight)
    return own


def fused_parameters(experts: nn.Module) -> list[str]:
    """The names of an experts module's fused 3-D weights, in the order an expert applies them."""
    return [name for name in FUSED_NAMES if isinstance(getattr(experts, name, None), nn.Parameter)
            and getattr(experts, name).dim() == 3]


def experts_modules(layer: nn.Module) -> dict[str, nn.Module]:
    """The experts modules of a block by name (modules called ``experts``)."""
    return {name: module for name, module in layer.named_modules() if name.rsplit(".", 1)[-1] == "experts"}


def check_experts(model_type: str, index: int, name: str, experts: nn.Module) -> list[str]:
    """The fused parameter names of an experts module this toolkit can split, or an :class:`ExpertsError`."""
    where = f"{model_type}: block {index}'s {name} ({type(experts).__name__})"
    if isinstance(experts, nn.ModuleList):
        raise ExpertsError(f"{where} is a list of modules, not fused expert weights")
    fused = fused_parameters(experts)
    parameters = list(inspect.signature(experts.forward).parameters)
    if not fused or parameters[:2] != ["hidden_states", "top_k_index"]:
        raise ExpertsError(f"{where} applies its routing weights to its input and runs every expert as one "
                           "batched product; its experts cannot be told apart by the tokens routed to them")
    if getattr(experts, "_is_expert_parallel", False):
        raise ExpertsError(f"{where} is split across devices (expert parallel)")
    return fused


def split_experts(layer: nn.Module, model_type: str, index: int) -> None:
    """Give every experts module of ``layer`` its per-expert linears and the dispatch that runs them (see
    the module docstring); a block already split is left as it is."""
    for name, experts in experts_modules(layer).items():
        if hasattr(experts, CONTAINER):
            continue
        fused = check_experts(model_type, index, name, experts)
        transposed = bool(getattr(experts, "is_transposed", False))
        count = getattr(experts, fused[0]).shape[0]
        experts.add_module(CONTAINER, nn.ModuleDict({
            f: nn.ModuleList(ExpertLinear(experts, f, e, transposed) for e in range(count)) for f in fused}))
        dispatch = _Dispatch(experts, fused)
        experts.register_forward_pre_hook(dispatch.enter, with_kwargs=True)
        experts.register_forward_hook(dispatch.exit, always_call=True)


def expert_linear_names(layer: nn.Module) -> list[str]:
    """The names of a split block's expert linears in the order the experts run them (expert by expert)."""
    names = []
    for name, experts in experts_modules(layer).items():
        container = getattr(experts, CONTAINER, None)
        if container is None:
            continue
        count = len(next(iter(container.values())))
        names += [f"{name}.{CONTAINER}.{fused}.{e}" for e in range(count) for fused in container]
    return names


class _Dispatch(TorchFunctionMode):
    """Routes each product with one expert's slice to the module in that expert's slot (see the module
    docstring), while its experts module runs."""

    PRODUCTS = (F.linear, torch.matmul, torch.Tensor.__matmul__)

    def __init__(self, experts: nn.Module, fused: list[str]) -> None:
        super().__init__()
        self.experts, self.fused = experts, fused
        self.slots: dict[tuple[int, tuple[int, ...]], tuple[str, int]] = {}
        self.storage: tuple[tuple[torch.device, int], ...] = ()  # where the fused tensors were when found
        self.stack: list[tuple[contextlib.ExitStack, torch.Tensor, torch.Tensor]] = []

    def _find_slots(self) -> None:
        """Each expert's slice by its address and shape (again only when a fused tensor has moved)."""
        tensors = [getattr(self.experts, name) for name in self.fused]
        storage = tuple((t.device, t.data_ptr()) for t in tensors)
        if storage == self.storage:
            return
        self.slots = {}
        for name, tensor in zip(self.fused, tensors):
            shape = tuple(tensor.shape[1:])
            step = tensor.stride(0) * tensor.element_size()
            for e in range(tensor.shape[0]):
                self.slots[(tensor.data_ptr() + e * step, shape)] = (name, e)
        self.storage = storage

    def enter(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        hidden = kwargs.get("hidden_states", args[0] if args else None)
        top_k = kwargs.get("top_k_index", args[1] if len(args) > 1 else None)
        self._find_slots()
        stack = contextlib.ExitStack()
        config = getattr(self.experts, "config", None)
        if config is not None and getattr(config, "_experts_implementation", None) not in (None, "eager"):
            previous = config._experts_implementation
            config._experts_implementation = "eager"
            stack.callback(setattr, config, "_experts_implementation", previous)
        stack.enter_context(self)
        self.stack.append((stack, hidden.reshape(-1, hidden.shape[-1]), top_k.reshape(-1, top_k.shape[-1])))

    def exit(self, module: nn.Module, args: tuple, output: object) -> None:
        if self.stack:
            stack, _, _ = self.stack.pop()
            stack.close()

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in self.PRODUCTS and len(args) >= 2 and isinstance(args[1], torch.Tensor) and self.stack:
            weight = args[1]
            slot = self.slots.get((weight.data_ptr(), tuple(weight.shape)))
            if slot is not None:
                return self._run(slot, args[0])
        return func(*args, **kwargs)

    def _run(self, slot: tuple[str, int], x: torch.Tensor) -> torch.Tensor:
        name, expert = slot
        _, hidden, top_k = self.stack[-1]
        _, tokens = torch.where((top_k == expert).T)  # rows in the order the eager loop gathers them
        if name == self.fused[0] and (x.shape[0] != tokens.numel() or not torch.equal(x, hidden[tokens].to(x.dtype))):
            raise ExpertsError(f"{type(self.experts).__name__}: expert {expert} reads rows that are not the tokens "
                               "routed to it; its statistics cannot be gathered per expert")
        token = _POSITIONS.set((tokens, hidden.shape[0]))
        try:
            return getattr(self.experts, CONTAINER)[name][expert](x)
        finally:
            _POSITIONS.reset(token)

"""``probe check MODEL``: the family contract run on one model, one row per property.

The first command to run on a new LVLM: it says whether the toolkit can prune it, and if not, which
property fails. The rows:

- ``adapter``: the family's own adapter, or the generic one (structure found on the model);
- ``decoder``: the decoder blocks and the final norm;
- ``linears``: the prunable linears of a block and which of them read the same input;
- ``inputs``: a conversation with one image through the model's processor;
- ``visual positions``: the positions the config's image token ids mark are exactly where the model's
  own image features enter the sequence (block 0's input differs from the token embedding there);
- ``replay``: the blocks run one at a time from the captured inputs reproduce the model's own output of
  its final norm;
- ``prune``: Wanda at 50% on a copy reaches 50% in every prunable linear;
- ``MoT probe``: the dense probe computes the model's logits exactly;
- ``lmms-eval wrappers``: which of lmms-eval's stock wrappers load the model (information);
- ``token pruning``: which visual token pruning methods apply (information, never a failure).
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass

import torch
from PIL import Image

from probe.calibration.capture import capture, move, replay
from probe.errors import ProbeError
from probe.evaluation.stock_wrappers import describe as describe_wrappers
from probe.models.base import Adapter
from probe.models.experts import CONTAINER
from probe.models.generic import NoAttentionError
from probe.models.loading import LoadedModel

TOKEN_METHODS = ("fastv", "vitcop")


@dataclass(frozen=True)
class Property:
    """One row of a check: a property, whether it holds (None: information only) and what was seen."""

    name: str
    holds: bool | None
    detail: str


def check_image() -> Image.Image:
    """The check's image: a 64 x 64 colour gradient (every pixel differs from its neighbours)."""
    x = torch.linspace(0, 255, 64)
    pixels = torch.stack([x.expand(64, 64), x.expand(64, 64).T, 255 - x.expand(64, 64)], dim=-1)
    return Image.fromarray(pixels.to(torch.uint8).numpy())


def _tolerance(model: torch.nn.Module) -> float:
    """How far a replay may stray from the model's own output: float32 reorders nothing, so only kernel
    noise; half precision rounds every block."""
    return 1e-4 if next(model.parameters()).dtype == torch.float32 else 5e-2


@torch.no_grad()
def run_contract(loaded: LoadedModel, question: str = "Describe the image.") -> list[Property]:
    """Every property of the module docstring, in order; a failing property that later rows depend on ends
    the list there."""
    from probe.models.generic import GenericAdapter
    from probe.pruning.engine import PruneConfig, prune
    from probe.pruning.mot import to_mot, weight_sharing_copy
    from probe.token_pruning.base import make_pruner
    from probe.token_pruning.runtime import check_token_method

    model, adapter = loaded.model, loaded.adapter
    rows = [Property("adapter", None, "generic: structure found on the model" if isinstance(adapter, GenericAdapter)
                     else f"family adapter {type(adapter).__name__} ({type(adapter).__module__})")]
    layers = adapter.decoder_layers(model)
    norm = adapter.final_norm(model)
    rows.append(Property("decoder", True, f"{len(layers)} blocks of {type(layers[0]).__name__}, final norm "
                                          f"{type(norm).__name__}"))
    rows.append(Property("linears", True, describe_linears(adapter, layers)))
    text_only = getattr(adapter, "text_only", False)  # a causal language model: no image, no visual pathway
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
    try:
        inputs = adapter.build_inputs(loaded.processor, messages, [] if text_only else [check_image()])
    except Exception as exc:  # noqa: BLE001 (any processor failure is what this row reports)
        rows.append(Property("inputs", False, f"the processor failed: {type(exc).__name__}: {exc}"))
        return rows
    parameter = next(model.parameters())
    inputs = move(inputs, parameter.device, parameter.dtype)  # as the model runs on --device, in its dtype
    ids = inputs["input_ids"]
    rows.append(Property("inputs", True, f"{ids.shape[1]} tokens" + ("" if text_only else " with one image")))

    sample = capture(model, adapter, inputs, "check", store_device=parameter.device)
    embed = model.get_input_embeddings()
    entered = (sample.hidden[0] - embed(ids.clamp(max=embed.num_embeddings - 1).to(sample.hidden.device))[0])
    entered = entered.abs().amax(dim=-1) > 0
    marked = sample.visual_mask.to(entered.device)
    same = bool(marked.any()) and torch.equal(entered, marked)
    if text_only:
        rows.append(Property("visual positions", None, "a text-only language model: every token is text"))
    else:
        rows.append(Property("visual positions", same, f"{int(marked.sum())} marked by the config's image token "
                                                       f"ids, {int(entered.sum())} where image features entered"))

    seen: list[torch.Tensor] = []
    handle = norm.register_forward_hook(lambda module, args, out: seen.append(out))
    try:
        logits = model(**inputs, use_cache=False).logits
    finally:
        handle.remove()
    difference = float((replay(model, adapter, sample) - seen[-1]).abs().max())
    rows.append(Property("replay", difference <= _tolerance(model),
                         f"largest difference to the model's own last hidden state {difference:.1e}"))

    pruned = copy.deepcopy(model)
    report = prune(pruned, adapter, [sample], PruneConfig(method="wanda", sparsity=0.5), show_progress=False)
    worst = max(abs(s - 0.5) for s in report.sparsity.values())
    rows.append(Property("prune", worst < 0.01, f"Wanda 50%: {len(report.sparsity)} linears, every one within "
                                                f"{worst:.3f} of 50%"))
    del pruned

    probe = to_mot(weight_sharing_copy(model), adapter)
    mot_logits = probe.model(**inputs, use_cache=False).logits
    mot_difference = float((mot_logits - logits).abs().max())
    rows.append(Property("MoT probe", mot_difference <= _tolerance(model) * 10,
                         f"dense probe against the model's logits: largest difference {mot_difference:.1e}"))

    rows.append(Property("lmms-eval wrappers", None, describe_wrappers(model)))
    if text_only:
        rows.append(Property("token pruning", None, "none: a text-only language model has no visual tokens"))
        return rows
    applies, refused = [], []
    without = [i for i, layer in enumerate(layers) if not has_attention(adapter, layer)]
    for name in TOKEN_METHODS if not without else ():
        try:
            check_token_method(make_pruner(name), model.config.model_type, len(layers))
            applies.append(name)
        except ProbeError as exc:
            refused.append(f"{name} ({exc})")
    if without:
        refused.append(f"blocks {', '.join(map(str, without))} compute no attention probabilities")
    rows.append(Property("token pruning", None, f"applies: {', '.join(applies) or 'none'}"
                                                + (f"; refused: {'; '.join(refused)}" if refused else "")))
    return rows


def has_attention(adapter: Adapter, layer: torch.nn.Module) -> bool:
    """Whether ``layer`` computes attention probabilities (a hybrid stack's linear-attention blocks do not)."""
    try:
        adapter.attention_module(layer)
    except NoAttentionError:
        return False
    return True


def describe_linears(adapter: Adapter, layers: torch.nn.ModuleList) -> str:
    """The prunable linears of each kind of block, their shared inputs and the attention output."""
    kinds: dict[tuple[str, ...], list[int]] = {}
    for index, layer in enumerate(layers):
        kinds.setdefault(adapter.linear_names(layer), []).append(index)
    parts = []
    for names, blocks in kinds.items():
        layer = layers[blocks[0]]
        groups = "; ".join("(" + ", ".join(g) + ")" for g in adapter.shared_inputs if set(g) <= set(names))
        where = (f"blocks {blocks[0]}-{blocks[-1]}" if len(blocks) == len(layers) else
                 ("block " if len(blocks) == 1 else "blocks ") + ", ".join(map(str, blocks)))
        parts.append(f"{where}: {', '.join(_fold_experts(names))}; shared inputs {groups or 'none'}; attention output "
                     f"{adapter.output_name(layer)}")
    return " | ".join(parts)


def format_rows(rows: list[Property]) -> str:
    """The rows as an aligned plain-text table: property, ok / FAILED / info, detail."""
    width = max(len(r.name) for r in rows)
    marks = {True: "ok", False: "FAILED", None: "info"}
    return "\n".join(f"{r.name:<{width}}  {marks[r.holds]:<6}  {r.detail}" for r in rows)


def _fold_experts(names: tuple[str, ...]) -> list[str]:
    """Linear names with every expert's matrices written once: ``mlp.experts.per_expert.{gate_up_proj,
    down_proj}.0-127``."""
    folded: list[str] = []
    experts: dict[str, tuple[list[str], list[int]]] = {}
    for name in names:
        match = re.fullmatch(rf"(.*\.{CONTAINER}\.)(\w+)\.(\d+)", name)
        if match is None:
            folded.append(name)
            continue
        prefix, fused, index = match.groups()
        if prefix not in experts:
            experts[prefix] = ([], [])
            folded.append(prefix)
        kinds, indices = experts[prefix]
        if fused not in kinds:
            kinds.append(fused)
        indices.append(int(index))
    return [f"{n}{{{','.join(experts[n][0])}}}.{min(experts[n][1])}-{max(experts[n][1])}" if n in experts else n
            for n in folded]

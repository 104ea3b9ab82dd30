"""A low-noise proxy of what pruning costs: how far the pruned model's next-token distribution moves from
the dense model's on held-out conversations (:mod:`probe.data.heldout`), and how well it still predicts
their reference answers.

On each held-out conversation, on the tokens of its answer (everything after the prompt, each predicted
from the tokens before it):

- ``kl``: the KL divergence ``sum_v p_dense(v) (log p_dense(v) - log p_pruned(v))`` per token, in nats;
- ``nll``: the negative log-likelihood of the reference answer's tokens under the pruned model, in nats.

A sample's value is the mean over its answer tokens; a group's (``image``: answers that follow an image,
``text``: text-only conversations) is the mean over its samples, with the standard error over samples
(the samples are the units: tokens of one answer are not independent). The dense model's answer
distributions are computed once (:func:`dense_answers`) and compared with every pruned model's.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from probe.core.progress import progress_bar
from probe.data.calibration import to_messages, validate
from probe.data.samples import CalibrationError, ConversationSample
from probe.errors import ProbeError

GROUPS = ("image", "text")  # answers that follow an image; text-only conversations
PROXY_METRICS = ("kl", "nll")


class ProxyError(ProbeError):
    """Held-out conversations the proxy metric cannot be measured on."""


@dataclass
class ProxyItem:
    """A held-out conversation ready for the model: its inputs and where its answer's tokens are."""

    sample_id: str
    group: str  # image or text
    inputs: dict[str, Any]
    start: int  # the answer's first token position in input_ids
    end: int  # one past its last

    @property
    def targets(self) -> torch.Tensor:
        return self.inputs["input_ids"][0, self.start:self.end]


def token_kl(dense_logp: torch.Tensor, pruned_logp: torch.Tensor) -> torch.Tensor:
    """Per row (token), ``KL(dense || pruned)`` of two log-probability rows over the vocabulary."""
    return (dense_logp.exp() * (dense_logp - pruned_logp)).sum(dim=-1)


def token_nll(logp: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Per row (token), ``-log p(target)``."""
    return -logp.gather(-1, targets[:, None].to(logp.device))[:, 0]


def proxy_items(adapter: Any, processor: Any, image_samples: Sequence[ConversationSample],
                text_samples: Sequence[ConversationSample]) -> list[ProxyItem]:
    """Held-out conversations as model inputs; a conversation ends with the answer (one assistant turn),
    whose tokens are those after the prompt rendered with the generation prompt."""
    images = validate(image_samples)
    items = []
    groups = (("image", image_samples, images), ("text", text_samples, [None] * len(text_samples)))
    for group, samples, pictures in groups:
        for sample, image in zip(samples, pictures):
            messages = to_messages(sample)
            if len(messages) < 2 or messages[-1]["role"] != "assistant":
                raise CalibrationError(f"sample {sample.sample_id!r} does not end with an answer")
            shown = [image] if group == "image" else []
            full = adapter.build_inputs(processor, messages, shown)
            prompt = adapter.build_inputs(processor, messages[:-1], shown, add_generation_prompt=True)
            start, end = int(prompt["input_ids"].shape[1]), int(full["input_ids"].shape[1])
            if end <= start or not torch.equal(full["input_ids"][0, :start], prompt["input_ids"][0]):
                raise ProxyError(f"sample {sample.sample_id!r}: its prompt is not the start of the whole "
                                 "conversation once rendered, so its answer's tokens cannot be told apart")
            items.append(ProxyItem(sample.sample_id, group, full, start, end))
    return items


@torch.no_grad()
def answer_log_probs(model: nn.Module, item: ProxyItem) -> torch.Tensor:
    """The model's next-token log-probabilities at the answer's tokens: (answer tokens, vocabulary), float32
    on the CPU."""
    device = next(model.parameters()).device
    inputs = {k: v.to(device) if torch.is_tensor(v) else v for k, v in item.inputs.items()}
    logits = model(**inputs, use_cache=False).logits[0, item.start - 1:item.end - 1]
    return logits.float().log_softmax(dim=-1).cpu()


def dense_answers(model: nn.Module, items: Sequence[ProxyItem], show_progress: bool = True) -> list[torch.Tensor]:
    """The dense model's :func:`answer_log_probs` of every item, kept to compare pruned models with."""
    out = []
    with progress_bar("proxy: dense answers", len(items), show_progress) as bar:
        for item in items:
            out.append(answer_log_probs(model, item))
            bar.advance()
    return out


def proxy_scores(model: nn.Module, items: Sequence[ProxyItem], dense: Sequence[torch.Tensor],
                 show_progress: bool = True) -> pd.DataFrame:
    """Per held-out sample: its group, answer tokens, mean ``kl`` against ``dense`` and mean ``nll``."""
    rows = []
    with progress_bar("proxy", len(items), show_progress) as bar:
        for item, reference in zip(items, dense):
            rows.append(_sample_row(item, reference, answer_log_probs(model, item)))
            bar.advance()
    return pd.DataFrame(rows)


def dense_proxy_scores(items: Sequence[ProxyItem], dense: Sequence[torch.Tensor]) -> pd.DataFrame:
    """:func:`proxy_scores` of the dense model itself, from its kept answers (no forward pass): a KL of 0
    and the reference answers' NLL."""
    return pd.DataFrame([_sample_row(item, reference, reference) for item, reference in zip(items, dense)])


def _sample_row(item: ProxyItem, reference: torch.Tensor, logp: torch.Tensor) -> dict:
    return {"sample_id": item.sample_id, "group": item.group, "tokens": item.end - item.start,
            "kl": float(token_kl(reference, logp).mean()), "nll": float(token_nll(logp, item.targets).mean())}


def summarize(per_sample: pd.DataFrame) -> pd.DataFrame:
    """Per group and metric: the mean over samples, its standard error, the samples and answer tokens."""
    rows = []
    for group in GROUPS:
        chosen = per_sample[per_sample.group == group]
        if chosen.empty:
            continue
        for metric in PROXY_METRICS:
            values = chosen[metric].to_numpy(dtype=float)
            error = float(values.std(ddof=1) / np.sqrt(len(values))) if len(values) > 1 else float("nan")
            rows.append({"group": group, "metric": metric, "value": float(values.mean()), "stderr": error,
                         "samples": len(values), "tokens": int(chosen.tokens.sum())})
    return pd.DataFrame(rows)

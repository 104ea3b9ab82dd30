"""Scoring on the offline tasks, in memory, for any model an adapter supports.

Visual tasks: greedy generation, first line of the answer, case-insensitive exact match (a letter for
multiple choice). ``quote_completion``: the ending with the highest summed log-likelihood wins.
"""

from __future__ import annotations

import contextlib
import re
from dataclasses import dataclass

import torch

from probe.data.offline import (
    CompletionItem,
    VQAItem,
    available_tasks,
    fortunes_available,
    quote_completion,
    task_items,
)
from probe.models.base import Adapter
from probe.progress import progress_bar
from probe.vision_cache import VisionFeatureCache

TEXT_TASKS = ("quote_completion",)


def offline_tasks() -> list[str]:
    """Every offline task (visual and text) that can be built on this machine."""
    return available_tasks() + ([*TEXT_TASKS] if fortunes_available() else [])


class UnknownTaskError(ValueError):
    """A task name that is not known or not available here."""


def resolve_tasks(spec: str) -> list[str]:
    """``offline`` (every offline task available here) or a comma-separated list of task names."""
    available = offline_tasks()
    tasks = available if spec == "offline" else [t.strip() for t in spec.split(",") if t.strip()]
    unknown = [t for t in tasks if t not in available]
    if unknown or not tasks:
        raise UnknownTaskError(
            f"unknown or unavailable task(s) {', '.join(unknown) or spec!r}; available: {', '.join(available)}"
        )
    return tasks


@dataclass
class TaskScore:
    """One task's accuracy."""

    task: str
    metric: str
    score: float
    n: int


def normalize_answer(text: str) -> str:
    """First line, without surrounding whitespace, quotes or a final full stop; lower case."""
    line = text.strip().splitlines()[0] if text.strip() else ""
    return line.strip().strip("\"'").rstrip(".").strip().lower()


def is_correct(prediction: str, item: VQAItem) -> bool:
    """Exact match after normalisation; for lettered choices, the leading letter."""
    answer = normalize_answer(prediction)
    if item.choices:
        match = re.match(r"\(?([a-d])\b", answer)
        return bool(match) and match.group(1) == item.answer.lower()
    return answer == item.answer.lower()


@torch.no_grad()
def generate_answer(model, adapter: Adapter, processor, item: VQAItem, max_new_tokens: int = 12) -> str:  # noqa: ANN001
    """Greedy answer of ``model`` to one visual question."""
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": item.question}]}]
    inputs = adapter.build_inputs(processor, messages, [item.image()], add_generation_prompt=True)
    device = next(model.parameters()).device
    inputs = {k: v.to(device) for k, v in inputs.items()}
    out = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
    return processor.tokenizer.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True)


@torch.no_grad()
def ending_loglikelihoods(model, tokenizer, item: CompletionItem) -> list[float]:  # noqa: ANN001
    """Summed log-probability of each ending given the prefix (plain text, no chat template)."""
    device = next(model.parameters()).device
    prefix_ids = tokenizer(item.prefix, add_special_tokens=False)["input_ids"]
    scores = []
    for ending in item.endings:
        ids = tokenizer(item.prefix + ending, add_special_tokens=False)["input_ids"]
        start = len(prefix_ids) if ids[: len(prefix_ids)] == prefix_ids else len(prefix_ids) - 1
        logits = model(input_ids=torch.tensor([ids], device=device)).logits[0].float()
        logprobs = torch.log_softmax(logits[start - 1 : len(ids) - 1], dim=-1)
        targets = torch.tensor(ids[start:], device=device)
        scores.append(float(logprobs.gather(1, targets[:, None]).sum()))
    return scores


def evaluate_task(
    model,  # noqa: ANN001
    adapter: Adapter,
    processor,  # noqa: ANN001
    task: str,
    limit: int | None = None,
    show_progress: bool = True,
    vision_cache: VisionFeatureCache | None = None,
) -> TaskScore:
    """Accuracy of ``model`` on the test split of one offline task.

    A ``vision_cache`` shared by models with the same vision side computes each image's features once.
    """
    with vision_cache.attached(model) if vision_cache is not None else contextlib.nullcontext():
        return _evaluate(model, adapter, processor, task, limit, show_progress)


def _evaluate(model, adapter: Adapter, processor, task: str, limit: int | None, show_progress: bool) -> TaskScore:  # noqa: ANN001
    if task in TEXT_TASKS:
        items = quote_completion()[:limit]
        correct = 0
        with progress_bar(task, len(items), show_progress) as bar:
            for item in items:
                scores = ending_loglikelihoods(model, processor.tokenizer, item)
                correct += int(max(range(len(scores)), key=scores.__getitem__) == item.answer)
                bar.advance()
        return TaskScore(task, "accuracy", correct / len(items), len(items))
    items = task_items(task, "test")[:limit]
    correct = 0
    with progress_bar(task, len(items), show_progress) as bar:
        for item in items:
            correct += int(is_correct(generate_answer(model, adapter, processor, item), item))
            bar.advance()
    return TaskScore(task, "exact_match", correct / len(items), len(items))

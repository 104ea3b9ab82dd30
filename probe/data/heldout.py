"""Held-out samples of the proxy metric (:mod:`probe.evaluation.divergence`), disjoint from every
calibration draw and from every task's test items:

- image-text (:func:`heldout_image_samples`): conversations of the calibration source that calibration
  cannot take (bundled: Fashion-MNIST training photographs outside the pool) or that none of the given
  draws took (a ``json`` or ``hf`` source, whose pool calibration draws from);
- text-only (:func:`heldout_text_samples`): paragraphs of the dataset descriptions scikit-learn ships, each
  cut in two: the user gives the first half and asks for the rest, the answer is the second half.
"""

from __future__ import annotations

import random
import re
from collections.abc import Collection
from importlib import resources

from probe.data.calibration import CalibrationSpec, load_samples
from probe.data.samples import CalibrationError, ConversationSample

MIN_WORDS = 30  # a text sample's paragraph, so that both halves say something
TEXT_PROMPT = "Continue this passage:"


def heldout_image_samples(spec: CalibrationSpec, n: int, seed: int = 0, exclude: Collection[str] = ()
                          ) -> list[ConversationSample]:
    """``n`` image-text conversations that no calibration draw of ``spec``'s source took (``exclude``: the
    sample ids of the draws, for a source calibration draws from), drawn with ``seed``."""
    if spec.source == "bundled":
        from probe.data.bundled import heldout_fashion_samples

        chosen = heldout_fashion_samples(n, seed)
        if not chosen:
            raise CalibrationError("the bundled source's held-out photographs are Fashion-MNIST's: install Debian's "
                                   "dataset-fashion-mnist package")
        return chosen
    excluded = set(exclude)
    pool = [s for s in load_samples(spec) if s.sample_id not in excluded]
    if len(pool) < n:
        raise CalibrationError(f"asked for {n} held-out samples but {spec.path} has only {len(pool)} that no "
                               "calibration draw took")
    return random.Random(seed).sample(pool, n)


def text_paragraphs() -> list[tuple[str, str]]:
    """(id, paragraph) of every prose paragraph of at least :data:`MIN_WORDS` words in scikit-learn's
    dataset descriptions, whitespace normalised (tables, lists and directives left out)."""
    folder = resources.files("sklearn.datasets") / "descr"
    paragraphs = []
    for entry in sorted(folder.iterdir(), key=lambda e: e.name):
        if not entry.name.endswith(".rst"):
            continue
        for k, block in enumerate(re.split(r"\n\s*\n", entry.read_text(encoding="utf-8"))):
            words = block.split()
            if (len(words) >= MIN_WORDS and not block.lstrip().startswith(("..", ":", "*", "-"))
                    and not any(mark in block for mark in "=|+")):
                paragraphs.append((f"{entry.name.removesuffix('.rst')}/{k}", " ".join(words)))
    return paragraphs


def heldout_text_samples(n: int, seed: int = 0) -> list[ConversationSample]:
    """``n`` text-only conversations (:func:`text_paragraphs` cut in two), drawn with ``seed``."""
    paragraphs = text_paragraphs()
    if len(paragraphs) < n:
        raise CalibrationError(f"asked for {n} held-out text samples but there are {len(paragraphs)} paragraphs")
    samples = []
    for pid, text in random.Random(seed).sample(paragraphs, n):
        words = text.split()
        cut = len(words) // 2
        samples.append(ConversationSample(
            sample_id=f"text/{pid}",
            conversations=[{"from": "human", "value": f"{TEXT_PROMPT}\n{' '.join(words[:cut])}"},
                           {"from": "gpt", "value": " ".join(words[cut:])}],
            image_loader=None, source="sklearn-descr"))
    return samples

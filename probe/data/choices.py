"""Balanced, disjoint, seeded splits and multiple-choice questions, shared by the offline task builders.

A split is drawn per class from one seeded shuffle of that class's keys (sorted first, so the draw does
not depend on the order a folder lists its files in): every split holds the same number of items of
each class, and no key is in two splits.
"""

from __future__ import annotations

import random
from collections.abc import Hashable, Mapping, Sequence
from typing import TypeVar

from probe.errors import ProbeError

Key = TypeVar("Key", bound=Hashable)


class SplitError(ProbeError):
    """A split that cannot be drawn (a class with too few items, an unknown split name)."""


def balanced_splits(
    classes: Mapping[str, Sequence[Key]], per_class: Mapping[str, int], seed: int = 0
) -> dict[str, list[tuple[str, Key]]]:
    """``{split: [(class, key), ...]}`` with ``per_class[split]`` keys of every class in each split,
    the splits disjoint, the draw fixed by ``seed``; within a split, classes are interleaved."""
    needed = sum(per_class.values())
    short = {name: len(keys) for name, keys in classes.items() if len(set(keys)) < needed}
    if short:
        listed = ", ".join(f"{name} ({count})" for name, count in sorted(short.items()))
        raise SplitError(f"each class needs {needed} distinct items for the splits {dict(per_class)}; "
                         f"too few: {listed}")
    drawn: dict[str, list[list[tuple[str, Key]]]] = {split: [] for split in per_class}
    for name in sorted(classes):
        keys = sorted(set(classes[name]), key=repr)
        random.Random(f"{seed}/{name}").shuffle(keys)
        start = 0
        for split, count in per_class.items():
            drawn[split].append([(name, key) for key in keys[start : start + count]])
            start += count
    # interleave: item k of every class before item k + 1 of any class
    return {split: [pair for row in zip(*columns) for pair in row] for split, columns in drawn.items()}


def options_with_answer(
    answer: str, pool: Sequence[str], n_options: int, position: int, rng: random.Random
) -> list[str]:
    """``n_options`` distinct options: ``answer`` at ``position`` and distractors drawn from ``pool``."""
    others = sorted({p for p in pool if p != answer})
    if len(others) < n_options - 1:
        raise SplitError(f"{n_options} options need {n_options - 1} distractors; the pool has {len(others)}")
    options = rng.sample(others, n_options - 1)
    options.insert(position % n_options, answer)
    return options


def choice_question(prompt: str, options: Sequence[str]) -> str:
    """The question with its options listed, one per line; the answer is the option's text."""
    return prompt + "\nOptions:\n" + "\n".join(f"- {option}" for option in options) + "\nAnswer with the option."

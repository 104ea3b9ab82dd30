"""Uncertainty of scores and retentions (pure functions over per-item scores).

- :func:`standard_error`: of a task score, the mean of its items' scores: ``std(ddof=1) / sqrt(n)``;
- :func:`bootstrap_retention`: a percentile bootstrap interval of a pruned model's average retention,
  resampling items within each task, the same items for the pruned and the dense model (paired);
- :func:`paired_difference`: the same for the difference in average retention between two methods
  scored on the same items (e.g. each method against Wanda in Table 2);
- :func:`paired_score_differences`: per task, the difference in score between two runs on the same
  items (percentage points), with a paired bootstrap interval.

Items are given per task as arrays aligned by item (``{task: scores}``); a resample in which a dense
task score is 0 has no retention and is left out (the share left out is returned).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from probe.errors import ProbeError

Items = dict[str, np.ndarray]


class ItemsError(ProbeError):
    """Per-item scores that cannot be compared (another number of items)."""


def standard_error(values: np.ndarray) -> float:
    """Standard error of the mean of ``values`` (NaN for fewer than two)."""
    values = np.asarray(values, dtype=float)
    if len(values) < 2:
        return float("nan")
    return float(values.std(ddof=1) / np.sqrt(len(values)))


@dataclass(frozen=True)
class Interval:
    """A point estimate with a percentile bootstrap interval."""

    estimate: float
    low: float
    high: float
    dropped: float = 0.0  # share of resamples without a value (a dense score of 0)

    @property
    def excludes_zero(self) -> bool:
        return bool(self.low > 0 or self.high < 0)


def _resampled_means(items: Items, tasks: list[str], indices: dict[str, np.ndarray]) -> np.ndarray:
    """(boots, tasks) means of each task's resampled items."""
    return np.stack([np.asarray(items[t], dtype=float)[indices[t]].mean(axis=1) for t in tasks], axis=1)


def _draws(dense: Items, tasks: list[str], boots: int, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {t: rng.integers(0, len(dense[t]), size=(boots, len(dense[t]))) for t in tasks}


def _retention(pruned: np.ndarray, dense: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        ratios = np.where(dense > 0, pruned / np.where(dense > 0, dense, 1.0), np.nan)
    return 100.0 * ratios.mean(axis=-1)


def _check(dense: Items, *others: Items) -> list[str]:
    tasks = sorted(dense)
    for other in others:
        for t in tasks:
            if len(np.asarray(other[t])) != len(np.asarray(dense[t])):
                raise ItemsError(f"task {t!r}: {len(other[t])} items against {len(dense[t])} dense ones; "
                                   "intervals need the same items")
    return tasks


def _interval(estimate: float, samples: np.ndarray, level: float) -> Interval:
    kept = samples[~np.isnan(samples)]
    if not len(kept):
        return Interval(estimate, float("nan"), float("nan"), 1.0)
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(kept, [tail, 100 - tail])
    return Interval(estimate, float(low), float(high), 1 - len(kept) / len(samples))


def bootstrap_retention(pruned: Items, dense: Items, boots: int = 2000, seed: int = 0, level: float = 0.95
                        ) -> Interval:
    """Average retention (%) of ``pruned`` against ``dense`` with a paired percentile bootstrap interval."""
    tasks = _check(dense, pruned)
    point = _retention(np.array([np.mean(pruned[t]) for t in tasks]), np.array([np.mean(dense[t]) for t in tasks]))
    indices = _draws(dense, tasks, boots, seed)
    samples = _retention(_resampled_means(pruned, tasks, indices), _resampled_means(dense, tasks, indices))
    return _interval(float(point), samples, level)


def paired_difference(method: Items, baseline: Items, dense: Items, boots: int = 2000, seed: int = 0,
                      level: float = 0.95) -> Interval:
    """Average retention of ``method`` minus that of ``baseline`` (percentage points), all three scored on
    the same items, with a paired percentile bootstrap interval (the same resampled items for all)."""
    tasks = _check(dense, method, baseline)
    dense_means = np.array([np.mean(dense[t]) for t in tasks])
    point = (_retention(np.array([np.mean(method[t]) for t in tasks]), dense_means)
             - _retention(np.array([np.mean(baseline[t]) for t in tasks]), dense_means))
    indices = _draws(dense, tasks, boots, seed)
    resampled_dense = _resampled_means(dense, tasks, indices)
    samples = (_retention(_resampled_means(method, tasks, indices), resampled_dense)
               - _retention(_resampled_means(baseline, tasks, indices), resampled_dense))
    return _interval(float(point), samples, level)


def paired_score_differences(run: Items, baseline: Items, boots: int = 2000, seed: int = 0,
                             level: float = 0.95) -> dict[str, Interval]:
    """Per task, the score of ``run`` minus that of ``baseline`` (percentage points), both scored on the same
    items, with a paired percentile bootstrap interval (the same resampled items for both)."""
    tasks = _check(baseline, run)
    indices = _draws(baseline, tasks, boots, seed)
    samples = 100 * (_resampled_means(run, tasks, indices) - _resampled_means(baseline, tasks, indices))
    return {t: _interval(float(100 * (np.mean(run[t]) - np.mean(baseline[t]))), samples[:, i], level)
            for i, t in enumerate(tasks)}


def delta_retention(scores: np.ndarray, errors: np.ndarray, dense: np.ndarray, dense_errors: np.ndarray,
                    z: float = 1.96) -> Interval:
    """Average retention (%) over tasks with an approximate interval from per-task scores and standard
    errors only (no items): the delta method for each ratio, ``var(p/d) ~ (p/d)^2 (se_p^2/p^2 + se_d^2/d^2)``,
    with the two runs' errors treated as independent. Runs on the same items are positively correlated,
    so the interval is wider than a paired bootstrap's (conservative)."""
    scores, errors, dense, dense_errors = (np.asarray(v, dtype=float) for v in (scores, errors, dense, dense_errors))
    if (dense <= 0).any():
        return Interval(float("nan"), float("nan"), float("nan"), 1.0)
    ratios = scores / dense
    # written without dividing by p, so a task score of 0 keeps a finite error
    variances = (errors / dense) ** 2 + (scores * dense_errors / dense**2) ** 2
    estimate = 100.0 * ratios.mean()
    spread = 100.0 * z * np.sqrt(variances.sum()) / len(ratios)
    return Interval(float(estimate), float(estimate - spread), float(estimate + spread))

"""Uncertainty of scores and retentions (pure functions over per-item scores).

- :func:`standard_error`: of a task score, the mean of its items' scores: ``std(ddof=1) / sqrt(n)``;
- :func:`bootstrap_retention`: a percentile bootstrap interval of a pruned model's average retention,
  resampling items within each task, the same items for the pruned and the dense model (paired);
- :func:`paired_difference`: the same for the difference in average retention between two methods
  scored on the same items (e.g. each method against Wanda in Table 2);
- :func:`paired_score_differences`: per task, the difference in score between two runs on the same
  items (percentage points), with a paired bootstrap interval;
- each of them also for a pruned run of several calibration draws (a list of per-item scores, one per
  draw): the mean over draws, with a two-level bootstrap (draws, then items within task, paired);
  :func:`draw_retentions` gives each draw's own retention, the spread between draws.

Differences carry an exact paired p-value (:mod:`probe.evaluation.significance`): McNemar per task on 0/1 scores, a
sign flip otherwise and on average retention.

Items are given per task as arrays aligned by item (``{task: scores}``); a resample in which a dense
task score is 0 has no retention and is left out (the share left out is returned).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from probe.errors import ProbeError

Items = dict[str, np.ndarray]
BOOTS = 10_000  # bootstrap resamples (and random sign patterns of a test) by default


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
    p: float = float("nan")  # a difference's two-sided exact paired p-value (unadjusted)

    @property
    def excludes_zero(self) -> bool:
        return bool(self.low > 0 or self.high < 0)


Runs = Items | list[Items]  # one run, or one run per calibration draw (aligned by draw)


def _as_draws(runs: Runs) -> list[Items]:
    return list(runs) if isinstance(runs, list) else [runs]


def _resampled_means(items: Items, tasks: list[str], indices: dict[str, np.ndarray]) -> np.ndarray:
    """(boots, tasks) means of each task's resampled items."""
    return np.stack([np.asarray(items[t], dtype=float)[indices[t]].mean(axis=1) for t in tasks], axis=1)


def _resampled_draw_means(runs: list[Items], tasks: list[str], indices: dict[str, np.ndarray],
                          chosen: np.ndarray | None) -> np.ndarray:
    """(boots, tasks) means over the resampled draws (``chosen``: boots x draws indices) of each draw's
    resampled item means; a run of one draw is that draw's."""
    if len(runs) == 1:
        return _resampled_means(runs[0], tasks, indices)
    per_draw = np.stack([_resampled_means(run, tasks, indices) for run in runs])  # draws, boots, tasks
    return per_draw[chosen, np.arange(chosen.shape[0])[:, None]].mean(axis=1)


def _resample(dense: Items, tasks: list[str], boots: int, seed: int, draws: int = 1
              ) -> tuple[np.ndarray | None, dict[str, np.ndarray]]:
    """The resampled draws (boots x ``draws`` indices, drawn first; None for one draw) and per task the
    resampled items (boots x items), from one generator seeded with ``seed``."""
    rng = np.random.default_rng(seed)
    chosen = rng.integers(0, draws, size=(boots, draws)) if draws > 1 else None
    return chosen, {t: rng.integers(0, len(dense[t]), size=(boots, len(dense[t]))) for t in tasks}


def _task_means(runs: list[Items], tasks: list[str]) -> np.ndarray:
    """Per task, the mean over draws of each draw's mean score."""
    return np.array([np.mean([np.mean(run[t]) for run in runs]) for t in tasks])


def _mean_items(runs: list[Items], tasks: list[str]) -> Items:
    """Per item, the mean of the draws' scores."""
    return {t: np.mean([np.asarray(run[t], dtype=float) for run in runs], axis=0) for t in tasks}


def _retention(pruned: np.ndarray, dense: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        ratios = np.where(dense > 0, pruned / np.where(dense > 0, dense, 1.0), np.nan)
    return 100.0 * ratios.mean(axis=-1)


def _check(dense: Items, *others: Runs) -> tuple[list[str], int]:
    """The tasks (sorted) and the number of draws, after checking that every run scores the dense items
    and that runs of several draws have as many."""
    tasks = sorted(dense)
    counts = {len(_as_draws(other)) for other in others} - {1}
    if len(counts) > 1:
        raise ItemsError(f"runs of {' and '.join(map(str, sorted(counts)))} calibration draws cannot be paired "
                         "draw by draw")
    for other in others:
        for run in _as_draws(other):
            for t in tasks:
                if len(np.asarray(run[t])) != len(np.asarray(dense[t])):
                    raise ItemsError(f"task {t!r}: {len(run[t])} items against {len(dense[t])} dense ones; "
                                     "intervals need the same items")
    return tasks, max(counts, default=1)


def _interval(estimate: float, samples: np.ndarray, level: float, p: float = float("nan")) -> Interval:
    kept = samples[~np.isnan(samples)]
    if not len(kept):
        return Interval(estimate, float("nan"), float("nan"), 1.0, p)
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(kept, [tail, 100 - tail])
    return Interval(estimate, float(low), float(high), 1 - len(kept) / len(samples), p)


def bootstrap_retention(pruned: Runs, dense: Items, boots: int = BOOTS, seed: int = 0, level: float = 0.95
                        ) -> Interval:
    """Average retention (%) of ``pruned`` against ``dense`` with a paired percentile bootstrap interval;
    for a run of several calibration draws, the retention of their mean with a two-level bootstrap (draws,
    then the same items for every draw and the dense run)."""
    tasks, draws = _check(dense, pruned)
    runs = _as_draws(pruned)
    point = _retention(_task_means(runs, tasks), np.array([np.mean(dense[t]) for t in tasks]))
    chosen, indices = _resample(dense, tasks, boots, seed, draws)
    samples = _retention(_resampled_draw_means(runs, tasks, indices, chosen), _resampled_means(dense, tasks, indices))
    return _interval(float(point), samples, level)


def paired_difference(method: Runs, baseline: Runs, dense: Items, boots: int = BOOTS, seed: int = 0,
                      level: float = 0.95, against_dense: bool = False) -> Interval:
    """Average retention of ``method`` minus that of ``baseline`` (percentage points), all three scored on
    the same items, with a paired percentile bootstrap interval (the same resampled items for all; with
    calibration draws, the same resampled draws for both runs, paired by draw) and the exact paired
    p-value of :func:`probe.evaluation.significance.retention_test` on the draws' mean answers. With
    ``against_dense``, ``baseline`` is the dense run itself (a pruned run against the dense model), which the
    test's weights must know."""
    from probe.evaluation.significance import retention_test

    tasks, draws = _check(dense, method, baseline)
    ours, theirs = _as_draws(method), _as_draws(baseline)
    dense_means = np.array([np.mean(dense[t]) for t in tasks])
    point = _retention(_task_means(ours, tasks), dense_means) - _retention(_task_means(theirs, tasks), dense_means)
    chosen, indices = _resample(dense, tasks, boots, seed, draws)
    resampled_dense = _resampled_means(dense, tasks, indices)
    samples = (_retention(_resampled_draw_means(ours, tasks, indices, chosen), resampled_dense)
               - _retention(_resampled_draw_means(theirs, tasks, indices, chosen), resampled_dense))
    p = retention_test(_mean_items(ours, tasks), _mean_items(theirs, tasks), dense, against_dense=against_dense,
                       resamples=boots, seed=seed)
    return _interval(float(point), samples, level, p)


def paired_score_differences(run: Runs, baseline: Runs, boots: int = BOOTS, seed: int = 0,
                             level: float = 0.95) -> dict[str, Interval]:
    """Per task, the score of ``run`` minus that of ``baseline`` (percentage points), both scored on the same
    items, with a paired percentile bootstrap interval (the same resampled items, and draws, for both) and
    the exact paired p-value of :func:`probe.evaluation.significance.paired_test` on the draws' mean answers."""
    from probe.evaluation.significance import paired_test

    reference = _as_draws(baseline)[0]
    tasks, draws = _check(reference, run, baseline)
    ours, theirs = _as_draws(run), _as_draws(baseline)
    chosen, indices = _resample(reference, tasks, boots, seed, draws)
    samples = 100 * (_resampled_draw_means(ours, tasks, indices, chosen)
                     - _resampled_draw_means(theirs, tasks, indices, chosen))
    points = 100 * (_task_means(ours, tasks) - _task_means(theirs, tasks))
    mine, other = _mean_items(ours, tasks), _mean_items(theirs, tasks)
    return {t: _interval(float(points[i]), samples[:, i], level, paired_test(mine[t], other[t], boots, seed))
            for i, t in enumerate(tasks)}


def draw_retentions(pruned: list[Items], dense: Items) -> list[float]:
    """Each calibration draw's own average retention (%): the spread between draws."""
    tasks, _ = _check(dense, pruned)
    dense_means = np.array([np.mean(dense[t]) for t in tasks])
    return [float(_retention(_task_means([run], tasks), dense_means)) for run in pruned]


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

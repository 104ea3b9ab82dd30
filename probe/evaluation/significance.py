"""Exact paired tests and multiple-comparison adjustment (pure functions over per-item scores).

- :func:`mcnemar`: the exact McNemar test of two runs' paired 0/1 scores: a two-sided binomial test of
  the discordant items (one run right, the other wrong) against an even split;
- :func:`sign_flip`: a sign-flip permutation test of a weighted sum of paired differences, over every
  sign pattern when at most :data:`EXACT_LIMIT` differences are non-zero, else over random ones;
- :func:`paired_test`: a task's two runs on the same items: McNemar for 0/1 scores, else a sign flip of the
  mean difference (scores such as the mean of several calibration draws' answers);
- :func:`retention_test`: the difference in average retention between two runs, as a sign flip whose
  weights cannot change under the null hypothesis;
- :func:`adjust`: p-values of one family of comparisons adjusted by Holm (family-wise error) or
  Benjamini-Hochberg (false discovery rate).

Every test is two-sided; a p-value is NaN where the statistic is undefined (a task score of 0 in a
retention's denominator).
"""

from __future__ import annotations

from fractions import Fraction
from math import comb

import numpy as np

from probe.errors import ProbeError

EXACT_LIMIT = 16  # a sign flip over at most this many non-zero differences enumerates all 2**k patterns
RESAMPLES = 10_000  # random sign patterns beyond it
ADJUSTMENTS = ("holm", "bh", "none")
_CHUNK = 1_000  # random sign patterns drawn at a time (bounded memory on large tasks)


class SignificanceError(ProbeError):
    """Scores that a test cannot take, or an unknown adjustment."""


def mcnemar(run: np.ndarray, baseline: np.ndarray) -> float:
    """Exact two-sided McNemar p-value of paired 0/1 scores: with ``b`` items only ``run`` answers right and
    ``c`` only ``baseline`` does, ``min(1, 2 P(X <= min(b, c)))`` for ``X ~ Binomial(b + c, 1/2)``; 1 when
    no item differs."""
    run, baseline = _paired(run, baseline)
    if not (np.isin(run, (0, 1)).all() and np.isin(baseline, (0, 1)).all()):
        raise SignificanceError("McNemar's test needs 0/1 scores; use a sign flip for other scores")
    b = int(((run == 1) & (baseline == 0)).sum())
    c = int(((run == 0) & (baseline == 1)).sum())
    discordant = b + c
    if discordant == 0:
        return 1.0
    tail = Fraction(sum(comb(discordant, i) for i in range(min(b, c) + 1)), 2**discordant)
    return float(min(Fraction(1), 2 * tail))


def sign_flip(differences: np.ndarray, weights: np.ndarray | None = None, resamples: int = RESAMPLES,
              seed: int = 0) -> float:
    """Two-sided p-value of ``t = sum(weights * differences)`` under the null hypothesis that each paired
    difference's sign is a fair coin: the share of sign patterns ``s`` with ``|sum(s * w * d)| >= |t|``.
    All ``2**k`` patterns when ``k <= EXACT_LIMIT`` terms are non-zero (exact); else ``resamples`` random
    patterns from ``seed``, counted as ``(1 + hits) / (1 + resamples)`` (never 0)."""
    terms = np.asarray(differences, dtype=float) * (1.0 if weights is None else np.asarray(weights, dtype=float))
    if np.isnan(terms).any():
        return float("nan")
    terms = terms[terms != 0]
    if not len(terms):
        return 1.0
    observed = abs(terms.sum())
    threshold = observed - 1e-9 * np.abs(terms).sum()  # sums of the same terms in another order tie
    if len(terms) <= EXACT_LIMIT:
        patterns = np.arange(2 ** len(terms))[:, None] >> np.arange(len(terms)) & 1
        sums = np.abs((1 - 2 * patterns) @ terms)
        return float((sums >= threshold).mean())
    if resamples < 1:
        raise SignificanceError(f"a sign flip needs at least 1 resample, got {resamples}")
    rng = np.random.default_rng(seed)
    hits = 0
    for start in range(0, resamples, _CHUNK):
        signs = rng.integers(0, 2, size=(min(_CHUNK, resamples - start), len(terms))) * 2 - 1
        hits += int((np.abs(signs @ terms) >= threshold).sum())
    return (1 + hits) / (1 + resamples)


def is_binary(values: np.ndarray) -> bool:
    """Whether every score is 0 or 1."""
    return bool(np.isin(np.asarray(values, dtype=float), (0.0, 1.0)).all())


def paired_test(run: np.ndarray, baseline: np.ndarray, resamples: int = RESAMPLES, seed: int = 0) -> float:
    """Two-sided p-value of a task's difference in mean score between two runs on the same items: exact
    McNemar for 0/1 scores, else a sign flip of the per-item differences."""
    run, baseline = _paired(run, baseline)
    if is_binary(run) and is_binary(baseline):
        return mcnemar(run, baseline)
    return sign_flip(run - baseline, resamples=resamples, seed=seed)


def retention_test(run: dict[str, np.ndarray], baseline: dict[str, np.ndarray], dense: dict[str, np.ndarray],
                   against_dense: bool = False, resamples: int = RESAMPLES, seed: int = 0) -> float:
    """Two-sided p-value of the difference in average retention (``mean over tasks of score / dense
    score``) between ``run`` and ``baseline``, all scored on the same items (``{task: scores}``).

    A sign flip of the per-item differences, weighted ``1 / (tasks * n_t * m_t)``: with two pruned runs
    ``m_t`` is the dense task score, so the statistic is exactly the retention difference; with
    ``against_dense`` (``baseline`` is the dense run) swapping an item's two answers would change the
    denominator, so ``m_t`` is the mean of the two runs' task scores, which no swap changes."""
    tasks = sorted(dense)
    differences, weights = [], []
    for t in tasks:
        a, b = _paired(run[t], baseline[t])
        scale = (a.mean() + b.mean()) / 2 if against_dense else float(np.mean(dense[t]))
        if scale <= 0:
            return float("nan")
        differences.append(a - b)
        weights.append(np.full(len(a), 1.0 / (len(tasks) * len(a) * scale)))
    return sign_flip(np.concatenate(differences), np.concatenate(weights), resamples, seed)


def adjust(pvalues: np.ndarray, method: str = "holm") -> np.ndarray:
    """``pvalues`` of one family adjusted by ``method``: ``holm`` (step-down, controls the family-wise
    error), ``bh`` (Benjamini-Hochberg step-up, controls the false discovery rate) or ``none``. NaN entries
    stay NaN and are not counted in the family."""
    if method not in ADJUSTMENTS:
        raise SignificanceError(f"unknown adjustment {method!r}; choose from {', '.join(ADJUSTMENTS)}")
    values = np.asarray(pvalues, dtype=float)
    out = np.full(values.shape, np.nan)
    kept = np.flatnonzero(~np.isnan(values))
    m = len(kept)
    if not m or method == "none":
        out[kept] = values[kept]
        return out
    order = kept[np.argsort(values[kept], kind="stable")]
    ranked = values[order]
    if method == "holm":
        adjusted = np.maximum.accumulate(np.minimum(1.0, (m - np.arange(m)) * ranked))
    else:
        adjusted = np.minimum.accumulate(np.minimum(1.0, m / np.arange(1, m + 1) * ranked)[::-1])[::-1]
    out[order] = adjusted
    return out


def _paired(run: np.ndarray, baseline: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    run, baseline = np.asarray(run, dtype=float), np.asarray(baseline, dtype=float)
    if run.shape != baseline.shape:
        raise SignificanceError(f"paired tests need the same items: {len(run)} against {len(baseline)}")
    return run, baseline

"""Exact paired tests and multiple-comparison adjustment, each against scipy or a hand-worked example."""

import itertools

import numpy as np
import pytest
from scipy import stats

from probe.evaluation.significance import (
    EXACT_LIMIT,
    SignificanceError,
    adjust,
    mcnemar,
    paired_test,
    retention_test,
    sign_flip,
)


def _pairs(right_only: int, wrong_only: int, both: int = 5, neither: int = 3) -> tuple[np.ndarray, np.ndarray]:
    run = np.array([1] * right_only + [0] * wrong_only + [1] * both + [0] * neither, dtype=float)
    baseline = np.array([0] * right_only + [1] * wrong_only + [1] * both + [0] * neither, dtype=float)
    return run, baseline


def test_mcnemar_by_hand():
    # 7 items only the run answers right, 1 only the baseline: 2 (C(8,0) + C(8,1)) / 2^8 = 18 / 256
    assert mcnemar(*_pairs(7, 1)) == pytest.approx(18 / 256)
    assert mcnemar(*_pairs(0, 0)) == 1.0
    assert mcnemar(*_pairs(3, 3)) == 1.0  # the two-sided tail sum passes 1 at an even split


@pytest.mark.parametrize(("b", "c"), [(7, 1), (1, 7), (12, 4), (30, 18), (0, 9), (150, 120)])
def test_mcnemar_equals_scipys_binomial_test(b, c):
    assert mcnemar(*_pairs(b, c)) == pytest.approx(stats.binomtest(b, b + c, 0.5).pvalue, rel=1e-9)


def test_mcnemar_refuses_scores_other_than_0_1():
    with pytest.raises(SignificanceError, match="0/1"):
        mcnemar(np.array([0.5, 1.0]), np.array([0.0, 1.0]))
    with pytest.raises(SignificanceError, match="same items"):
        mcnemar(np.array([0.0, 1.0]), np.array([1.0]))


def test_sign_flip_equals_scipys_permutation_test_when_exact():
    rng = np.random.default_rng(3)
    for n in (5, 9, EXACT_LIMIT):
        differences = rng.normal(0.3, 1.0, size=n)
        expected = stats.permutation_test((differences,), np.sum, permutation_type="samples",
                                          n_resamples=np.inf).pvalue
        assert sign_flip(differences) == pytest.approx(expected, rel=1e-9)


def test_sign_flip_of_0_1_differences_is_mcnemars_test():
    """A sign flip of differences in {-1, 0, 1} is the two-sided sign test of the discordant items."""
    for b, c in [(5, 1), (9, 2), (4, 4)]:
        run, baseline = _pairs(b, c)
        assert sign_flip(run - baseline) == pytest.approx(mcnemar(run, baseline))
    run, baseline = _pairs(16, 6)  # 22 discordant items: random sign patterns, close to the exact value
    assert sign_flip(run - baseline, resamples=20_000, seed=1) == pytest.approx(mcnemar(run, baseline), abs=0.01)


def test_random_sign_flips_approach_a_full_enumeration():
    rng = np.random.default_rng(0)
    differences, weights = rng.normal(0.2, 1.0, size=EXACT_LIMIT + 2), rng.uniform(0.5, 2.0, size=EXACT_LIMIT + 2)
    terms = differences * weights
    observed = abs(terms.sum())
    hits = sum(abs(sum(s * t for s, t in zip(signs, terms))) >= observed - 1e-12
               for signs in itertools.product((1, -1), repeat=len(terms)))
    exact = hits / 2 ** len(terms)
    estimate = sign_flip(differences, weights, resamples=20_000, seed=2)
    assert estimate == pytest.approx(exact, abs=4 * np.sqrt(exact * (1 - exact) / 20_000) + 1e-4)
    assert sign_flip(differences, weights, resamples=500, seed=2) == sign_flip(differences, weights, resamples=500,
                                                                               seed=2)
    assert sign_flip(np.zeros(4)) == 1.0


def test_paired_test_picks_mcnemar_for_0_1_scores_and_a_sign_flip_otherwise():
    run, baseline = _pairs(7, 1)
    assert paired_test(run, baseline) == pytest.approx(18 / 256)
    averaged = np.array([1.0, 2 / 3, 1 / 3, 1.0, 0.0])  # the mean answer of three calibration draws
    reference = np.array([1.0, 0.0, 0.0, 1.0, 1.0])
    assert paired_test(averaged, reference) == pytest.approx(sign_flip(averaged - reference))


DENSE = {"a": np.array([1, 1, 0, 1, 1, 0, 1, 1.0]), "b": np.array([1, 0, 1, 1, 0, 1, 1, 1.0])}
RUN = {"a": np.array([1, 1, 0, 1, 0, 0, 1, 1.0]), "b": np.array([1, 0, 1, 1, 0, 1, 1, 1.0])}
BASE = {"a": np.array([0, 0, 0, 1, 0, 0, 1, 0.0]), "b": np.array([0, 0, 1, 1, 0, 1, 0, 1.0])}


def _swap_test(run, baseline, scale):
    """Every way to swap the two runs' answers item by item; the statistic is sum over tasks of
    (mean(run) - mean(baseline)) / scale[task], over the number of tasks."""
    tasks = sorted(run)
    pairs = [(t, i) for t in tasks for i in range(len(run[t]))]

    def statistic(flips):
        total = 0.0
        for t in tasks:
            ours = [baseline[t][i] if flips[pairs.index((t, i))] else run[t][i] for i in range(len(run[t]))]
            theirs = [run[t][i] if flips[pairs.index((t, i))] else baseline[t][i] for i in range(len(run[t]))]
            total += (sum(ours) - sum(theirs)) / len(ours) / scale[t]
        return total / len(tasks)

    differing = [k for k, (t, i) in enumerate(pairs) if run[t][i] != baseline[t][i]]
    observed = abs(statistic([False] * len(pairs)))
    hits = 0
    for chosen in itertools.product((False, True), repeat=len(differing)):
        flips = [False] * len(pairs)
        for k, flip in zip(differing, chosen):
            flips[k] = flip
        hits += abs(statistic(flips)) >= observed - 1e-12
    return hits / 2 ** len(differing)


def test_retention_test_is_the_permutation_test_of_the_retention_difference():
    dense_scale = {t: DENSE[t].mean() for t in DENSE}
    assert retention_test(RUN, BASE, DENSE) == pytest.approx(_swap_test(RUN, BASE, dense_scale))
    # against the dense model, the denominators are the two runs' mean scores, which no swap changes
    pair_scale = {t: (RUN[t].mean() + DENSE[t].mean()) / 2 for t in DENSE}
    assert retention_test(BASE, DENSE, DENSE, against_dense=True) == pytest.approx(_swap_test(BASE, DENSE, pair_scale))
    zero = {"a": np.zeros(8), "b": np.zeros(8)}
    assert np.isnan(retention_test(RUN, BASE, zero))


def test_holm_and_benjamini_hochberg_by_hand():
    p = np.array([0.01, 0.04, 0.03, 0.005])
    # Holm: sorted 0.005 x 4, 0.01 x 3, 0.03 x 2, 0.04 x 1, each at least the one before it
    assert adjust(p, "holm") == pytest.approx([0.03, 0.06, 0.06, 0.02])
    # BH: sorted 0.005 x 4/1, 0.01 x 4/2, 0.03 x 4/3, 0.04 x 4/4, each at most the one after it
    assert adjust(p, "bh") == pytest.approx([0.02, 0.04, 0.04, 0.02])
    assert adjust(p, "none") == pytest.approx(p)
    assert adjust(np.array([0.5, 0.9]), "holm") == pytest.approx([1.0, 1.0])  # capped at 1


def test_adjustment_leaves_missing_p_values_out_of_the_family():
    with_gaps = adjust(np.array([0.01, np.nan, 0.04]), "holm")
    assert np.isnan(with_gaps[1]) and with_gaps[[0, 2]] == pytest.approx([0.02, 0.04])
    assert np.isnan(adjust(np.array([np.nan]), "bh")).all()


def test_benjamini_hochberg_equals_scipy():
    p = np.random.default_rng(4).uniform(0, 0.2, size=40)
    assert adjust(p, "bh") == pytest.approx(stats.false_discovery_control(p, method="bh"))


def test_unknown_adjustment_is_named():
    with pytest.raises(SignificanceError, match="unknown adjustment 'bonf'"):
        adjust(np.array([0.1]), "bonf")

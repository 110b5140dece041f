"""Seed statistics (`rlhf_jax.experiments.stats`) against hand-worked numbers."""

import math

import pytest
from scipy import stats as scipy_stats

from rlhf_jax.experiments import stats


def test_bootstrap_interval_by_hand():
    # Two seeds 0 and 1: resampled means are 0, 0.5, 1 with probability 1/4, 1/2, 1/4,
    # so the 2.5% and 97.5% quantiles are 0 and 1.
    ci = stats.bootstrap_ci([0.0, 1.0])
    assert ci == (0.5, 0.0, 1.0, 2)
    # Seeded: the same call gives the same interval; it lies inside the sample's range.
    a = stats.bootstrap_ci([0.1, 0.4, 0.35, 0.2, 0.3])
    assert a == stats.bootstrap_ci([0.1, 0.4, 0.35, 0.2, 0.3])
    assert a.mean == pytest.approx(0.27) and 0.1 <= a.lo < a.mean < a.hi <= 0.4
    assert stats.bootstrap_ci([0.3]) == (0.3, 0.3, 0.3, 1)
    with pytest.raises(ValueError, match="non-finite"):
        stats.bootstrap_ci([0.1, float("nan")])


def test_standard_error_by_hand():
    # std(1, 2, 3, 4; ddof 1) = sqrt(5/3); over sqrt(4).
    assert stats.standard_error([1, 2, 3, 4]) == pytest.approx(math.sqrt(5 / 3) / 2)


def test_welch_by_hand():
    # a: mean 2, var 1 (n 3); b: mean 5.5, var 5/3 (n 4).
    t, p = stats.welch([1, 2, 3], [4, 5, 6, 7])
    se2 = 1 / 3 + (5 / 3) / 4
    assert t == pytest.approx(-3.5 / math.sqrt(se2))
    dof = se2 ** 2 / ((1 / 3) ** 2 / 2 + (5 / 12) ** 2 / 3)
    assert dof == pytest.approx(243 / 49)
    assert p == pytest.approx(2 * scipy_stats.t.sf(3.5 / math.sqrt(se2), dof))
    assert p == pytest.approx(scipy_stats.ttest_ind([1, 2, 3], [4, 5, 6, 7],
                                                    equal_var=False).pvalue)
    assert stats.welch([1, 1], [1, 1]) == (0.0, 1.0)
    assert stats.welch([2, 2], [1, 1])[1] == 0.0
    with pytest.raises(ValueError, match="needs >= 2 seeds"):
        stats.welch([1], [2, 3])


def test_one_sample_t_by_hand():
    # 1, 2, 3 against 0: mean 2, sd 1, se 1/sqrt(3), t = 2 sqrt(3) on 2 dof, where
    # the t CDF is closed-form: two-sided p = 1 - t / sqrt(2 + t^2) = 1 - sqrt(12/14).
    t, p = stats.one_sample_t([1, 2, 3], 0.0)
    assert t == pytest.approx(2 * math.sqrt(3))
    assert p == pytest.approx(1 - math.sqrt(12 / 14))
    assert stats.one_sample_t([0.4, 0.6], 0.5) == (0.0, 1.0)
    assert stats.one_sample_t([0.7, 0.7], 0.5)[1] == 0.0
    with pytest.raises(ValueError, match="needs >= 2 seeds"):
        stats.one_sample_t([0.7], 0.5)


def test_permutation_by_hand():
    # 3 vs 3 fully separated: of the C(6, 3) = 20 relabellings only the observed
    # one and its mirror reach |difference| 3: p = 2/20.
    assert stats.permutation([1, 2, 3], [4, 5, 6]) == pytest.approx(0.1)
    # 5 vs 5 separated: 2 / C(10, 5) = 2/252.
    assert stats.permutation([1, 2, 3, 4, 5], [6, 7, 8, 9, 10]) == pytest.approx(2 / 252)
    # Identical samples: every relabelling is at least as extreme.
    assert stats.permutation([1, 1], [1, 1]) == 1.0
    # {1, 3} vs {2, 4}: |diff| 1; relabellings (of 6) with |diff| >= 1: {1,2}|{3,4} (2),
    # {1,3}|{2,4} (1), {2,4}|{1,3}, {3,4}|{1,2}: 4 of 6.
    assert stats.permutation([1, 3], [2, 4]) == pytest.approx(4 / 6)
    # Sampled relabellings when the exact count is too large: close to the exact value.
    exact = stats.permutation([1, 2, 3, 4, 5], [3, 6, 7, 8, 9])
    approx = stats.permutation([1, 2, 3, 4, 5], [3, 6, 7, 8, 9], max_exact=5000)
    assert approx == pytest.approx(exact, abs=0.01)


def test_holm_by_hand():
    # Sorted: 0.005 x 4 = 0.02, 0.01 x 3 = 0.03, 0.03 x 2 = 0.06, 0.04 x 1 = 0.04 -> 0.06 (monotone).
    assert stats.holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert stats.holm([0.5, 0.6]) == [1.0, 1.0]
    got = stats.holm([0.01, float("nan"), 0.02])
    assert got[0] == pytest.approx(0.02) and math.isnan(got[1]) and got[2] == pytest.approx(0.02)


def test_p_value_names_its_test():
    assert stats.p_value([1, 2, 3], [4, 5, 6], "permutation") == pytest.approx(0.1)
    with pytest.raises(ValueError, match="expected one of"):
        stats.p_value([1, 2], [3, 4], "mannwhitney")

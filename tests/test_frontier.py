"""Per-seed gold-vs-KL frontiers read at KL budgets (`rlhf_jax.experiments.frontier`)."""

import math

import numpy as np
import pytest

from rlhf_jax.experiments import frontier


def test_interpolation_is_linear_in_sqrt_kl_and_never_extrapolates():
    f = frontier.Frontier.of([4.0, 0.0, 1.0], [0.9, 0.0, 0.5])  # sorted by KL
    assert f.kl_P.tolist() == [0.0, 1.0, 4.0]
    assert f.at(1.0) == pytest.approx(0.5)
    assert f.at(0.25) == pytest.approx(0.25)  # d 0.5: halfway from d 0 to d 1
    assert f.at(2.25) == pytest.approx(0.7)  # d 1.5: halfway from d 1 to d 2
    assert math.isnan(f.at(5.0))
    assert math.isnan(frontier.Frontier.of([1.0, 4.0], [0.5, 0.9]).at(0.5))
    with pytest.raises(ValueError, match="budget must be >= 0"):
        f.at(-1)


def test_points_at_one_kl_average_and_slightly_negative_kl_is_zero():
    f = frontier.Frontier.of([-0.01, 1.0, 1.0], [0.0, 0.2, 0.6])
    assert f.at(0.0) == 0.0 and f.at(1.0) == pytest.approx(0.4)


def test_seed_frontiers_per_seed_with_the_initial_anchor():
    pts = [((1.0, 1.0), (0.4, 0.6)), ((4.0, 9.0), (0.8, 0.3))]
    fs = frontier.seed_frontiers(pts, anchor=(0.1, -0.1))
    assert fs[0].kl_P.tolist() == [0.0, 1.0, 4.0] and fs[1].y_P.tolist() == [-0.1, 0.6, 0.3]
    got = frontier.at_budget(fs, 0.25)
    assert got == pytest.approx([0.25, 0.25])  # 0.1 + (0.4 - 0.1)/2; -0.1 + (0.6 + 0.1)/2
    assert np.isnan(frontier.at_budget(fs, 5.0)[0]) and not np.isnan(frontier.at_budget(fs, 5.0)[1])
    with pytest.raises(ValueError, match="different seed counts"):
        frontier.seed_frontiers([((1.0,), (0.4,)), ((1.0, 2.0), (0.1, 0.2))])

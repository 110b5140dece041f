"""`ppo.gold_normalize`: PPO's gold reward scaled as the reward models are."""

import numpy as np
import pytest

from rlhf_jax.stages.batched import gold_reward


def test_gold_reward_applies_the_gain_and_bias_the_gold_function_carries():
    def gold(q, m, r):
        return np.zeros(len(r))

    g_B = np.array([-1.0, 0.5, 2.0])
    # Without normalisation the reward is the gold itself.
    np.testing.assert_array_equal(gold_reward(gold, g_B), g_B.astype(np.float32))
    # Initial-policy gold with mean 0.5 and (population) std 1.5: gain 1/1.5, bias -0.5/1.5,
    # so those samples would score mean 0, std 1.
    samples = np.array([-1.0, 2.0])
    gain = 1 / samples.std()
    gold.reward_gain_bias = (gain, -gain * samples.mean())
    np.testing.assert_allclose(gold_reward(gold, g_B), [-1.0, 0.0, 1.0], atol=1e-6)
    normed = gold_reward(gold, samples)
    assert normed.mean() == pytest.approx(0.0) and normed.std() == pytest.approx(1.0)

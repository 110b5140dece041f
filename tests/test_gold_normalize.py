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


def test_ppo_gold_function_takes_the_moments_of_initial_policy_samples(monkeypatch):
    from rlhf_jax import config_lib
    from rlhf_jax.stages import batched, reward

    cfg = config_lib.base_config()
    cfg.ppo.reward_source, cfg.ppo.gold_normalize = "gold", True
    cfg.reward.normalize_samples, cfg.reward.rollout_batch_size = 4, 4
    drawn = {}

    def fake_normalizer(ctx, model, params):
        def sampler(num_samples, rng):
            drawn["n"], drawn["params"] = num_samples, params
            # Four "responses" whose gold (below) is their first token: 1, 2, 3, 6.
            r_MxR = np.array([[1, 0], [2, 0], [3, 0], [6, 0]])
            return reward.ReferenceSamples(np.arange(4), np.zeros((4, 2), int),
                                           np.ones((4, 2), int), r_MxR, np.ones_like(r_MxR))
        return sampler

    def fake_gold(ctx):
        return lambda q, m, r: np.asarray(r)[:, 0].astype(np.float64)

    monkeypatch.setattr(reward, "reference_normalizer", fake_normalizer)
    monkeypatch.setattr(batched, "gold_function", fake_gold)
    ctx = type("Ctx", (), {"cfg": cfg})()
    gold = batched.ppo_gold_function(ctx, "model", "initial params")
    assert drawn == {"n": 4, "params": "initial params"}
    gain, bias = gold.reward_gain_bias
    # Mean 3, population std sqrt((4 + 1 + 0 + 9) / 4) = sqrt(3.5).
    assert gain == pytest.approx(1 / np.sqrt(3.5)) and bias == pytest.approx(-3 / np.sqrt(3.5))
    np.testing.assert_allclose(batched.gold_reward(gold, [3.0, 3 + np.sqrt(3.5)]), [0.0, 1.0],
                               atol=1e-6)
    # Off by default, and never for an RM reward.
    cfg.ppo.gold_normalize = False
    assert not hasattr(batched.ppo_gold_function(ctx, "model", "p"), "reward_gain_bias")
    cfg.ppo.gold_normalize, cfg.ppo.reward_source = True, "rm"
    assert not hasattr(batched.ppo_gold_function(ctx, "model", "p"), "reward_gain_bias")
    # A gold with no spread on the samples cannot be normalised.
    cfg.ppo.reward_source = "gold"
    monkeypatch.setattr(batched, "gold_function", lambda ctx: lambda q, m, r: np.ones(len(r)))
    with pytest.raises(ValueError, match="ppo.gold_normalize: .* no spread"):
        batched.ppo_gold_function(ctx, "model", "p")

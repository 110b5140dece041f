"""Pure PPO pieces: GAE, whitening, KL rewards, clipped losses, stats."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rlhf_jax.algorithms import ppo
from rlhf_jax.algorithms.logprobs import logprobs_and_entropy


def gae_loop(rewards, values, gamma, lam):
    """LHP `PPOTrainer.loss` GAE, written as a plain double loop."""
    b, t_len = rewards.shape
    adv = np.zeros_like(rewards)
    for i in range(b):
        lastgaelam = 0.0
        for t in reversed(range(t_len)):
            next_value = values[i, t + 1] if t < t_len - 1 else 0.0
            delta = rewards[i, t] + gamma * next_value - values[i, t]
            lastgaelam = delta + gamma * lam * lastgaelam
            adv[i, t] = lastgaelam
    return adv, adv + values


# ---------------------------------------------------------------- GAE


def test_gae_matches_python_loop_on_random_inputs():
    rng = np.random.default_rng(0)
    rewards = rng.normal(size=(3, 7)).astype(np.float32)
    values = rng.normal(size=(3, 7)).astype(np.float32)
    for gamma, lam in [(1.0, 0.95), (0.9, 0.8), (0.99, 1.0)]:
        adv, ret = ppo.gae(rewards, values, gamma, lam)
        adv_ref, ret_ref = gae_loop(rewards, values, gamma, lam)
        np.testing.assert_allclose(adv, adv_ref, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(ret, ret_ref, rtol=1e-5, atol=1e-6)


def test_gae_hand_worked_three_steps():
    # gamma = 1, lam = 0.95, r = [0, 0, 1], V = [0.5, 0.2, 0.4]; V after the end is 0.
    # t=2: delta = 1 + 0   - 0.4 =  0.6;  A2 = 0.6
    # t=1: delta = 0 + 0.4 - 0.2 =  0.2;  A1 = 0.2 + 0.95 * 0.6  = 0.77
    # t=0: delta = 0 + 0.2 - 0.5 = -0.3;  A0 = -0.3 + 0.95 * 0.77 = 0.4315
    # returns = A + V = [0.9315, 0.97, 1.0]
    adv, ret = ppo.gae(jnp.array([[0.0, 0.0, 1.0]]), jnp.array([[0.5, 0.2, 0.4]]), 1.0, 0.95)
    np.testing.assert_allclose(adv, [[0.4315, 0.77, 0.6]], rtol=1e-6)
    np.testing.assert_allclose(ret, [[0.9315, 0.97, 1.0]], rtol=1e-6)


def test_gae_masked_stops_at_last_valid_step():
    # Step 3 is padding with a large reward and value: it must not leak back.
    # t=2: delta = 1.0 + 0   - 0.4 =  0.6;  A2 = 0.6      (no bootstrap from V3 = 9)
    # t=1: delta = 0.2 + 0.4 - 0.2 =  0.4;  A1 = 0.4 + 0.95 * 0.6  = 0.97
    # t=0: delta = 0.1 + 0.2 - 0.5 = -0.2;  A0 = -0.2 + 0.95 * 0.97 = 0.7215
    rewards = jnp.array([[0.1, 0.2, 1.0, 5.0]])
    values = jnp.array([[0.5, 0.2, 0.4, 9.0]])
    mask = jnp.array([[1, 1, 1, 0]])
    adv, ret = ppo.gae(rewards, values, 1.0, 0.95, mask)
    np.testing.assert_allclose(adv, [[0.7215, 0.97, 0.6, 0.0]], rtol=1e-6)
    np.testing.assert_allclose(ret, adv + values, rtol=1e-6)
    # Equal to unmasked GAE on the valid prefix.
    adv3, _ = ppo.gae(rewards[:, :3], values[:, :3], 1.0, 0.95)
    np.testing.assert_allclose(adv[:, :3], adv3, rtol=1e-6)


def test_gae_masked_rows_of_different_lengths_match_loop_on_prefix():
    rng = np.random.default_rng(1)
    rewards = rng.normal(size=(3, 6)).astype(np.float32)
    values = rng.normal(size=(3, 6)).astype(np.float32)
    lengths = [6, 4, 1]
    mask = (np.arange(6)[None, :] < np.array(lengths)[:, None]).astype(np.int32)
    adv, _ = ppo.gae(rewards, values, 0.97, 0.9, mask)
    for i, n in enumerate(lengths):
        ref, _ = gae_loop(rewards[i:i + 1, :n], values[i:i + 1, :n], 0.97, 0.9)
        np.testing.assert_allclose(adv[i, :n], ref[0], rtol=1e-5, atol=1e-6)
        np.testing.assert_array_equal(adv[i, n:], 0.0)


def test_gae_jit_traces_once():
    @jax.jit
    @chex.assert_max_traces(n=1)
    def f(r, v):
        return ppo.gae(r, v, 1.0, 0.95)

    r = jnp.ones((2, 5))
    f(r, r)
    adv, _ = f(r * 2, r)
    np.testing.assert_allclose(adv, gae_loop(np.full((2, 5), 2.0), np.ones((2, 5)), 1.0, 0.95)[0],
                               rtol=1e-6)


# ---------------------------------------------------------------- whiten


def test_whiten_population_variance():
    x = np.array([[1.0, 2.0, 4.0], [7.0, -1.0, 3.0]], np.float32)
    got = ppo.whiten(jnp.asarray(x))
    want = (x - x.mean()) / np.sqrt(x.var(ddof=0) + 1e-8)
    np.testing.assert_allclose(got, want, rtol=1e-6)
    np.testing.assert_allclose(np.var(np.asarray(got)), 1.0, rtol=1e-5)
    # ddof=1 would give a visibly different scale on 6 entries.
    assert not np.allclose(got, (x - x.mean()) / np.sqrt(x.var(ddof=1) + 1e-8), rtol=1e-3)


def test_whiten_shift_mean_false_keeps_mean():
    x = np.array([1.0, 2.0, 3.0, 6.0], np.float32)  # mean 3, var 3.5
    got = np.asarray(ppo.whiten(jnp.asarray(x), shift_mean=False))
    np.testing.assert_allclose(got.mean(), 3.0, rtol=1e-6)
    np.testing.assert_allclose(got, (x - 3.0) / np.sqrt(3.5 + 1e-8) + 3.0, rtol=1e-6)


def test_whiten_masked_uses_only_masked_entries_and_zeros_the_rest():
    x = jnp.array([[1.0, 3.0, 100.0], [5.0, -50.0, 7.0]])
    mask = jnp.array([[1, 1, 0], [1, 0, 1]])
    got = np.asarray(ppo.whiten(x, mask=mask))
    valid = np.array([1.0, 3.0, 5.0, 7.0])  # mean 4, var 5
    np.testing.assert_allclose(got[[0, 0, 1, 1], [0, 1, 0, 2]], (valid - 4.0) / np.sqrt(5.0),
                               rtol=1e-6)
    np.testing.assert_array_equal(got[[0, 1], [2, 1]], 0.0)


def test_whiten_axis_name_under_pmap_equals_global_batch():
    assert jax.device_count() >= 4
    rng = np.random.default_rng(2)
    x = (rng.normal(size=(4, 2, 3)) * np.arange(1, 5)[:, None, None]).astype(np.float32)
    mask = (rng.uniform(size=(4, 2, 3)) > 0.3).astype(np.int32)
    for shift_mean in (True, False):
        fn = jax.pmap(lambda a, m, s=shift_mean: (ppo.whiten(a, s, axis_name="batch"),
                                                  ppo.whiten(a, s, m, axis_name="batch")),
                      axis_name="batch")
        got, got_masked = fn(x, mask)
        want = ppo.whiten(x.reshape(8, 3), shift_mean)
        want_masked = ppo.whiten(x.reshape(8, 3), shift_mean, mask.reshape(8, 3))
        np.testing.assert_allclose(np.asarray(got).reshape(8, 3), want, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(np.asarray(got_masked).reshape(8, 3), want_masked,
                                   rtol=1e-5, atol=1e-6)
    # Without axis_name each device would whiten only its shard: different numbers.
    local = jax.pmap(lambda a: ppo.whiten(a))(x)
    assert not np.allclose(np.asarray(local).reshape(8, 3), ppo.whiten(x.reshape(8, 3)), atol=1e-3)


# ---------------------------------------------------------------- rewards


def test_kl_penalty_rewards_hand_numbers():
    # kl = logp - ref = [0.5, -1, 0]; non_score = -0.1 * kl = [-0.05, 0.1, 0]; score 2 at T-1.
    score = jnp.array([2.0])
    logp = jnp.array([[-1.0, -2.0, -0.5]])
    ref = jnp.array([[-1.5, -1.0, -0.5]])
    rewards, non_score, kl = ppo.kl_penalty_rewards(score, logp, ref, 0.1)
    np.testing.assert_allclose(kl, [[0.5, -1.0, 0.0]], rtol=1e-6)
    np.testing.assert_allclose(non_score, [[-0.05, 0.1, 0.0]], rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(rewards, [[-0.05, 0.1, 2.0]], rtol=1e-6, atol=1e-8)
    # Score at an explicit index (Stiennon: EOS).
    rewards, _, _ = ppo.kl_penalty_rewards(score, logp, ref, 0.1, score_index_B=jnp.array([1]))
    np.testing.assert_allclose(rewards, [[-0.05, 2.1, 0.0]], rtol=1e-6, atol=1e-8)
    # With a mask and no index: KL zeroed past the end, score at the last valid index.
    rewards, non_score, kl = ppo.kl_penalty_rewards(score, logp, ref, 0.1,
                                                    mask_BxT=jnp.array([[1, 1, 0]]))
    np.testing.assert_allclose(rewards, [[-0.05, 2.1, 0.0]], rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(kl, [[0.5, -1.0, 0.0]], rtol=1e-6)


def test_signs_score_raises_every_advantage_and_kl_lowers_reward():
    rng = np.random.default_rng(3)
    logp = jnp.asarray(rng.normal(size=(2, 5)), jnp.float32)
    ref = jnp.asarray(rng.normal(size=(2, 5)), jnp.float32)
    values = jnp.asarray(rng.normal(size=(2, 5)), jnp.float32)
    score = jnp.array([0.3, -1.0])

    def advantages(s, lp):
        r, _, _ = ppo.kl_penalty_rewards(s, lp, ref, 0.2)
        return ppo.gae(r, values, 1.0, 0.95)[0], r

    adv_lo, r_lo = advantages(score, logp)
    adv_hi, r_hi = advantages(score + 1.0, logp)
    assert np.all(np.asarray(adv_hi - adv_lo) > 0)
    assert np.all(np.asarray(r_hi - r_lo)[:, -1] > 0)
    # Raising logp (more KL vs the reference) lowers the reward at every token.
    _, r_more_kl = advantages(score, logp + 0.5)
    assert np.all(np.asarray(r_more_kl - r_lo) < 0)
    np.testing.assert_allclose(r_more_kl - r_lo, -0.2 * 0.5, rtol=1e-5)


# ---------------------------------------------------------------- losses


def test_policy_loss_hand_numbers_with_clipping_on_both_sides():
    # c = 0.2; per token: (A, ratio) -> max(-A*r, -A*clip(r)), clipped term larger?
    #   ( 1, 1.5) -> max(-1.5, -1.2) = -1.2   clipped (ratio above 1+c, A > 0)
    #   (-1, 0.5) -> max( 0.5,  0.8) =  0.8   clipped (ratio below 1-c, A < 0)
    #   ( 2, 1.1) -> max(-2.2, -2.2) = -2.2   inside the range
    #   (-1, 1.5) -> max( 1.5,  1.2) =  1.5   unclipped is the pessimistic one
    # loss = (-1.2 + 0.8 - 2.2 + 1.5) / 4 = -0.275; clipfrac = 2/4
    adv = jnp.array([[1.0, -1.0, 2.0, -1.0]])
    ratio = np.array([[1.5, 0.5, 1.1, 1.5]])
    logp_old = jnp.array([[-1.0, -2.0, -3.0, -0.5]])
    logp_new = logp_old + jnp.log(ratio)
    loss, stats = ppo.policy_loss(logp_new, logp_old, adv, 0.2)
    np.testing.assert_allclose(loss, -0.275, rtol=1e-5)
    np.testing.assert_allclose(stats["clipfrac"], 0.5)
    np.testing.assert_allclose(stats["approxkl"], 0.5 * np.mean(np.log(ratio) ** 2), rtol=1e-5)
    # Masked: only tokens 0 and 2 count -> (-1.2 - 2.2) / 2, one of two clipped.
    loss, stats = ppo.policy_loss(logp_new, logp_old, adv, 0.2, jnp.array([[1, 0, 1, 0]]))
    np.testing.assert_allclose(loss, -1.7, rtol=1e-5)
    np.testing.assert_allclose(stats["clipfrac"], 0.5)


def test_value_loss_hand_numbers():
    # c = 0.2; per token (v_old, v_new, R): l1 = (v - R)^2, l2 = (clip(v, v_old +- c) - R)^2
    #   (0,  1,    1  ): l1 = 0,    clip 0.2,  l2 = 0.64 -> 0.64  clipped
    #   (0, -1,    0  ): l1 = 1,    clip -0.2, l2 = 0.04 -> 1
    #   (1,  1.1,  2  ): l1 = 0.81, inside,    l2 = 0.81 -> 0.81
    #   (0, -1,   -0.9): l1 = 0.01, clip -0.2, l2 = 0.49 -> 0.49  clipped
    # loss = 0.5 * (0.64 + 1 + 0.81 + 0.49) / 4 = 0.3675
    v_old = jnp.array([[0.0, 0.0, 1.0, 0.0]])
    v_new = jnp.array([[1.0, -1.0, 1.1, -1.0]])
    ret = jnp.array([[1.0, 0.0, 2.0, -0.9]])
    loss, stats = ppo.value_loss(v_new, v_old, ret, 0.2)
    np.testing.assert_allclose(loss, 0.3675, rtol=1e-5)
    np.testing.assert_allclose(stats["clipfrac"], 0.5)
    np.testing.assert_allclose(stats["vpred"], 0.025, rtol=1e-5)
    np.testing.assert_allclose(stats["error"], (0 + 1 + 0.81 + 0.01) / 4, rtol=1e-5)
    loss, stats = ppo.value_loss(v_new, v_old, ret, 0.2, jnp.array([[0, 1, 1, 0]]))
    np.testing.assert_allclose(loss, 0.5 * (1 + 0.81) / 2, rtol=1e-5)
    np.testing.assert_allclose(stats["clipfrac"], 0.0)


def test_losses_have_the_right_gradient_direction():
    # Positive advantage: raising logp_new lowers the loss (until clipped).
    g = jax.grad(lambda lp: ppo.policy_loss(lp, jnp.zeros((1, 2)), jnp.ones((1, 2)), 0.2)[0])
    assert np.all(np.asarray(g(jnp.zeros((1, 2)))) < 0)
    # Clipped region: no gradient through the policy term.
    assert np.all(np.asarray(g(jnp.full((1, 2), 0.5))) == 0)


# ---------------------------------------------------------------- stats


def test_masked_mean_and_var():
    x = jnp.array([[1.0, 2.0, 9.0], [3.0, 4.0, 9.0]])
    mask = jnp.array([[1, 1, 0], [1, 1, 0]])
    np.testing.assert_allclose(ppo.masked_sum(x, mask), 10.0)
    np.testing.assert_allclose(ppo.masked_mean(x, mask), 2.5)
    np.testing.assert_allclose(ppo.masked_var(x, mask), np.var([1.0, 2.0, 3.0, 4.0]))
    np.testing.assert_allclose(ppo.masked_mean(x, mask, axis=1), [1.5, 3.5])
    np.testing.assert_allclose(ppo.masked_var(x, mask, axis=1), [0.25, 0.25])
    np.testing.assert_allclose(ppo.masked_mean(x), np.mean(np.asarray(x)), rtol=1e-6)
    # A fully masked row gives 0, not NaN.
    np.testing.assert_array_equal(ppo.masked_mean(x, jnp.array([[1, 0, 0], [0, 0, 0]]), axis=1),
                                  [1.0, 0.0])


def test_entropy_from_logits():
    # The entropy PPO logs comes from the one log-prob function (any target).
    def entropy(logits):
        return logprobs_and_entropy(logits, jnp.zeros(logits.shape[:-1], jnp.int32))[1]

    logits = jnp.zeros((1, 2, 4)).at[0, 1].set(jnp.array([0.0, -jnp.inf, -jnp.inf, -jnp.inf]))
    ent = np.asarray(entropy(logits))
    np.testing.assert_allclose(ent, [[np.log(4.0), 0.0]], rtol=1e-6, atol=1e-7)
    rng = np.random.default_rng(4)
    z = rng.normal(size=(2, 3, 5))
    p = np.exp(z) / np.exp(z).sum(-1, keepdims=True)
    np.testing.assert_allclose(entropy(jnp.asarray(z)), -(p * np.log(p)).sum(-1), rtol=1e-5)
    # At temperature 2 the entropy is that of softmax(z / 2).
    p2 = np.exp(z / 2) / np.exp(z / 2).sum(-1, keepdims=True)
    np.testing.assert_allclose(
        logprobs_and_entropy(jnp.asarray(z), jnp.zeros((2, 3), jnp.int32), 2.0)[1],
        -(p2 * np.log(p2)).sum(-1), rtol=1e-5)


def test_var_explained_hand_numbers():
    # returns - values = [0, 0, 0, 1]: var 0.1875; var(returns) = 2.1875 -> 1 - 3/35
    values = jnp.array([[1.0, 2.0, 3.0, 4.0]])
    returns = jnp.array([[1.0, 2.0, 3.0, 5.0]])
    np.testing.assert_allclose(ppo.var_explained(values, returns), 1 - 0.1875 / 2.1875, rtol=1e-6)
    np.testing.assert_allclose(ppo.var_explained(returns, returns), 1.0)
    # Masked: only the first three count and are predicted exactly.
    np.testing.assert_allclose(
        ppo.var_explained(values, returns, jnp.array([[1, 1, 1, 0]])), 1.0)


def test_everything_jits():
    rng = np.random.default_rng(5)
    a, b, c = (jnp.asarray(rng.normal(size=(2, 4)), jnp.float32) for _ in range(3))
    mask = jnp.array([[1, 1, 1, 0], [1, 1, 1, 1]])
    score = jnp.array([1.0, -1.0])
    calls = [
        (ppo.whiten, (a,), {"shift_mean": False, "mask": mask}),
        (ppo.gae, (a, b, 1.0, 0.95, mask), {}),
        (ppo.kl_penalty_rewards, (score, a, b, 0.1, mask), {}),
        (ppo.policy_loss, (a, b, c, 0.2, mask), {}),
        (ppo.value_loss, (a, b, c, 0.2, mask), {}),
        (ppo.var_explained, (a, b, mask), {}),
        (logprobs_and_entropy, (a[:, :, None] * jnp.arange(3.0), jnp.zeros((2, 4), jnp.int32)),
         {}),
    ]
    for fn, args, kwargs in calls:
        eager = fn(*args, **kwargs)
        jitted = jax.jit(lambda *xs, fn=fn, kwargs=kwargs: fn(*xs, **kwargs))(*args)
        chex.assert_trees_all_close(jitted, eager, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("gamma,lam", [(1.0, 0.95)])
def test_gae_traced_gamma_lam(gamma, lam):
    # gamma and lam may be traced (e.g. from a config array) without recompiling.
    r = jnp.ones((1, 3))
    adv, _ = jax.jit(ppo.gae)(r, jnp.zeros((1, 3)), jnp.float32(gamma), jnp.float32(lam))
    np.testing.assert_allclose(adv, gae_loop(np.ones((1, 3)), np.zeros((1, 3)), gamma, lam)[0],
                               rtol=1e-6)

"""Tests for rlhf_jax.algorithms.losses: hand-worked numbers, stability, masking, jit."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rlhf_jax.algorithms import logprobs, losses

LOG2 = math.log(2.0)


def softplus(x):
    """-log sigmoid(-x) = log(1 + e^x), for writing the expected numbers."""
    return math.log1p(math.exp(x))


# --------------------------------------------------------------------------
# Bradley-Terry.
# --------------------------------------------------------------------------


def test_bradley_terry_hand_worked():
    # gaps c - r = [1, 0, -2]
    # -log sigmoid(1)  = log(1 + e^-1) = 0.3132617
    # -log sigmoid(0)  = log 2         = 0.6931472
    # -log sigmoid(-2) = log(1 + e^2)  = 2.1269280
    # mean = 3.1333369 / 3 = 1.0444456
    c = jnp.array([1.0, 0.5, 0.0])
    r = jnp.array([0.0, 0.5, 2.0])
    loss = losses.bradley_terry_loss(c, r)
    np.testing.assert_allclose(loss, 1.0444456, rtol=1e-6)
    np.testing.assert_allclose(loss, (softplus(-1) + LOG2 + softplus(2)) / 3, rtol=1e-6)


def test_bradley_terry_metrics_ties_count_half():
    # gaps [1, 0, -2, 3]: right, tie, wrong, right -> (1 + 0.5 + 0 + 1) / 4
    c = jnp.array([1.0, 0.5, 0.0, 3.0])
    r = jnp.array([0.0, 0.5, 2.0, 0.0])
    m = losses.bradley_terry_metrics(c, r)
    assert set(m) == {"loss", "accuracy", "margin"}
    np.testing.assert_allclose(m["accuracy"], 0.625)
    np.testing.assert_allclose(m["margin"], (1 + 0 - 2 + 3) / 4)
    np.testing.assert_allclose(m["loss"], losses.bradley_terry_loss(c, r))


def test_bradley_terry_shape_mismatch_raises():
    with pytest.raises(ValueError, match="r_rejected_B"):
        losses.bradley_terry_loss(jnp.zeros(3), jnp.zeros(4))
    with pytest.raises(ValueError, match=r"r_chosen_B must have shape \[B\]"):
        losses.bradley_terry_loss(jnp.zeros((3, 1)), jnp.zeros((3, 1)))


# --------------------------------------------------------------------------
# Best of N.
# --------------------------------------------------------------------------


def test_best_of_n_hand_worked():
    # Row 0: r = [0, 0, 0, 0], best 2 -> -log(1/4) = log 4 = 1.3862944
    # Row 1: r = [log 1, log 2, log 3, log 4] so softmax = [1, 2, 3, 4] / 10;
    #        best 3 -> -log(0.4) = 0.9162907
    # mean = (1.3862944 + 0.9162907) / 2 = 1.1512925
    r = jnp.array([[0.0, 0.0, 0.0, 0.0], [0.0, math.log(2), math.log(3), math.log(4)]])
    best = jnp.array([2, 3])
    np.testing.assert_allclose(losses.best_of_n_loss(r, best), 1.1512925, rtol=1e-6)


def test_best_of_two_equals_bradley_terry():
    r = jnp.array([[1.3, -0.2], [0.1, 2.0], [-4.0, -4.0], [7.0, 1.0]])
    best = jnp.array([0, 1, 0, 1])
    chosen = r[jnp.arange(4), best]
    rejected = r[jnp.arange(4), 1 - best]
    np.testing.assert_allclose(
        losses.best_of_n_loss(r, best), losses.bradley_terry_loss(chosen, rejected), rtol=1e-6
    )
    bon = losses.best_of_n_metrics(r, best)
    bt = losses.bradley_terry_metrics(chosen, rejected)
    # Row 2 is a tie, shared credit 1/2 in both conventions: (1+1+0.5+0)/4.
    np.testing.assert_allclose(bon["accuracy"], 0.625)
    np.testing.assert_allclose(bon["accuracy"], bt["accuracy"])


def test_best_of_n_metrics_accuracy_and_ties():
    r = jnp.array(
        [
            [0.0, 3.0, 1.0, 2.0],  # argmax 1, best 1 -> 1
            [5.0, 3.0, 1.0, 2.0],  # argmax 0, best 2 -> 0
            [1.0, 1.0, 1.0, 1.0],  # 4-way tie, best among them -> 1/4
            [2.0, 0.0, 2.0, 1.0],  # tie of 0 and 2, best 2 -> 1/2
        ]
    )
    best = jnp.array([1, 2, 3, 2])
    m = losses.best_of_n_metrics(r, best)
    np.testing.assert_allclose(m["accuracy"], (1 + 0 + 0.25 + 0.5) / 4)
    np.testing.assert_allclose(m["loss"], losses.best_of_n_loss(r, best))


def test_best_of_n_bad_input_raises():
    with pytest.raises(ValueError, match="best_B must have shape"):
        losses.best_of_n_loss(jnp.zeros((3, 4)), jnp.zeros(2, jnp.int32))
    with pytest.raises(ValueError, match="best_B must be integer"):
        losses.best_of_n_loss(jnp.zeros((3, 4)), jnp.zeros(3))
    with pytest.raises(ValueError, match="r_BxK must have shape"):
        losses.best_of_n_loss(jnp.zeros(3), jnp.zeros(3, jnp.int32))


# --------------------------------------------------------------------------
# Scalar label types.
# --------------------------------------------------------------------------


def test_scalar_rating_hand_worked():
    # errors [1, -2, 0.5] -> squares [1, 4, 0.25] -> mean 5.25 / 3 = 1.75
    pred = jnp.array([1.0, 0.0, 2.5])
    score = jnp.array([0.0, 2.0, 2.0])
    np.testing.assert_allclose(losses.scalar_rating_loss(pred, score), 1.75)
    m = losses.scalar_rating_metrics(pred, score)
    np.testing.assert_allclose(m["loss"], 1.75)
    np.testing.assert_allclose(m["abs_error"], 3.5 / 3, rtol=1e-6)


def test_scalar_compare_hand_worked():
    # r1 - r0 = [1, -1, 2, 0]; minus difference [0.5, 1, 2, 0] = [0.5, -2, 0, 0]
    # squares [0.25, 4, 0, 0] -> mean 4.25 / 4 = 1.0625
    r0 = jnp.array([0.0, 1.0, -1.0, 3.0])
    r1 = jnp.array([1.0, 0.0, 1.0, 3.0])
    diff = jnp.array([0.5, 1.0, 2.0, 0.0])
    np.testing.assert_allclose(losses.scalar_compare_loss(r0, r1, diff), 1.0625)
    m = losses.scalar_compare_metrics(r0, r1, diff)
    # Signs: agree, disagree, agree; the last record (label 0) is left out.
    np.testing.assert_allclose(m["accuracy"], 2 / 3, rtol=1e-6)
    # A predicted tie on a labelled record counts 0.5.
    m = losses.scalar_compare_metrics(jnp.zeros(2), jnp.array([0.0, -1.0]), jnp.array([1.0, -3.0]))
    np.testing.assert_allclose(m["accuracy"], 0.75)


def test_scalar_compare_all_zero_labels_accuracy_zero():
    m = losses.scalar_compare_metrics(jnp.zeros(2), jnp.ones(2), jnp.zeros(2))
    assert float(m["accuracy"]) == 0.0


# --------------------------------------------------------------------------
# DPO.
# --------------------------------------------------------------------------


def test_dpo_at_init_is_log2():
    pi_c = jnp.array([-10.0, -3.0, -7.5])
    pi_r = jnp.array([-12.0, -1.0, -7.0])
    m = losses.dpo_metrics(pi_c, pi_r, pi_c, pi_r, beta=0.1)
    np.testing.assert_allclose(m["loss"], LOG2, rtol=1e-6)
    np.testing.assert_allclose(m["accuracy"], 0.5)  # all ties
    np.testing.assert_allclose(m["margin"], 0.0)


def test_dpo_hand_worked():
    # beta = 0.5
    # record 0: chosen reward 0.5*(-1 - -3) = 1, rejected 0.5*(-4 - -2) = -1;
    #           logit 2 -> -log sigmoid(2) = log(1 + e^-2) = 0.1269280
    # record 1: chosen 0.5*(-5 - -4) = -0.5, rejected 0.5*(-2 - -2) = 0;
    #           logit -0.5 -> log(1 + e^0.5) = 0.9740770
    # loss = (0.1269280 + 0.9740770) / 2 = 0.5505025
    pi_c = jnp.array([-1.0, -5.0])
    ref_c = jnp.array([-3.0, -4.0])
    pi_r = jnp.array([-4.0, -2.0])
    ref_r = jnp.array([-2.0, -2.0])
    loss = losses.dpo_loss(pi_c, pi_r, ref_c, ref_r, 0.5)
    np.testing.assert_allclose(loss, 0.5505025, rtol=1e-6)
    np.testing.assert_allclose(loss, (softplus(-2) + softplus(0.5)) / 2, rtol=1e-6)
    m = losses.dpo_metrics(pi_c, pi_r, ref_c, ref_r, 0.5)
    np.testing.assert_allclose(m["loss"], loss)
    np.testing.assert_allclose(m["accuracy"], 0.5)
    np.testing.assert_allclose(m["margin"], (2.0 - 0.5) / 2)
    np.testing.assert_allclose(m["chosen_reward"], (1.0 - 0.5) / 2)
    np.testing.assert_allclose(m["rejected_reward"], (-1.0 + 0.0) / 2)


def test_dpo_bad_beta_raises():
    with pytest.raises(ValueError, match="beta must be > 0"):
        losses.dpo_loss(jnp.zeros(2), jnp.zeros(2), jnp.zeros(2), jnp.zeros(2), 0.0)


# --------------------------------------------------------------------------
# Stability at large gaps.
# --------------------------------------------------------------------------


@pytest.mark.parametrize("gap", [1e4, -1e4])
def test_large_gaps_finite_values_and_grads(gap):
    c = jnp.array([gap, 0.0])
    r = jnp.array([0.0, 0.0])
    loss, (gc, gr) = jax.value_and_grad(losses.bradley_terry_loss, argnums=(0, 1))(c, r)
    assert np.isfinite(loss) and np.all(np.isfinite(gc)) and np.all(np.isfinite(gr))
    # Wrong by 1e4: loss 1e4 on that record; right by 1e4: 0.
    expected = (max(-gap, 0.0) + LOG2) / 2
    np.testing.assert_allclose(loss, expected, rtol=1e-6)
    # d/dc of mean softplus(r - c): -sigmoid(r - c) / B.
    np.testing.assert_allclose(gc, [-(1.0 if gap < 0 else 0.0) / 2, -0.25], atol=1e-7)

    r_BxK = jnp.array([[gap, 0.0, 0.0, -gap]])
    best = jnp.array([0])
    loss, g = jax.value_and_grad(losses.best_of_n_loss)(r_BxK, best)
    assert np.isfinite(loss) and np.all(np.isfinite(g))

    dpo_grads = jax.grad(losses.dpo_loss, argnums=(0, 1, 2, 3))(c, r, r, c, 1.0)
    assert all(np.all(np.isfinite(x)) for x in dpo_grads)

    logits = jnp.array([[[gap, 0.0, -gap]]])
    targets = jnp.array([[2]])
    mask = jnp.ones((1, 1))
    loss, g = jax.value_and_grad(losses.sft_loss)(logits, targets, mask)
    assert np.isfinite(loss) and np.all(np.isfinite(g))
    np.testing.assert_allclose(loss, abs(gap) * (2 if gap > 0 else 0), rtol=1e-6)


def test_bf16_inputs_upcast():
    c = jnp.array([1.0, 0.0], jnp.bfloat16)
    r = jnp.array([0.0, 0.0], jnp.bfloat16)
    loss = losses.bradley_terry_loss(c, r)
    assert loss.dtype == jnp.float32
    np.testing.assert_allclose(loss, (softplus(-1) + LOG2) / 2, rtol=1e-6)


# --------------------------------------------------------------------------
# Token log-probs, sequence log-probs and SFT.
# --------------------------------------------------------------------------

# One sequence, T=3, V=3. Rows of logits are [log 1, log 2, log 1] etc., so the
# softmax probabilities are exact quarters.
_LOGITS = jnp.log(
    jnp.array(
        [
            [
                [1.0, 2.0, 1.0],  # p = [.25, .5, .25]
                [2.0, 1.0, 1.0],  # p = [.5, .25, .25]
                [1.0, 1.0, 2.0],  # p = [.25, .25, .5]
            ]
        ]
    )
)
_TARGETS = jnp.array([[1, 2, 2]])  # probs .5, .25, .5


def test_token_logprobs_hand_worked():
    logp = logprobs.token_logprobs(_LOGITS, _TARGETS)
    np.testing.assert_allclose(logp, np.log([[0.5, 0.25, 0.5]]), rtol=1e-6)


def test_token_logprobs_temperature():
    # T=2 halves the log-odds: row 0 becomes [1, sqrt 2, 1] / (2 + sqrt 2).
    logp = logprobs.token_logprobs(_LOGITS, _TARGETS, temperature=2.0)
    s2 = math.sqrt(2.0)
    np.testing.assert_allclose(logp[0, 0], math.log(s2 / (2 + s2)), rtol=1e-6)
    with pytest.raises(ValueError, match="temperature must be > 0"):
        logprobs.token_logprobs(_LOGITS, _TARGETS, temperature=0.0)


def test_token_logprobs_upcast_before_the_temperature():
    # bf16 logits are divided by T in float32: the result is the float32 answer
    # to the bits, where dividing in bf16 first rounds the tempered logits.
    logits = jnp.asarray(np.random.default_rng(3).normal(size=(4, 50)) * 8, jnp.bfloat16)
    targets = jnp.arange(4)
    want = jax.nn.log_softmax(logits.astype(jnp.float32) / 0.7)[jnp.arange(4), targets]
    got = logprobs.token_logprobs(logits, targets, 0.7)
    assert got.dtype == jnp.float32
    np.testing.assert_array_equal(got, want)
    rounded = jax.nn.log_softmax((logits / 0.7).astype(jnp.float32))[jnp.arange(4), targets]
    assert not np.array_equal(np.asarray(rounded), np.asarray(want))


def test_sequence_logprobs_masked_sum():
    # mask [1, 0, 1]: log .5 + log .5 = -1.3862944
    mask = jnp.array([[1, 0, 1]])
    np.testing.assert_allclose(
        logprobs.sequence_logprobs(_LOGITS, _TARGETS, mask), [2 * math.log(0.5)], rtol=1e-6
    )
    np.testing.assert_allclose(
        logprobs.sequence_logprobs(_LOGITS, _TARGETS, mask.astype(bool)),
        [2 * math.log(0.5)],
        rtol=1e-6,
    )


def test_sft_loss_hand_worked():
    # mask [0, 1, 1]: -(log .25 + log .5) / 2 = (1.3862944 + 0.6931472) / 2 = 1.0397208
    mask = jnp.array([[0.0, 1.0, 1.0]])
    np.testing.assert_allclose(losses.sft_loss(_LOGITS, _TARGETS, mask), 1.0397208, rtol=1e-6)


def test_sft_mask_respected():
    rng = np.random.default_rng(0)
    logits = jnp.asarray(rng.normal(size=(2, 4, 5)), jnp.float32)
    targets = jnp.asarray(rng.integers(0, 5, size=(2, 4)))
    mask = jnp.array([[0, 1, 1, 0], [1, 1, 0, 0]])
    # Change logits and targets at masked positions only; pads may be out of
    # vocab (LHP pads with 50259), which must not leak NaN into the loss.
    noisy_logits = jnp.where(mask[..., None] == 0, 1e3 * logits + 7.0, logits)
    noisy_targets = jnp.where(mask == 0, 50259, targets)
    base = losses.sft_loss(logits, targets, mask)
    noisy = losses.sft_loss(noisy_logits, noisy_targets, mask)
    np.testing.assert_allclose(noisy, base, rtol=1e-6)
    np.testing.assert_allclose(
        logprobs.sequence_logprobs(noisy_logits, noisy_targets, mask),
        logprobs.sequence_logprobs(logits, targets, mask),
        rtol=1e-6,
    )
    # Masked positions get exactly zero gradient.
    g = jax.grad(losses.sft_loss)(noisy_logits, noisy_targets, mask)
    assert np.all(np.isfinite(g))
    np.testing.assert_array_equal(np.asarray(g)[np.asarray(mask) == 0], 0.0)
    # The loss is the mean over the 4 unmasked tokens, not per sequence.
    logp = logprobs.token_logprobs(logits, targets)
    np.testing.assert_allclose(base, -float(jnp.sum(logp * mask)) / 4, rtol=1e-6)


def test_sft_all_zero_mask_is_zero_not_nan():
    mask = jnp.zeros((1, 3))
    loss, g = jax.value_and_grad(losses.sft_loss)(_LOGITS, _TARGETS, mask)
    assert float(loss) == 0.0
    np.testing.assert_array_equal(g, 0.0)


def test_logprob_shape_errors():
    with pytest.raises(ValueError, match="targets_BxT must have shape"):
        logprobs.token_logprobs(_LOGITS, jnp.zeros((1, 2), jnp.int32))
    with pytest.raises(ValueError, match="mask_BxT must have shape"):
        losses.sft_loss(_LOGITS, _TARGETS, jnp.ones((1, 2)))


# --------------------------------------------------------------------------
# jit.
# --------------------------------------------------------------------------


def test_all_losses_jit():
    c = jnp.array([1.0, 0.5, 0.0])
    r = jnp.array([0.0, 0.5, 2.0])
    r_BxK = jnp.array([[0.3, 0.1, -0.2, 0.0]])
    best = jnp.array([2])
    mask = jnp.array([[0.0, 1.0, 1.0]])
    cases = [
        (losses.bradley_terry_loss, (c, r)),
        (losses.bradley_terry_metrics, (c, r)),
        (losses.best_of_n_loss, (r_BxK, best)),
        (losses.best_of_n_metrics, (r_BxK, best)),
        (losses.scalar_rating_loss, (c, r)),
        (losses.scalar_rating_metrics, (c, r)),
        (losses.scalar_compare_loss, (c, r, c)),
        (losses.scalar_compare_metrics, (c, r, c)),
        (losses.dpo_loss, (c, r, r, c, 0.1)),
        (losses.dpo_metrics, (c, r, r, c, 0.1)),
        (losses.sft_loss, (_LOGITS, _TARGETS, mask)),
        (logprobs.sequence_logprobs, (_LOGITS, _TARGETS, mask, 0.7)),
        (logprobs.token_logprobs, (_LOGITS, _TARGETS, 0.7)),
    ]
    for fn, args in cases:
        eager = fn(*args)
        # Traced beta / temperature too: both may come from a schedule.
        jitted = jax.jit(fn)(*args)
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6), eager, jitted)

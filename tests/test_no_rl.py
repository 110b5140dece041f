"""Training without RL: likelihood + unlikelihood on span marks (`rlhf_jax.stages.unlikelihood`)
and best-of-N then SFT (`rlhf_jax.stages.expert_iteration`), on hand-worked numbers and
on the tiny problem of `tests/test_rollout.py`."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rlhf_jax import config_lib
from rlhf_jax.algorithms import losses
from rlhf_jax.data.datasets import QueryDataset
from rlhf_jax.data.labels import Labels
from rlhf_jax.infra import parallel
from rlhf_jax.models import GPT2LMHeadModel
from rlhf_jax.models.heads import PolicyWithValueHead
from rlhf_jax.stages import expert_iteration, unlikelihood
from rlhf_jax.stages.batched import best_of_n
from rlhf_jax.stages.rollout import PPOModels, TaskSpec
from tests.test_rollout import (CONFIG, PAD, TARGET, R, V, random_params, random_queries,
                                target_fraction_rm)

Q = 4


def test_likelihood_unlikelihood_by_hand():
    logp = jnp.log(jnp.asarray([[0.5, 0.25, 0.9]]))
    like, unlike = jnp.asarray([[1, 1, 0]]), jnp.asarray([[0, 0, 1]])
    s = jax.jit(losses.likelihood_unlikelihood_sums)(logp, like, unlike)
    assert float(s["like"]) == pytest.approx(np.log(2) + np.log(4), rel=1e-6)
    assert float(s["unlike"]) == pytest.approx(-np.log(0.1), rel=1e-5)
    assert float(s["unlike_prob"]) == pytest.approx(0.9, rel=1e-6)
    # mean like (log 8 / 2) + 0.5 * mean unlike (-log 0.1).
    want = np.log(8) / 2 + 0.5 * -np.log(0.1)
    assert float(losses.likelihood_unlikelihood_loss(logp, like, unlike, 0.5)) == pytest.approx(
        want, rel=1e-5)
    # p = 1 stays finite; gradients push a marked token's probability down.
    assert np.isfinite(float(losses.log1m_exp(0.0)))
    g = jax.jit(jax.grad(lambda x: losses.likelihood_unlikelihood_loss(x, 0 * like, unlike,
                                                                       1.0)))(logp)
    assert float(g[0, 2]) > 0 and float(g[0, 0]) == 0


def _labels(n, seed, k=2):
    """Random responses; TARGET tokens are marked wrong; the response with fewer is preferred."""
    rng = np.random.default_rng(seed)
    resp = rng.integers(0, V, (n, k, R)).astype(np.int32)
    marks = (resp == TARGET).astype(np.int32)
    q = rng.integers(0, V, (n, Q)).astype(np.int32)
    return Labels("pairwise", q, np.ones_like(q), resp, np.ones_like(resp), PAD,
                  best_N=np.argmin(marks.sum(2), 1), span_mask_NxKxR=marks)


def test_ul_rows_by_hand():
    resp = np.asarray([[[1, 2, 7], [4, 5, PAD]], [[1, 1, 1], [2, 2, 2]]], np.int32)
    mask = (resp != PAD).astype(np.int32)
    marks = np.asarray([[[0, 1, 0], [1, 0, 0]], [[0, 0, 0], [0, 0, 0]]], np.int32)
    labels = Labels("pairwise", np.ones((2, 1), np.int32), np.ones((2, 1), np.int32), resp,
                    mask, PAD, best_N=np.asarray([1, 0]), span_mask_NxKxR=marks)
    rows = unlikelihood.ul_rows(labels)
    # Record 0: response 0 only lowers its marked token, response 1 (preferred) raises
    # its unmarked real token and lowers its marked one; record 1: the preferred
    # response raises every token, the other has nothing to learn and is dropped.
    np.testing.assert_array_equal(rows["like"], [[0, 0, 0], [0, 1, 0], [1, 1, 1]])
    np.testing.assert_array_equal(rows["unlike"], [[0, 1, 0], [1, 0, 0], [0, 0, 0]])
    np.testing.assert_array_equal(rows["response"][2], [1, 1, 1])
    with pytest.raises(ValueError, match="the ul stage trains on span marks"):
        unlikelihood.ul_rows(Labels(**{**labels.__dict__, "span_mask_NxKxR": None}))


def _ul_cfg():
    c = config_lib.base_config()
    c.labels.type, c.labels.num_train, c.labels.num_val = "pairwise", 128, 32
    c.ul.batch_size, c.ul.lr, c.ul.log_every, c.ul.epochs, c.ul.alpha = 32, 1e-2, 1, 2, 1.0
    return c


def _train_ul(num_devices, stop_after=None):
    lm = GPT2LMHeadModel(CONFIG)
    params = {"transformer": random_params(PolicyWithValueHead(CONFIG), seed=0)["transformer"]}
    return unlikelihood.train_ul(_ul_cfg(), model=lm, params=params, train=_labels(128, 1),
                                 val=_labels(32, 2), dp=parallel.DataParallel("pmap", num_devices),
                                 rng=jax.random.key(0), stop_after=stop_after)


def test_ul_lowers_the_marked_tokens_probability():
    _, summary = _train_ul(1)
    before, after = summary["initial_val"], summary["final_val"]
    print({k: (round(before[k], 4), round(after[k], 4)) for k in after})
    assert after["val_marked_prob"] < 0.5 * before["val_marked_prob"]
    assert after["val_likelihood"] < before["val_likelihood"] + 0.05


def test_ul_on_4_devices_equals_one():
    p1, s1 = _train_ul(1, stop_after=2)
    p4, s4 = _train_ul(4, stop_after=2)
    for k, v in s1["train"].items():
        assert s4["train"][k] == pytest.approx(v, abs=1e-5), k
    # Params to Adam's float noise (its normalised steps amplify 1e-7 gradient noise).
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-4), p1, p4)


def test_expert_iteration_distils_best_of_n():
    # Policy: the tiny random GPT-2; RM: the fraction of TARGET tokens. Two
    # rounds of best-of-4 + SFT must raise the policy's own TARGET rate.
    c = config_lib.base_config()
    c.task.response_length, c.task.temperature, c.task.pad_token = R, 1.0, PAD
    c.task.truncate_token, c.task.penalty_reward_value, c.task.eos_token = None, None, None
    b = c.bon_sft
    b.n, b.num_queries, b.rounds, b.batch_size, b.epochs, b.lr, b.log_every = 4, 64, 2, 32, 4, \
        1e-2, 4
    lm = GPT2LMHeadModel(CONFIG)
    params = {"transformer": random_params(PolicyWithValueHead(CONFIG), seed=0)["transformer"]}
    rm, rm_params = target_fraction_rm(CONFIG, TARGET)
    q, m = random_queries(0, 512)
    qs = QueryDataset(q, m, seed=0)
    dp = parallel.DataParallel("pmap", 1)
    task = TaskSpec.from_config(c.task)
    out, summary = expert_iteration.train_bon_sft(c, task=task, model=lm, params=params,
                                                  rm_model=rm, rm_params=rm_params, queries=qs,
                                                  dp=dp, rng=jax.random.key(0))
    models = PPOModels(policy=lm, reference=lm, reward=rm)

    def target_rate(p):  # best-of-1: plain samples of the policy
        best, _ = best_of_n(dp, models, task, 1, p, rm_params, q[:128], m[:128],
                            jax.random.key(9), 64)
        return float(np.mean(best == TARGET))

    before, after = target_rate(params), target_rate(out)
    print(f"TARGET rate {before:.3f} -> {after:.3f}; chosen scores "
          f"{summary['bon_sft']['chosen_score']:.3f}, {summary['bon_sft_r2']['chosen_score']:.3f}")
    assert before < 1.5 / V and after > 2.5 / V
    # Round 2 samples from the round-1 policy: its chosen samples score higher.
    assert summary["bon_sft_r2"]["chosen_score"] > summary["bon_sft"]["chosen_score"]

"""The token-level reward model (Wu et al. 2023) and dense PPO rewards: the span
loss and the per-token reward assembly on hand-worked numbers, the RM's token
head, and training on comparisons together with span marks (1 and 4 devices)."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rlhf_jax import config_lib
from rlhf_jax.algorithms import losses, ppo
from rlhf_jax.data.labels import Labels
from rlhf_jax.infra import parallel
from rlhf_jax.models import GPT2Config, loading
from rlhf_jax.stages import reward_train
from rlhf_jax.stages.rollout import TaskSpec, TokenRewards, rm_scores, rm_scores_and_token_rewards

V, Q, R, PAD, BAD = 16, 4, 6, 16, 3
CONFIG = GPT2Config(vocab_size=V, n_positions=Q + R, n_embd=32, n_layer=2, n_head=2)


def test_span_token_sums_by_hand():
    logits = jnp.asarray([[0.0, 2.0], [-1.0, 3.0]])
    marks = jnp.asarray([[0, 1], [1, 1]])
    mask = jnp.asarray([[1, 1], [1, 0]])
    s = losses.span_token_sums(logits, marks, mask)
    # -log(1 - sigmoid(0)) + -log sigmoid(2) + -log sigmoid(-1); the 4th token is masked.
    want = np.log(2) + np.log1p(np.exp(-2)) + np.log1p(np.exp(1))
    assert float(s["loss"]) == pytest.approx(want, rel=1e-6)
    assert [float(s[k]) for k in ("count", "correct", "marked", "found")] == [3, 2, 2, 1]
    assert float(losses.span_token_loss(logits, marks, mask)) == pytest.approx(want / 3, rel=1e-6)


def test_token_level_rewards_by_hand():
    p = jnp.asarray([[0.2, 0.7, 0.9]])
    mask = jnp.asarray([[1, 1, 0]])
    np.testing.assert_allclose(ppo.token_level_rewards(p, mask, 2.0, 0.5, "hard"),
                               [[1.0, -2.0, 0.0]])
    # prob: 2 * ((1 - p) * 0.5 - p) = [0.4, -1.1].
    np.testing.assert_allclose(ppo.token_level_rewards(p, mask, 2.0, 0.5, "prob"),
                               [[0.4, -1.1, 0.0]], rtol=1e-6)


def test_kl_penalty_rewards_add_dense_token_rewards_inside_the_mask():
    # kl = [0.2, 0, (masked)]; non-score = -0.5 * kl; score 1 at the last valid index 1.
    rewards, non_score, kl = ppo.kl_penalty_rewards(
        jnp.asarray([1.0]), jnp.asarray([[0.5, 0.2, 0.1]]), jnp.asarray([[0.3, 0.2, 0.4]]), 0.5,
        jnp.asarray([[1, 1, 0]]), token_rewards_BxT=jnp.asarray([[0.25, -0.5, 0.3]]))
    np.testing.assert_allclose(rewards, [[-0.1 + 0.25, 1.0 - 0.5, 0.0]], rtol=1e-6)
    np.testing.assert_allclose(non_score, [[-0.1, 0.0, 0.0]], rtol=1e-6)


def _rm_config(token_head=True, head="linear"):
    c = config_lib.base_config()
    c.reward.token_head, c.reward.head = token_head, head
    return c


@functools.lru_cache(maxsize=None)
def _rm(token_head=True, head="linear", seed=0):
    model = loading.reward_model(_rm_config(token_head, head), CONFIG)
    params = jax.jit(model.init)(jax.random.key(seed), jnp.zeros((1, Q + R), jnp.int32))["params"]
    return model, params


def test_token_head_params_and_one_pass_outputs():
    model, params = _rm()
    assert {"span_head", "reward_head", "transformer"} <= set(params)
    ids = jax.random.randint(jax.random.key(1), (3, Q + R), 0, V)
    mask = jnp.ones((3, Q + R), jnp.int32)
    apply = jax.jit(model.apply, static_argnames="method")
    r, logits = apply({"params": params}, ids, mask, None, method="rewards_and_token_logits")
    np.testing.assert_allclose(r, apply({"params": params}, ids, mask), rtol=1e-6)
    np.testing.assert_allclose(logits, apply({"params": params}, ids, mask,
                                             method="token_logits"), rtol=1e-6)
    assert logits.shape == (3, Q + R)
    assert "span_head" not in _rm(token_head=False)[1]


def test_rollout_scores_and_dense_rewards_of_a_token_rm():
    model, params = _rm()
    rng = np.random.default_rng(0)
    q = jnp.asarray(rng.integers(0, V, (4, Q)), jnp.int32)
    qm = jnp.ones((4, Q), jnp.int32)
    processed = np.asarray(rng.integers(0, V, (4, R)), np.int32)
    processed[1, 3:] = PAD  # truncated: no dense reward after the cut
    processed = jnp.asarray(processed)
    task = TaskSpec(response_length=R, temperature=1.0, pad_token=PAD)
    token = TokenRewards(coef=1.0, clean=0.0, mode="prob")
    scores, dense = jax.jit(lambda p: rm_scores_and_token_rewards(model, p, q, qm, processed,
                                                                  task, token))(params)
    np.testing.assert_allclose(
        scores, jax.jit(lambda p: rm_scores(model, p, q, qm, processed, task))(params), rtol=1e-5)
    pm = (processed != PAD).astype(jnp.int32)
    logits = jax.jit(lambda p: model.apply({"params": p}, jnp.concatenate([q, processed], 1),
                                           jnp.concatenate([qm, pm], 1),
                                           method="token_logits"))(params)[:, Q:]
    np.testing.assert_allclose(dense, -jax.nn.sigmoid(logits) * pm, rtol=1e-5, atol=1e-7)
    assert np.all(np.asarray(dense)[1, 3:] == 0)


def _span_labels(n, seed):
    """Pairwise labels: responses of random tokens; BAD tokens are marked; the
    response with fewer BAD tokens is preferred."""
    rng = np.random.default_rng(seed)
    resp = rng.integers(0, V, (n, 2, R)).astype(np.int32)
    lengths = rng.integers(3, R + 1, (n, 2))
    mask = (np.arange(R)[None, None] < lengths[..., None]).astype(np.int32)
    resp = np.where(mask == 1, resp, PAD)
    marks = ((resp == BAD) & (mask == 1)).astype(np.int32)
    best = (marks[:, 1].sum(1) < marks[:, 0].sum(1)).astype(np.int32)
    q = rng.integers(0, V, (n, Q)).astype(np.int32)
    return Labels("pairwise", q, np.ones_like(q), resp, mask, PAD, best_N=best,
                  span_mask_NxKxR=marks)


def _train(num_devices, stop_after=None, epochs=3, log_every=4):
    cfg = _rm_config()
    cfg.labels.type, cfg.labels.num_train, cfg.labels.num_val = "pairwise", 256, 64
    cfg.reward.batch_size, cfg.reward.epochs, cfg.reward.lr = 32, epochs, 3e-3
    cfg.reward.normalize_before = cfg.reward.normalize_after = False
    cfg.reward.log_every, cfg.reward.adam = log_every, "torch"
    model, params = _rm()
    return reward_train.train_reward_model(cfg, rm_model=model, rm_params=params,
                                     train=_span_labels(256, 1), val=_span_labels(64, 2),
                                     dp=parallel.DataParallel("pmap", num_devices),
                                     rng=jax.random.key(0), stop_after=stop_after)


def test_token_rm_learns_span_marks_with_the_comparisons():
    _, summary = _train(1)
    before, after = summary["initial_val"], summary["final_val"]
    print({k: (round(before[k], 3), round(after[k], 3)) for k in after})
    assert after["val_span_loss"] < 0.2 * before["val_span_loss"]
    assert after["val_span_accuracy"] > 0.95 and after["val_span_recall"] > 0.8
    assert after["val_accuracy"] > 0.6  # the comparisons are learnt beside the marks
    assert "label_loss" in summary["train"] and "span_loss" in summary["train"]


def test_token_rm_training_does_not_depend_on_the_device_count():
    # Shards hold different numbers of response tokens: the span loss is
    # normalised by the global count, so 4 devices give the 1-device result.
    p1, s1 = _train(1, stop_after=3, epochs=1, log_every=1)
    p4, s4 = _train(4, stop_after=3, epochs=1, log_every=1)
    for k, v in s1["train"].items():
        assert s4["train"][k] == pytest.approx(v, abs=1e-5), k
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-5), p1, p4)


def test_token_head_needs_marked_labels():
    cfg = _rm_config()
    cfg.labels.type, cfg.labels.num_train, cfg.labels.num_val = "pairwise", 32, 0
    cfg.reward.normalize_before = cfg.reward.normalize_after = False
    model, params = _rm()
    unmarked = _span_labels(32, 0)
    unmarked = Labels(**{**unmarked.__dict__, "span_mask_NxKxR": None})
    with pytest.raises(ValueError, match="reward.token_head trains on span marks, but the "
                                         "training labels carry none"):
        reward_train.train_reward_model(cfg, rm_model=model, rm_params=params, train=unmarked,
                                  val=None, dp=parallel.DataParallel("pmap", 1),
                                  rng=jax.random.key(0))

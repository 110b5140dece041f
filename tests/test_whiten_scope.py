"""`ppo.whiten_scope="minibatch"`: LHP's whitening, per minibatch and per rank, pinned to numpy.

LHP (`train_policy.py`, `PPOTrainer.loss`, lines 319-372) whitens the rewards,
recomputes GAE and whitens the advantages inside the loss, on each MPI rank's
minibatch alone; the gradients are then averaged over ranks. Below, `lhp_loss`
re-writes that arithmetic in plain numpy loops (or jnp, for a gradient) and
is run on each device's rows of each minibatch of each epoch. A toy policy
(logits and values looked up per token) keeps the model out of the way.
"""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from rlhf_jax import config_check, config_lib
from rlhf_jax.algorithms.ppo import Rollout, make_update_step
from rlhf_jax.infra import parallel
from rlhf_jax.stages.train_ppo import hparams, init_state, make_optimizer

B, Q, R, V = 32, 3, 5, 7  # global batch, query, response, vocabulary
NMB, EPOCHS, DEVICES = 2, 2, 4
TEMPERATURE, KL_COEF = 0.7, 0.1
REP, SHARD = parallel.REP, parallel.SHARD


def config(scope: str, lr: float) -> ml_collections.ConfigDict:
    """The base config with this test's values, so every field a trainer reads exists."""
    c = config_lib.base_config()
    c.seed = 3
    c.task.temperature = TEMPERATURE
    c.ppo.update(dict(batch_size=B, nminibatches=NMB, noptepochs=EPOCHS, lr=lr, adam="torch",
                      adam_eps=1e-5, cliprange=0.2, cliprange_value=0.2, vf_coef=0.1, gamma=1.0,
                      lam=0.95, whiten_rewards=True, whiten_scope=scope, total_episodes=B * 10,
                      reward_source="rm"))
    c.kl.update(dict(coef=KL_COEF, adaptive=False, target=6.0, horizon=10000))
    return c


def toy_apply(params, ids_BxT, mask_BxT, logits_at=slice(None)):
    """Logits and value of each position looked up from its token (a bigram-free toy)."""
    del mask_BxT
    p = params["policy"]
    return p["emb"][ids_BxT][:, logits_at], p["val"][ids_BxT]


def toy_params(seed=0):
    rng = np.random.default_rng(seed)
    return {"policy": {"emb": rng.normal(0, 1, (V, V)).astype(np.float32),
                       "val": rng.normal(0, 0.5, V).astype(np.float32)}}


def rollout(seed=1) -> Rollout:
    """Random Ziegler-style rollout: fixed-length responses, score at the last token."""
    rng = np.random.default_rng(seed)
    logp = -rng.uniform(0.5, 3.0, (B, R)).astype(np.float32)
    return Rollout(
        query_BxQ=rng.integers(0, V, (B, Q)).astype(np.int32),
        query_mask_BxQ=np.ones((B, Q), np.int32),
        response_BxR=rng.integers(0, V, (B, R)).astype(np.int32),
        response_mask_BxR=np.ones((B, R), np.int32), logprobs_BxR=logp,
        ref_logprobs_BxR=logp + rng.normal(0, 0.5, (B, R)).astype(np.float32),
        values_BxR=rng.normal(0, 1, (B, R)).astype(np.float32),
        scores_B=rng.normal(0.5, 1.5, B).astype(np.float32),
        score_index_B=np.full(B, R - 1, np.int32))


# ---------------------------------------------------------------- LHP, re-written


def whiten(xp, x, shift_mean=True):
    """LHP `utils/core.py` `whiten`: population moments over every entry, eps 1e-8."""
    mean = xp.mean(x)
    var = xp.mean(xp.square(x - mean))
    out = (x - mean) / xp.sqrt(var + 1e-8)
    return out if shift_mean else out + mean


def lhp_loss(xp, params, mb):
    """LHP `PPOTrainer.loss` on one rank's minibatch: `(loss, stats)`."""
    rewards = whiten(xp, mb["rewards"], shift_mean=False)
    values = mb["values"]
    lastgaelam, reversed_adv = 0.0, []
    for t in reversed(range(R)):
        nextvalues = values[:, t + 1] if t < R - 1 else 0.0
        delta = rewards[:, t] + 1.0 * nextvalues - values[:, t]
        lastgaelam = delta + 1.0 * 0.95 * lastgaelam
        reversed_adv.append(lastgaelam)
    advantages = xp.stack(reversed_adv[::-1], axis=1)
    returns = advantages + values
    advantages = whiten(xp, advantages)
    # analyze_responses_op: logits at context_length - 1 : -1, divided by T.
    ids = xp.concatenate([mb["query"], mb["response"]], axis=1)
    logits = params["emb"][ids][:, Q - 1:-1] / TEMPERATURE
    shifted = logits - xp.max(logits, axis=-1, keepdims=True)
    logp_all = shifted - xp.log(xp.sum(xp.exp(shifted), axis=-1, keepdims=True))
    logprob = xp.take_along_axis(logp_all, mb["response"][..., None], axis=-1)[..., 0]
    vpred = params["val"][ids][:, Q - 1:-1]
    vpredclipped = xp.clip(vpred, values - 0.2, values + 0.2)
    vf_losses1, vf_losses2 = xp.square(vpred - returns), xp.square(vpredclipped - returns)
    vf_loss = 0.5 * xp.mean(xp.maximum(vf_losses1, vf_losses2))
    ratio = xp.exp(logprob - mb["logp"])
    pg_losses = -advantages * ratio
    pg_losses2 = -advantages * xp.clip(ratio, 0.8, 1.2)
    pg_loss = xp.mean(xp.maximum(pg_losses, pg_losses2))
    stats = {"ppo/loss/policy": pg_loss, "ppo/loss/value": vf_loss,
             "ppo/policy/clipfrac": xp.mean(pg_losses2 > pg_losses),
             "ppo/val/clipfrac": xp.mean(vf_losses2 > vf_losses1),
             "ppo/policy/approxkl": 0.5 * xp.mean(xp.square(logprob - mb["logp"])),
             "ppo/returns/mean": xp.mean(returns), "ppo/returns/var": xp.var(returns),
             "ppo/val/mean": xp.mean(values), "ppo/val/var": xp.var(values),
             "ppo/val/error": xp.mean(xp.square(vpred - returns))}
    return pg_loss + 0.1 * vf_loss, stats


def rank_minibatches(ro: Rollout, seed: int):
    """[epoch][minibatch][device] -> rows: the update's permutation (ours; LHP drew its
    own per rank with numpy), each device taking its slice of every minibatch."""
    key = jax.random.fold_in(jax.random.key(seed), 0)  # update 0
    mb_local = B // NMB // DEVICES
    out = []
    for epoch_key in jax.random.split(key, EPOCHS):
        perm = np.asarray(jax.random.permutation(epoch_key, B)).reshape(NMB, B // NMB)
        out.append([[perm[m, d * mb_local:(d + 1) * mb_local] for d in range(DEVICES)]
                    for m in range(NMB)])
    return out


def lhp_data(ro: Rollout) -> dict:
    """LHP `compute_rewards` (lines 149-154): per-token -beta * kl, the score at the end."""
    rewards = -KL_COEF * (ro.logprobs_BxR - ro.ref_logprobs_BxR)
    rewards[:, -1] += ro.scores_B
    return {"query": ro.query_BxQ, "response": ro.response_BxR, "values": ro.values_BxR,
            "logp": ro.logprobs_BxR, "rewards": rewards}


def run_ours(scope: str, lr: float, mode: str = "pmap"):
    cfg = config(scope, lr)
    dp = parallel.DataParallel(mode, DEVICES)
    optimizer = make_optimizer(cfg.ppo)
    step = dp.compile(make_update_step(toy_apply, optimizer, hparams(cfg), dp.batch_axes),
                      (REP, SHARD), (REP, REP))
    state = dp.replicate(init_state(toy_params(), optimizer, cfg))
    state, stats = step(state, dp.shard(rollout()))
    return (jax.tree.map(np.asarray, dp.unreplicate(state).params),
            {k: float(np.asarray(v).reshape(-1)[0]) for k, v in dp.unreplicate(stats).items()})


# ---------------------------------------------------------------- tests


@pytest.mark.parametrize("mode", ["pmap", "mesh"])
def test_minibatch_scope_statistics_equal_lhp_numpy_per_rank(mode):
    # lr 0: every minibatch sees the initial params, so each statistic is LHP's
    # loss arithmetic on that rank's rows, averaged over epochs, minibatches, ranks.
    ro, params = rollout(), toy_params()["policy"]
    data = lhp_data(ro)
    per = [lhp_loss(np, params, {k: v[rows] for k, v in data.items()})[1]
           for epoch in rank_minibatches(ro, seed=3) for mb in epoch for rows in mb]
    want = {k: float(np.mean([s[k] for s in per])) for k in per[0]}
    # LHP `record_step_stats` (line 241), from the averaged statistics.
    want["ppo/val/var_explained"] = 1 - want["ppo/val/error"] / want["ppo/returns/var"]
    _, got = run_ours("minibatch", lr=0.0, mode=mode)
    for k, v in want.items():
        np.testing.assert_allclose(got[k], v, rtol=2e-5, atol=2e-6, err_msg=k)
    if mode == "pmap":
        # The global scheme (one whitening over all 32 rows) gives other numbers.
        _, glob = run_ours("global", lr=0.0, mode=mode)
        assert abs(glob["ppo/loss/policy"] - want["ppo/loss/policy"]) > 1e-3
        assert abs(glob["ppo/returns/var"] - want["ppo/returns/var"]) > 1e-3


def test_minibatch_scope_update_equals_lhp_rank_averaged_gradient_steps():
    # lr > 0: LHP's loop. Each minibatch: every rank's gradient of its own loss,
    # averaged over ranks (`utils.minimize` with the MPI communicator), one Adam step.
    import optax

    lr = 0.05
    ro = rollout()
    data = {k: jnp.asarray(v) for k, v in lhp_data(ro).items()}
    params = jax.tree.map(jnp.asarray, toy_params()["policy"])
    grad = jax.jit(jax.grad(lambda p, mb: lhp_loss(jnp, p, mb)[0]))
    # Torch-style Adam, constant lr within an update (LHP's lrnow), as make_optimizer.
    opt = optax.adam(lr, eps=1e-5)
    opt_state = opt.init(params)
    for epoch in rank_minibatches(ro, seed=3):
        for mb in epoch:
            grads = [grad(params, {k: v[rows] for k, v in data.items()}) for rows in mb]
            mean = jax.tree.map(lambda *g: sum(g) / len(g), *grads)
            updates, opt_state = opt.update(mean, opt_state, params)
            params = optax.apply_updates(params, updates)
    got, _ = run_ours("minibatch", lr=lr)
    start = toy_params()["policy"]
    moved = float(np.max(np.abs(np.asarray(params["emb"]) - start["emb"])))
    assert moved > 0.05  # the step is not vacuous
    for k in ("emb", "val"):
        np.testing.assert_allclose(got["policy"][k], params[k], rtol=1e-4, atol=2e-6)


def test_minibatch_scope_with_one_minibatch_on_one_device_equals_global():
    cfg = config("minibatch", lr=1e-2)
    cfg.ppo.nminibatches = 1
    results = {}
    for scope in ("global", "minibatch"):
        cfg.ppo.whiten_scope = scope
        optimizer = make_optimizer(cfg.ppo)
        step = jax.jit(make_update_step(toy_apply, optimizer, hparams(cfg), None))
        state, stats = step(init_state(toy_params(), optimizer, cfg), rollout())
        results[scope] = (jax.tree.map(np.asarray, state.params), stats)
    for k in ("emb", "val"):
        np.testing.assert_allclose(results["global"][0]["policy"][k],
                                   results["minibatch"][0]["policy"][k], rtol=1e-5, atol=1e-7)
    for k in ("ppo/loss/policy", "ppo/loss/value", "ppo/returns/mean", "ppo/returns/var"):
        np.testing.assert_allclose(results["global"][1][k], results["minibatch"][1][k],
                                   rtol=1e-4, atol=1e-6)


def test_lhp_minimum_minibatch_for_whitening_is_enforced():
    cfg = config("minibatch", lr=0.0)  # 32 rows / 2 minibatches / 4 devices = 4 < 8
    with pytest.raises(ValueError, match=r"whiten_scope='minibatch'.*4 rows.*at least 8"):
        config_check.check_ppo(cfg.ppo, DEVICES)
    config_check.check_ppo(cfg.ppo, 2)  # 8 rows per device's minibatch
    cfg.ppo.whiten_scope = "global"
    config_check.check_ppo(cfg.ppo, DEVICES)  # one global whitening: no such limit

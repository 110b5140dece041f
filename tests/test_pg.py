"""RLOO, GRPO (and Dr. GRPO) and REINFORCE with a baseline (`rlhf_jax.algorithms.pg`): hand-worked advantages and
baselines, device-count invariance, and learning on the tiny problem of
`tests/test_ppo_train.py` through the PPO stage's trainer."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rlhf_jax.algorithms import pg
from rlhf_jax.algorithms.ppo import kl_k3, normalise_loss, policy_loss
from rlhf_jax.infra import parallel
from rlhf_jax.models import GPT2LMHeadModel, arch
from rlhf_jax.models.heads import PolicyWithValueHead, ValueModel
from rlhf_jax.stages.rollout import PPOModels
from rlhf_jax.stages.train_ppo import Member, PPOTrainer, init_state, query_batch
from tests.test_ppo_train import BATCH, Queries, gold_fraction, make_config, metrics_close
from tests.test_rollout import CONFIG, TARGET, V, random_params, target_fraction_rm


def test_rloo_advantages_by_hand():
    # One query, k = 4 returns 1, 2, 3, 6: A_i = R_i - mean(others).
    np.testing.assert_allclose(pg.rloo_advantages(jnp.asarray([1.0, 2, 3, 6]), 4),
                               [1 - 11 / 3, 2 - 10 / 3, 0.0, 4.0], rtol=1e-6)
    # Two queries of k = 2: each sample against its sibling.
    np.testing.assert_allclose(pg.rloo_advantages(jnp.asarray([1.0, 3, 5, 5]), 2),
                               [-2.0, 2.0, 0.0, 0.0])


def test_grpo_advantages_by_hand():
    # One query, k = 4 returns 1, 2, 3, 6: mean 3, Bessel std sqrt((4+1+0+9)/3).
    std = np.sqrt(14 / 3)
    np.testing.assert_allclose(pg.grpo_advantages(jnp.asarray([1.0, 2, 3, 6]), 4),
                               np.array([-2, -1, 0, 3]) / (std + 1e-4), rtol=1e-6)
    # Dr. GRPO: the mean only.
    np.testing.assert_allclose(pg.grpo_advantages(jnp.asarray([1.0, 2, 3, 6]), 4, False),
                               [-2, -1, 0, 3], rtol=1e-6)
    # Two queries of k = 2; a group of equal returns gets 0, not NaN.
    np.testing.assert_allclose(pg.grpo_advantages(jnp.asarray([1.0, 3, 5, 5]), 2),
                               [-1 / (np.sqrt(2) + 1e-4), 1 / (np.sqrt(2) + 1e-4), 0, 0],
                               rtol=1e-6)
    assert pg.loss_norm("grpo", "grpo") == "sequence"
    assert pg.loss_norm("grpo", "dr_grpo") == "constant"
    assert pg.loss_norm("rloo") == pg.loss_norm("ppo") == "token"


def test_loss_norms_and_k3_kl_by_hand():
    # Ratio 1: the per-token loss is -A. Row 0 has 3 real tokens at A = 2, row 1
    # one at A = -1 (losses -2, -2, -2 | 1).
    logp = jnp.zeros((2, 3))
    adv = jnp.asarray([[2.0, 2, 2], [-1, -1, -1]])
    mask = jnp.asarray([[1, 1, 1], [1, 0, 0]], jnp.float32)
    want = {"token": (-6 + 1) / 4, "sequence": (-2 + 1) / 2, "constant": (-6 + 1) / 6}
    for norm, value in want.items():
        loss, _ = policy_loss(logp, logp, adv, 0.2, mask, norm)
        assert float(loss) == pytest.approx(value), norm
    with pytest.raises(ValueError, match="loss norm 'x'"):
        normalise_loss(adv, mask, "x")
    # k3: exp(ref - logp) - (ref - logp) - 1; 0 where the policy equals the reference.
    lp = jnp.asarray([[-1.0, -2.0, -0.5]])
    ref = jnp.asarray([[-1.0, -1.0, -1.5]])
    np.testing.assert_allclose(kl_k3(lp, ref), [[0.0, np.e - 2, np.exp(-1) + 1 - 1]], rtol=1e-6)


def test_sequence_returns_and_baseline_by_hand():
    rewards = jnp.asarray([[0.5, -0.1, 2.0], [1.0, 1.0, 9.0]])
    mask = jnp.asarray([[1, 1, 1], [1, 1, 0]])
    np.testing.assert_allclose(pg.sequence_returns(rewards, mask), [2.4, 2.0], rtol=1e-6)
    assert float(pg.update_baseline(0.5, 1.5, 0.9)) == pytest.approx(0.6)


def _state(baseline=0.0):
    return pg.PGState(step=jnp.zeros((), jnp.int32), params={}, opt_state=(), kl=None,
                      rng=jax.random.key(0), baseline=jnp.asarray(baseline, jnp.float32))


def test_advantage_functions_broadcast_over_real_tokens():
    rewards = jnp.asarray([[1.0, 0.0], [2.0, 0.0], [0.0, 4.0], [3.0, 5.0]])
    mask = jnp.asarray([[1, 0], [1, 1], [1, 1], [1, 1]], jnp.float32)
    # Returns 1, 2, 4, 8; RLOO k = 2 -> -1, 1, -4, 4.
    rloo = pg.make_advantages("rloo", k=2, decay=0.9, axis_name=None)
    _, adv, ret, stats = rloo(_state(), None, rewards, mask)
    np.testing.assert_allclose(adv, [[-1, 0], [1, 1], [-4, -4], [4, 4]])
    np.testing.assert_allclose(ret, [[1, 0], [2, 2], [4, 4], [8, 8]])
    assert float(stats["pg/return_mean"]) == pytest.approx(3.75)
    # REINFORCE: baseline 2 -> advantages R - 2; the baseline moves to 0.9*2 + 0.1*3.75.
    reinforce = pg.make_advantages("reinforce", k=2, decay=0.9, axis_name=None)
    state, adv, _, stats = reinforce(_state(2.0), None, rewards, mask)
    np.testing.assert_allclose(adv, [[-1, 0], [0, 0], [2, 2], [6, 6]])
    assert float(state.baseline) == pytest.approx(2.175)
    assert float(stats["pg/baseline"]) == pytest.approx(2.0)
    assert pg.make_advantages("ppo", k=2, decay=0.9, axis_name=None) is None
    # GRPO k = 2: groups (1, 2), (4, 8) -> -+0.5/std, -+2/std; Dr. GRPO -+0.5, -+2.
    for variant, s1, s2 in (("grpo", np.sqrt(0.5) + 1e-4, np.sqrt(8) + 1e-4),
                            ("dr_grpo", 1.0, 1.0)):
        grpo = pg.make_advantages("grpo", k=2, decay=0.9, axis_name=None, grpo_variant=variant)
        _, adv, _, _ = grpo(_state(), None, rewards, mask)
        np.testing.assert_allclose(adv, [[-0.5 / s1, 0], [0.5 / s1] * 2, [-2 / s2] * 2,
                                         [2 / s2] * 2], rtol=1e-5)


@pytest.mark.parametrize("algo", ["rloo", "grpo", "reinforce"])
def test_advantages_on_4_devices_equal_one(algo):
    # Groups and batch means are taken over the gathered global batch.
    rng = np.random.default_rng(0)
    rewards = jnp.asarray(rng.normal(size=(16, 3)), jnp.float32)
    mask = jnp.asarray(rng.integers(0, 2, (16, 3)), jnp.float32)
    fn = pg.make_advantages(algo, k=4, decay=0.5, axis_name=None)
    want_state, want, _, _ = fn(_state(0.3), None, rewards, mask)
    dp = parallel.DataParallel("pmap", 4)
    fn4 = pg.make_advantages(algo, k=4, decay=0.5, axis_name=parallel.AXIS)
    step = dp.compile(lambda s, r, m: fn4(s, None, r, m)[:2],
                      (parallel.REP, parallel.SHARD, parallel.SHARD),
                      (parallel.REP, parallel.SHARD))
    state, adv = step(dp.replicate(_state(0.3)), dp.shard(rewards), dp.shard(mask))
    np.testing.assert_allclose(dp.unshard(adv), want, atol=1e-6)
    np.testing.assert_allclose(dp.unreplicate(state).baseline, want_state.baseline, atol=1e-6)


# Names of GRPO settings: the algorithm, its variant and where the KL goes.
_GRPO = {"grpo": ("grpo", "reward"), "grpo_kl_loss": ("grpo", "loss"),
         "dr_grpo": ("dr_grpo", "reward")}


def _pg_config(algo: str, updates: int):
    cfg = make_config(stiennon=True)
    if algo in _GRPO:
        algo, (cfg.ppo.grpo_variant, cfg.ppo.kl_in) = "grpo", _GRPO[algo]
    cfg.ppo.algo, cfg.ppo.rloo_k, cfg.ppo.baseline_decay = algo, 4, 0.8
    cfg.ppo.total_episodes = BATCH * updates
    cfg.ppo.noptepochs, cfg.ppo.nminibatches = 1, 1
    cfg.ppo.lr = 1e-2
    return cfg


@functools.lru_cache(maxsize=None)
def _trainer(algo, updates, mode="pmap", num_devices=1):
    cfg = _pg_config(algo, updates)
    rm, rm_params = target_fraction_rm(CONFIG, TARGET)
    lm = GPT2LMHeadModel(CONFIG)
    ref = {"transformer": random_params(PolicyWithValueHead(CONFIG), seed=0)["transformer"]}
    models = PPOModels(policy=lm, reference=lm, reward=rm, no_value=True)
    trainer = PPOTrainer(cfg, models, parallel.DataParallel(mode, num_devices))
    return cfg, trainer, ref, rm_params


def _train(algo, updates, **kw):
    cfg, trainer, ref, rm_params = _trainer(algo, updates, **kw)
    return trainer.train(params={"policy": ref}, ref_params=ref, rm_params=rm_params,
                         queries=Queries(), workdir=None, gold_fn=gold_fraction)


def test_rloo_repeats_each_query_k_times():
    cfg = _pg_config("rloo", 2)
    q, m = query_batch(cfg, Queries(), 0)
    assert q.shape[0] == BATCH
    np.testing.assert_array_equal(q[0:4], np.repeat(Queries().batch(0, BATCH // 4)[0][:1], 4, 0))
    assert isinstance(init_state({"policy": {}}, _trainer("rloo", 2)[1].optimizer, cfg),
                      pg.PGState)


@pytest.mark.parametrize("algo", ["rloo", "grpo_kl_loss", "reinforce"])
def test_no_value_model_learns_the_gold_reward(algo):
    _, summary = _train(algo, 16)
    h = summary["history"]
    first, late = h[0]["objective/gold_score"], np.mean([x["objective/gold_score"] for x in h[-3:]])
    print(f"{algo}: gold {first:.3f} -> {late:.3f}")
    assert first < 1.5 / V and late > 3 / V
    assert "ppo/val/var_explained" not in h[-1] and "ppo/loss/value" not in h[-1]
    assert ("ppo/loss/kl" in h[-1]) == algo.endswith("kl_loss")


# GRPO with the KL in the loss on a mesh: tests/test_decoder.py.
@pytest.mark.parametrize("algo,mode", [("reinforce", "pmap"), ("rloo", "mesh"),
                                       ("dr_grpo", "pmap")])
def test_no_value_model_on_4_devices_equals_one(algo, mode):
    _, one = _train(algo, 2)
    _, four = _train(algo, 2, mode=mode, num_devices=4)
    metrics_close(four["history"], one["history"], atol=1e-4)


def _members_equal_separate_runs(algo, models, dp, params, ref, rm_params):
    """Two members (seed and lr differ) trained as one vmapped program against
    each trained alone: the same metrics at every update, and different runs."""
    cfgs = []
    for seed, lr in ((0, 1e-2), (1, 3e-3)):
        cfg = _pg_config(algo, 2)
        cfg.seed, cfg.ppo.lr = seed, lr
        cfgs.append(cfg)
    separate = [PPOTrainer(cfg, models, dp).train(
        params=params, ref_params=ref, rm_params=rm_params, queries=Queries(), workdir=None,
        gold_fn=gold_fraction) for cfg in cfgs]
    group = PPOTrainer(cfgs, models, dp).train_members(
        [Member(name=f"m{i}", cfg=cfg, params=params, ref_params=ref, rm_params=rm_params,
                queries=Queries(), workdir=None, gold_fn=gold_fraction)
         for i, cfg in enumerate(cfgs)])
    for (_, s_sep), (_, s_grp) in zip(separate, group):
        metrics_close(s_grp["history"], s_sep["history"], 2e-5)
    key = "objective/score"
    assert group[0][1]["history"][-1][key] != group[1][1]["history"][-1][key]


@pytest.mark.parametrize("algo", ["rloo", "reinforce"])
def test_members_in_one_program_equal_separate_runs(algo):
    # Sweeps run seeds and numeric hyperparameters of one setting as members of
    # one vmapped program (`rlhf_jax.members`): the same advantages and queries.
    _, trainer, ref, rm_params = _trainer(algo, 2)
    _members_equal_separate_runs(algo, trainer.models, trainer.dp, {"policy": ref}, ref,
                                 rm_params)


@pytest.mark.parametrize("algo,family", [("ppo", "llama"), ("rloo", "qwen2"),
                                         ("reinforce", "qwen3")])
def test_members_and_algorithms_on_a_decoder_family(algo, family):
    # The same on the Llama/Qwen trunk: PPO with a separate value model, RLOO
    # and REINFORCE, trained alone and as a sweep's members.
    config = arch.config_for(family, vocab_size=V, n_positions=CONFIG.n_positions, n_embd=16,
                             n_layer=1, n_head=2)
    lm = arch.causal_lm(config)
    ref = random_params(lm, seed=0)
    rm, rm_params = target_fraction_rm(CONFIG, TARGET)
    params = {"policy": ref}
    if algo == "ppo":
        models = PPOModels(policy=lm, reference=lm, value=ValueModel(config), reward=rm)
        params["value"] = random_params(ValueModel(config), seed=1)
    else:
        models = PPOModels(policy=lm, reference=lm, reward=rm, no_value=True)
    _members_equal_separate_runs(algo, models, parallel.DataParallel("pmap", 1), params, ref,
                                 rm_params)

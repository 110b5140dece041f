"""The PPO stage end to end (`rlhf_jax.stages.train_ppo.PPOTrainer`) on a tiny problem.

A 1-layer GPT-2 over 16 tokens learns to emit a target token. The reward is
either the gold "fraction of TARGET in the response" (`ppo.reward_source=
"gold"`) or the hand-set `RewardModel` of `tests/test_rollout.py` that scores
the fraction of TARGET in query + response (`"rm"`). Two configs, each compiled
once per device layout (compilation dominates the runtime):

- ZIEGLER: shared policy+value model, RM reward, fixed-length responses,
  reward whitening, adaptive KL. Learning, retracing, exact resume, Adam styles.
- STIENNON: separate value network initialised from the RM, EOS stops and
  masks responses and the score is paid at EOS, gold reward, adaptive KL.
  Learning, masks, and device-count invariance (pmap/mesh x 1/4 devices).
"""

import os

import chex
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from rlhf_jax import config_check
from rlhf_jax.infra import parallel
from rlhf_jax.models import GPT2LMHeadModel
from rlhf_jax.models.heads import PolicyWithValueHead, ValueModel, value_params_from_reward
from rlhf_jax.stages import train_ppo
from rlhf_jax.stages.rollout import PPOModels
from rlhf_jax.stages.train_ppo import PPOTrainer, gold_scores, init_state, stack_members
from tests.test_rollout import (CONFIG, PAD, TARGET, R, V, random_params, random_queries,
                                target_fraction_rm)

EOS = 5
BATCH = 64
UPDATES = 24
# Run-to-run noise in these metrics is timing, not numerics.
TIMING_KEYS = ("elapsed/fps",)


def make_config(*, stiennon: bool, adam: str = "tf") -> ml_collections.ConfigDict:
    """The PPOTrainer config of one of the two setups (see the module docstring)."""
    return ml_collections.ConfigDict(dict(
        seed=0,
        task=dict(response_length=R, temperature=0.7, pad_token=PAD, truncate_token=None,
                  truncate_after=0, penalty_reward_value=None,
                  eos_token=EOS if stiennon else None, stop_at_eos=stiennon),
        ppo=dict(batch_size=BATCH, nminibatches=2, noptepochs=4, lr=3e-3, adam=adam,
                 adam_eps=1e-5, cliprange=0.2, cliprange_value=0.2, vf_coef=0.1, gamma=1.0,
                 lam=0.95, whiten_rewards=not stiennon, whiten_scope="global",
                 total_episodes=BATCH * UPDATES, reward_source="gold" if stiennon else "rm",
                 log_every=1, checkpoint_every=8, num_logged_samples=2, algo="ppo",
                 token_reward_coef=0.0),
        kl=dict(coef=0.05, adaptive=True, target=2.0, horizon=640),
    ))


class Queries:
    """Deterministic query batches (`QuerySource`): batch i depends only on i."""

    def batch(self, index, batch_size):
        return random_queries(index, batch_size)


def gold_fraction(query_BxQ, query_mask_BxQ, processed_BxR):
    """Gold reward: the fraction of TARGET among the R response slots (pads count as misses)."""
    return (processed_BxR == TARGET).mean(axis=1).astype(np.float32)


class Setup:
    """Models, initial params and a compiled trainer for one config and device layout."""

    def __init__(self, *, stiennon: bool, mode: str = "pmap", num_devices: int = 1,
                 adam: str = "tf"):
        self.cfg = make_config(stiennon=stiennon, adam=adam)
        rm, self.rm_params = target_fraction_rm(CONFIG, TARGET)
        policy_params = random_params(PolicyWithValueHead(CONFIG), seed=0)
        self.ref_params = {"transformer": policy_params["transformer"]}
        if stiennon:
            lm = GPT2LMHeadModel(CONFIG)
            self.models = PPOModels(policy=lm, reference=lm, value=ValueModel(CONFIG), reward=rm)
            self.params = {"policy": self.ref_params,
                           "value": value_params_from_reward(self.rm_params)}
        else:
            self.models = PPOModels(policy=PolicyWithValueHead(CONFIG),
                                    reference=GPT2LMHeadModel(CONFIG), reward=rm)
            self.params = {"policy": policy_params}
        self.dp = parallel.DataParallel(mode, num_devices)
        self.trainer = PPOTrainer(self.cfg, self.models, self.dp)

    def train(self, workdir=None, stop_after=None):
        return self.trainer.train(params=self.params, ref_params=self.ref_params,
                                  rm_params=self.rm_params, queries=Queries(), workdir=workdir,
                                  gold_fn=gold_fraction, stop_after=stop_after)

    def fresh_state(self, trainer=None):
        """The initial PPOState of a group of one, replicated (a new copy each call:
        the update donates it)."""
        trainer = trainer or self.trainer
        return self.dp.replicate(stack_members([init_state(self.params, trainer.optimizer,
                                                           trainer.cfg)]))

    def first_rollout(self):
        """(replicated initial state, the first update's rollout) as `train` would make
        them, in a group of one's layout (`[B, 1, ...]`)."""
        dp, state = self.dp, self.fresh_state()
        q_BxQ, qm_BxQ = Queries().batch(0, BATCH)
        ro, processed = self.trainer.rollout(
            state, dp.replicate(stack_members([self.ref_params])),
            dp.replicate(stack_members([self.rm_params or {}])), q_BxQ[:, None], qm_BxQ[:, None])
        if not self.trainer.use_rm:  # the gold is the reward
            _, scores_B = gold_scores(self.trainer.task, gold_fraction, q_BxQ, qm_BxQ,
                                      np.asarray(dp.unshard(processed))[:, 0],
                                      np.asarray(dp.unshard(ro.response_BxR))[:, 0])
            ro = ro.replace(scores_B=dp.shard(scores_B[:, None]))
        return state, ro


def host(tree):
    return jax.tree.map(np.asarray, tree)


def metrics_close(history_a, history_b, atol):
    assert [h["step"] for h in history_a] == [h["step"] for h in history_b]
    for a, b in zip(history_a, history_b):
        assert a.keys() == b.keys()
        for k in a:
            if k not in TIMING_KEYS:
                np.testing.assert_allclose(a[k], b[k], atol=atol, rtol=0,
                                           err_msg=f"step {a['step']} {k}")


def params_close(a, b, atol):
    chex.assert_trees_all_close(host(a), host(b), atol=atol, rtol=0)


# ---------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def ziegler():
    """The ZIEGLER trainer (pmap, 1 device), built with trace counters on its two steps."""
    counts = {"update": 0, "rollout": 0}

    def counting(factory, name):
        def make(*args, **kwargs):
            fn = factory(*args, **kwargs)

            def traced(*a):
                counts[name] += 1  # Python side effect: runs once per trace
                return fn(*a)

            return traced

        return make

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(train_ppo, "make_update_step",
                   counting(train_ppo.make_update_step, "update"))
        mp.setattr(train_ppo, "make_rollout", counting(train_ppo.make_rollout, "rollout"))
        setup = Setup(stiennon=False)
    setup.trace_counts = counts
    return setup


@pytest.fixture(scope="module")
def ziegler_run(ziegler, tmp_path_factory):
    """A full uninterrupted ZIEGLER run with checkpoints: (params, summary, workdir)."""
    workdir = str(tmp_path_factory.mktemp("ziegler_full"))
    params, summary = ziegler.train(workdir=workdir)
    return params, summary, workdir


@pytest.fixture(scope="module")
def stiennon():
    return Setup(stiennon=True)


@pytest.fixture(scope="module")
def stiennon_run(stiennon):
    return stiennon.train()


def check_learning_and_kl(history, cfg, score_key, start_below, end_above):
    """Reward up, KL near target, and beta following the controller's law at every update."""
    first, last = history[0], history[-1]
    assert [h["step"] for h in history] == list(range(1, UPDATES + 1))
    assert first[score_key] < start_below
    late = np.mean([h[score_key] for h in history[-4:]])
    assert late > end_above, late
    # KL is 0 at the first rollout (policy == reference), then held near target.
    assert first["objective/kl"] == pytest.approx(0.0, abs=1e-5)
    assert cfg.kl.target / 2 < last["objective/kl"] < cfg.kl.target * 2
    # beta_{t+1} = beta_t * (1 + clip(kl_t / target - 1, +-0.2) * batch / horizon):
    # down while KL < target, up while above.
    for prev, nxt in zip(history[:-1], history[1:]):
        err = np.clip(prev["objective/kl"] / cfg.kl.target - 1, -0.2, 0.2)
        expected = prev["objective/kl_coef"] * (1 + err * cfg.ppo.batch_size / cfg.kl.horizon)
        assert nxt["objective/kl_coef"] == pytest.approx(expected, rel=1e-5)
    coefs = [h["objective/kl_coef"] for h in history]
    # KL was on both sides of the target during the run, so beta went both ways.
    assert any(b < a for a, b in zip(coefs, coefs[1:]))
    assert any(b > a for a, b in zip(coefs, coefs[1:]))
    print(f"{score_key}: {first[score_key]:.3f} -> {late:.3f} (last 4); objective/kl: final "
          f"{last['objective/kl']:.2f}, max {max(h['objective/kl'] for h in history):.2f} "
          f"(target {cfg.kl.target}); kl_coef {min(coefs):.4f}..{max(coefs):.4f}, final "
          f"{coefs[-1]:.4f}")


# ---------------------------------------------------------------- learning


def test_rm_reward_rises_with_kl_held_near_target(ziegler_run, ziegler):
    _, summary, _ = ziegler_run
    history = summary["history"]
    # RM score = TARGET fraction of query + response (~1/16 at init); gold = of the response.
    check_learning_and_kl(history, ziegler.cfg, "objective/score", start_below=1.5 / V,
                          end_above=2.5 / V)
    assert np.mean([h["objective/gold_score"] for h in history[-4:]]) > 3 / V
    assert summary["updates"] == UPDATES and not summary["preempted"]


def test_gold_reward_rises_with_kl_held_near_target(stiennon_run, stiennon):
    _, summary = stiennon_run
    history = summary["history"]
    check_learning_and_kl(history, stiennon.cfg, "objective/gold_score", start_below=1.5 / V,
                          end_above=3 / V)
    # reward_source="gold": the PPO score is the gold score itself.
    for h in history:
        assert h["objective/score"] == pytest.approx(h["objective/gold_score"], abs=1e-6)
    # The separate value network learns: it explains most of the return variance.
    assert history[-1]["ppo/val/var_explained"] > 0.5


# ---------------------------------------------------------------- resume and retracing


def test_exact_resume_after_a_kill(ziegler, ziegler_run, tmp_path, monkeypatch):
    full_params, full, full_dir = ziegler_run
    workdir = str(tmp_path)
    # "Killed" after 10 updates (a checkpoint at 8 and one on stopping at 10) ...
    _, part1 = ziegler.train(workdir=workdir, stop_after=10)
    assert part1["updates"] == 10 and part1["preempted"]
    # ... relaunched with the same command: resumes at 10 and finishes.
    params, part2 = ziegler.train(workdir=workdir)
    assert part2["updates"] == UPDATES
    assert [h["step"] for h in part2["history"]] == list(range(11, UPDATES + 1))
    params_close(params, full_params, atol=1e-6)
    metrics_close(part1["history"] + part2["history"], full["history"], atol=1e-6)

    # A finished workdir relaunched does nothing: no rollout, no update, no new checkpoint.
    steps_before = sorted(os.listdir(os.path.join(full_dir, "checkpoints", "ppo")))

    def refuse(*args, **kwargs):
        raise AssertionError("a finished PPO stage did new work")

    monkeypatch.setattr(ziegler.trainer, "rollout_fn", refuse)
    monkeypatch.setattr(ziegler.trainer, "update_fn", refuse)
    params_again, again = ziegler.train(workdir=full_dir)
    # The last row comes back from the finished checkpoint: the stage's summary after a
    # kill between that save and the stage's done marker (the export).
    assert again == {"updates": UPDATES, "resumed": True, "history": full["history"][-1:]}
    params_close(params_again, full_params, atol=0)
    assert sorted(os.listdir(os.path.join(full_dir, "checkpoints", "ppo"))) == steps_before


def test_no_retrace_after_the_first_update(ziegler, ziegler_run, tmp_path):
    # The full run (24 updates), the resume test's runs, and here 3 more updates
    # across a restart from a checkpoint: each step was traced exactly once.
    ziegler.train(workdir=str(tmp_path), stop_after=2)
    _, summary = ziegler.train(workdir=str(tmp_path), stop_after=1)
    assert summary["updates"] == 3
    assert ziegler.trace_counts == {"update": 1, "rollout": 1}


# ---------------------------------------------------------------- device count


@pytest.fixture(scope="module")
def stiennon_3_updates(stiennon):
    return stiennon.train(stop_after=3)


@pytest.mark.parametrize("mode,num_devices", [("pmap", 4), ("mesh", 1), ("mesh", 4)])
def test_same_result_on_1_or_4_devices_pmap_or_mesh(stiennon_3_updates, mode, num_devices):
    # Stiennon's EOS masks give shards unequal token counts: the hardest case for
    # device-count invariance (per-row sampling keys, one global permutation,
    # global whitening, token-weighted means across shards).
    ref_params, ref = stiennon_3_updates
    params, summary = Setup(stiennon=True, mode=mode, num_devices=num_devices).train(stop_after=3)
    assert len(summary["history"]) == 3
    metrics_close(summary["history"], ref["history"], atol=1e-4)
    params_close(params, ref_params, atol=1e-4)


# ---------------------------------------------------------------- masks, value models


def test_stiennon_masks_are_respected(stiennon):
    setup = stiennon
    _, ro = setup.first_rollout()
    mask = np.asarray(ro.response_mask_BxR)
    assert (mask == 0).any() and (mask == 1).all(axis=-1).any()  # some rows stop early
    # The separate value network starts as the RM read at every position.
    assert np.ptp(np.asarray(ro.values_BxR)[mask > 0]) > 0.1

    def garble(x, offset):
        return jnp.where(ro.response_mask_BxR > 0, x, x + offset)

    rng = np.random.default_rng(0)
    junk_tokens = jnp.asarray(rng.integers(0, V, mask.shape), jnp.int32)
    garbled = ro.replace(logprobs_BxR=garble(ro.logprobs_BxR, -3.0),
                         ref_logprobs_BxR=garble(ro.ref_logprobs_BxR, 2.0),
                         values_BxR=garble(ro.values_BxR, 50.0),
                         response_BxR=jnp.where(ro.response_mask_BxR > 0, ro.response_BxR,
                                                junk_tokens))
    state_a, stats_a = setup.trainer.update_fn(setup.fresh_state(), ro, None)
    state_b, stats_b = setup.trainer.update_fn(setup.fresh_state(), garbled, None)
    params_close(state_b.params, state_a.params, atol=1e-6)
    chex.assert_trees_all_close(host(stats_b), host(stats_a), atol=1e-6)
    # The same change on the valid tokens does move the update (the check has teeth).
    shifted = ro.replace(logprobs_BxR=ro.logprobs_BxR - 0.5)
    state_c, _ = setup.trainer.update_fn(setup.fresh_state(), shifted, None)
    diff = jax.tree.map(lambda a, c: float(np.max(np.abs(np.asarray(a) - np.asarray(c)))),
                        state_a.params, state_c.params)
    assert max(jax.tree.leaves(diff)) > 1e-4


# ---------------------------------------------------------------- optimizer style


def test_tf_and_torch_adam_give_different_first_update_approxkl(ziegler):
    setup = ziegler
    state, ro = setup.first_rollout()
    _, stats_tf = setup.trainer.update_fn(state, ro, None)
    torch_cfg = make_config(stiennon=False, adam="torch")
    torch_trainer = PPOTrainer(torch_cfg, setup.models, setup.dp)
    _, stats_torch = torch_trainer.update_fn(setup.fresh_state(torch_trainer), ro, None)
    kl_tf = float(setup.dp.unreplicate(stats_tf)["ppo/policy/approxkl"][0])
    kl_torch = float(setup.dp.unreplicate(stats_torch)["ppo/policy/approxkl"][0])
    print(f"first-update approxkl: tf {kl_tf:.3e}, torch {kl_torch:.3e}, "
          f"ratio {kl_torch / kl_tf:.2f}")
    # Same rollout, same initial params: only the Adam style differs. TF-style
    # Adam's eps acts ~31.6x larger on step 1, so its steps (and approxkl) are smaller.
    assert kl_torch > 1.01 * kl_tf


# ---------------------------------------------------------------- config validation


@pytest.mark.parametrize("field,value,devices,message", [
    ("batch_size", 30, 4, r"ppo\.batch_size=30 is not divisible by the device count 4"),
    ("nminibatches", 3, 4, r"ppo\.batch_size per device \(16\) is not divisible by "
                           r"ppo\.nminibatches=3"),
    ("adam", "sgd", 1, r"ppo\.adam='sgd'"),
    ("total_episodes", 32, 1, r"ppo\.total_episodes=32 is smaller than ppo\.batch_size=64"),
    ("reward_source", "human", 1, r"ppo\.reward_source='human'"),
])
def test_validate_names_the_field(field, value, devices, message):
    cfg = make_config(stiennon=False)
    cfg.ppo[field] = value
    with pytest.raises(ValueError, match=message):
        config_check.check_ppo(cfg.ppo, devices)


def test_rm_reward_without_a_reward_model_is_refused():
    cfg = make_config(stiennon=False)
    models = PPOModels(policy=PolicyWithValueHead(CONFIG), reference=GPT2LMHeadModel(CONFIG))
    with pytest.raises(ValueError, match=r"reward_source='rm'"):
        PPOTrainer(cfg, models, parallel.DataParallel("pmap", 1))

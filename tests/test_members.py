"""PPO members vmapped in one program (`rlhf_jax.members`) equal separate runs.

Three members of the ZIEGLER setup of `tests/test_ppo_train.py` (shared
policy+value model, RM reward, adaptive KL), differing in seed, initial KL
coefficient, learning rate and clip range, each with its own query stream,
train as one `PPOTrainer` (`train_members`); each must match its own `PPOTrainer` run
(metrics at every update and final params, float tolerance). A group
interrupted after two updates, with one member's newest checkpoint torn away,
resumes to the same result, and a member's checkpoint resumes as a separate run.
"""

import os
import shutil

import pytest

from rlhf_jax import members as members_lib
from rlhf_jax.stages.train_ppo import Member, PPOTrainer
from tests.test_ppo_train import (BATCH, Setup, gold_fraction, make_config, metrics_close,
                                  params_close)
from tests.test_rollout import random_queries

UPDATES = 4
# (seed, kl.coef, ppo.lr, ppo.cliprange) per member
MEMBERS = ((0, 0.05, 3e-3, 0.2), (1, 0.2, 1e-3, 0.2), (2, 0.05, 3e-3, 0.1))
ATOL = 2e-5


class MemberQueries:
    """Member i's own deterministic query stream."""

    def __init__(self, i):
        self.i = i

    def batch(self, index, batch_size):
        return random_queries(1000 * self.i + index, batch_size)


def member_configs():
    cfgs = []
    for seed, coef, lr, clip in MEMBERS:
        cfg = make_config(stiennon=False)
        cfg.seed, cfg.kl.coef, cfg.ppo.lr, cfg.ppo.cliprange = seed, coef, lr, clip
        cfg.ppo.total_episodes, cfg.ppo.checkpoint_every = BATCH * UPDATES, 1
        cfgs.append(cfg)
    return cfgs


@pytest.fixture(scope="module")
def setup():
    return Setup(stiennon=False)


def group_members(setup, cfgs, workdirs=None):
    return [Member(name=f"m{i}", cfg=cfg, params=setup.params,
                               ref_params=setup.ref_params, rm_params=setup.rm_params,
                               queries=MemberQueries(i), gold_fn=gold_fraction,
                               workdir=None if workdirs is None else workdirs[i])
            for i, cfg in enumerate(cfgs)]


def separate_run(setup, cfg, i, workdir=None):
    trainer = PPOTrainer(cfg, setup.models, setup.dp)
    return trainer.train(params=setup.params, ref_params=setup.ref_params,
                         rm_params=setup.rm_params, queries=MemberQueries(i), workdir=workdir,
                         gold_fn=gold_fraction)


@pytest.fixture(scope="module")
def separate(setup):
    return [separate_run(setup, cfg, i) for i, cfg in enumerate(member_configs())]


@pytest.fixture(scope="module")
def grouped(setup):
    cfgs = member_configs()
    return PPOTrainer(cfgs, setup.models, setup.dp).train_members(
        group_members(setup, cfgs))


def test_members_equal_separate_runs(separate, grouped):
    for i, ((p_sep, s_sep), (p_grp, s_grp)) in enumerate(zip(separate, grouped)):
        assert len(s_grp["history"]) == UPDATES
        metrics_close(s_grp["history"], s_sep["history"], ATOL)
        params_close(p_grp, p_sep, ATOL)
    # The members really differ (their own seeds, coefficients and queries).
    for key in ("objective/kl", "objective/score", "objective/kl_coef"):
        finals = [s["history"][-1][key] for _, s in grouped]
        assert len({round(f, 6) for f in finals}) >= 2, (key, finals)
    assert len({round(s["history"][-1]["objective/kl"], 6) for _, s in grouped}) == 3


def test_group_resumes_after_a_kill_and_a_torn_member_checkpoint(setup, separate, tmp_path):
    cfgs = member_configs()
    workdirs = [str(tmp_path / f"m{i}") for i in range(len(cfgs))]
    trainer = PPOTrainer(cfgs, setup.models, setup.dp)
    trainer.train_members(group_members(setup, cfgs, workdirs), stop_after=2)
    # A kill between two members' saves: member 2 lacks the newest step.
    ckpt = os.path.join(workdirs[2], "checkpoints", "ppo")
    assert sorted(os.listdir(ckpt)) == ["1", "2"]
    shutil.rmtree(os.path.join(ckpt, "2"))
    resumed = trainer.train_members(group_members(setup, cfgs, workdirs))
    for (p_sep, s_sep), (p_res, s_res) in zip(separate, resumed):
        # The resumed call logs from its restart point (step 2) on.
        metrics_close(s_res["history"], s_sep["history"][1:], ATOL)
        params_close(p_res, p_sep, ATOL)


def test_member_checkpoint_resumes_as_a_separate_run(setup, separate, tmp_path):
    cfgs = member_configs()
    workdirs = [str(tmp_path / f"m{i}") for i in range(len(cfgs))]
    trainer = PPOTrainer(cfgs, setup.models, setup.dp)
    trainer.train_members(group_members(setup, cfgs, workdirs), stop_after=2)
    params, summary = separate_run(setup, cfgs[1], 1, workdir=workdirs[1])
    metrics_close(summary["history"], separate[1][1]["history"][2:], ATOL)
    params_close(params, separate[1][0], ATOL)


def test_only_member_fields_may_differ():
    cfgs = member_configs()
    cfgs[1].ppo.noptepochs = 2
    with pytest.raises(ValueError, match=r"members 0 and 1 differ in ppo.noptepochs \(4 vs 2\)"):
        members_lib.check_members(cfgs)
    a, b = member_configs()[:2]
    assert members_lib.shared_config_key(a) == members_lib.shared_config_key(b)
    b.ppo.batch_size = 32
    assert members_lib.shared_config_key(a) != members_lib.shared_config_key(b)

"""Reward models trained as members of one vmapped program equal separate runs.

Three members of `tests/test_reward.py`'s token-count world, each with its
own labels, key (data order, step keys), learning rate and normalisation
samples (gain and bias before and after training), held-out evaluation on its
own labels, train through `supervised.run_members`; each must match
its own `reward_train.train_reward_model` run (params, train and held-out
metrics, normalisation stats). A group interrupted after 3 steps with one
member's newest checkpoint torn away resumes to the same result, and one
member's checkpoint resumes as a separate run.
"""

import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rlhf_jax.infra.metrics import read_metrics
from rlhf_jax.infra.parallel import DataParallel
from rlhf_jax.stages import reward, reward_train, supervised
from rlhf_jax.models.heads import RewardModel
from tests.test_reward import CONFIG, Q, R, V, assert_trees_close, make_cfg, make_labels

NUM_TRAIN, NUM_VAL, BATCH = 48, 20, 8  # 6 steps per epoch
# (key, labels seed, lr) per member
MEMBERS = ((0, 1, 1e-3), (1, 2, 1e-3), (2, 3, 3e-3))
ATOL = 2e-5


@pytest.fixture(scope="module")
def rm_init():
    model = RewardModel(CONFIG)
    params = jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, Q + R), jnp.int32))["params"]
    return model, params


def member_cfg(lr):
    cfg = make_cfg("pairwise", NUM_TRAIN, NUM_VAL, batch_size=BATCH, epochs=2, lr=lr,
                   normalize=True, normalize_samples=32)
    cfg.reward.log_every, cfg.reward.eval_every, cfg.reward.checkpoint_every = 2, 4, 1
    return cfg


def member_inputs(i):
    key, label_seed, lr = MEMBERS[i]
    labels = make_labels(NUM_TRAIN + NUM_VAL, 2, label_seed, "pairwise")
    train = labels.subset(np.arange(NUM_TRAIN))
    val = labels.subset(np.arange(NUM_TRAIN, NUM_TRAIN + NUM_VAL))
    rng = np.random.default_rng(100 + i)
    queries = rng.integers(8, V, size=(32, Q)).astype(np.int32)
    responses = rng.integers(8, V, size=(32, R)).astype(np.int32)
    normalizer = reward.fixed_reference_sampler(queries, np.ones_like(queries), responses,
                                                np.ones_like(responses))
    return dict(cfg=member_cfg(lr), train=train, val=val, normalizer=normalizer,
                rng=jax.random.key(key), lr=lr)


def separate_run(rm_init, i, workdir=None, **kw):
    model, params = rm_init
    m = member_inputs(i)
    return reward_train.train_reward_model(
        m["cfg"], rm_model=model, rm_params=params, train=m["train"], val=m["val"],
        dp=DataParallel("pmap"), rng=m["rng"], normalizer=m["normalizer"], workdir=workdir, **kw)


def grouped_run(rm_init, workdirs=None, **kw):
    model, params = rm_init
    runs, loops = [], []
    for i in range(len(MEMBERS)):
        m = member_inputs(i)
        p = reward_train.prepare(m["cfg"], rm_model=model, train=m["train"], val=m["val"],
                                 dp=DataParallel("pmap"), normalizer=m["normalizer"])
        loops.append(p)
        runs.append(supervised.MemberRun(
            name=f"m{i}", params=params, train_data=p.train_data, val_data=p.val_data,
            rng=m["rng"], workdir=None if workdirs is None else workdirs[i],
            init_fn=p.init_fn, finalize_fn=p.finalize_fn, lr=m["lr"]))
    return supervised.run_members(
        loops[0].loop, runs, loss_fn=loops[0].loss_fn, eval_fn=loops[0].eval_fn,
        dp=DataParallel("pmap"), num_train_field="labels.num_train", **kw)


@pytest.fixture(scope="module")
def separate(rm_init):
    return [separate_run(rm_init, i) for i in range(len(MEMBERS))]


@pytest.fixture(scope="module")
def grouped(rm_init):
    return grouped_run(rm_init)


def summaries_close(a, b):
    for key in ("train", "initial_val", "final_val", "init", "finalize"):
        assert a[key].keys() == b[key].keys(), key
        for name in a[key]:
            assert a[key][name] == pytest.approx(b[key][name], abs=ATOL, rel=1e-4), (key, name)
    assert (a["steps"], a["total_steps"], a["stopped_early"]) == (
        b["steps"], b["total_steps"], b["stopped_early"])


def test_members_equal_separate_runs(separate, grouped, rm_init):
    for (p_sep, s_sep), (p_grp, s_grp) in zip(separate, grouped):
        assert_trees_close(p_grp, p_sep, atol=ATOL)
        summaries_close(s_grp, s_sep)
        assert s_grp["steps"] == 12
    # Not vacuous: training moved every member, and the members differ.
    _, params = rm_init
    heads = [np.asarray(p["reward_head"]["kernel"]) for p, _ in grouped]
    for h in heads:
        assert np.abs(h - np.asarray(params["reward_head"]["kernel"])).max() > 1e-4
    assert np.abs(heads[0] - heads[1]).max() > 1e-4 and np.abs(heads[0] - heads[2]).max() > 1e-4
    gains = {round(float(p["reward_gain"]), 5) for p, _ in grouped}
    assert len(gains) == 3


def test_group_logs_each_member_like_its_own_run(rm_init, separate, tmp_path):
    workdirs = [str(tmp_path / f"m{i}") for i in range(len(MEMBERS))]
    grouped_run(rm_init, workdirs)
    sep_dir = str(tmp_path / "separate1")
    separate_run(rm_init, 1, workdir=sep_dir)
    rows_g, rows_s = read_metrics(workdirs[1], "reward"), read_metrics(sep_dir, "reward")
    assert [r["step"] for r in rows_g] == [r["step"] for r in rows_s]
    for g, s in zip(rows_g, rows_s):
        assert g.keys() == s.keys()
        for k in g:
            if isinstance(s[k], float) and not k.endswith("steps_per_s"):
                assert g[k] == pytest.approx(s[k], abs=ATOL, rel=1e-4), k
            elif not isinstance(s[k], float):
                assert g[k] == s[k], k
    assert {"reward/lr", "reward/val_accuracy", "reward/loss"} <= set().union(*rows_g)


def test_group_resumes_after_a_kill_and_a_torn_member_checkpoint(rm_init, separate, tmp_path):
    workdirs = [str(tmp_path / f"m{i}") for i in range(len(MEMBERS))]
    stopped = grouped_run(rm_init, workdirs, stop_after=3)
    assert all(s["stopped_early"] and s["steps"] == 3 for _, s in stopped)
    # A kill between two members' saves: member 2 lacks the newest step.
    ckpt = os.path.join(workdirs[2], "checkpoints", "reward")
    assert sorted(os.listdir(ckpt), key=int)[-1] == "3"
    shutil.rmtree(os.path.join(ckpt, "3"))
    resumed = grouped_run(rm_init, workdirs)
    for (p_sep, s_sep), (p_res, s_res) in zip(separate, resumed):
        assert_trees_close(p_res, p_sep, atol=ATOL)
        assert s_res["final_val"] == pytest.approx(s_sep["final_val"], abs=ATOL)
    # Finished: a relaunch returns the checkpointed result without training.
    again = grouped_run(rm_init, workdirs)
    for (p_res, _), (p_again, _) in zip(resumed, again):
        assert_trees_close(p_again, p_res, atol=0)


def test_member_checkpoint_resumes_as_a_separate_run(rm_init, separate, tmp_path):
    workdirs = [str(tmp_path / f"m{i}") for i in range(len(MEMBERS))]
    grouped_run(rm_init, workdirs, stop_after=4)
    params, summary = separate_run(rm_init, 2, workdir=workdirs[2])
    assert_trees_close(params, separate[2][0], atol=ATOL)
    assert summary["final_val"] == pytest.approx(separate[2][1]["final_val"], abs=ATOL)


def test_members_with_other_data_shapes_are_refused(rm_init):
    model, params = rm_init
    runs = []
    for i, n in enumerate((NUM_TRAIN, NUM_TRAIN - BATCH)):
        m = member_inputs(i)
        p = reward_train.prepare(m["cfg"], rm_model=model, train=m["train"], val=m["val"],
                                 dp=DataParallel("pmap"), normalizer=m["normalizer"])
        data = {k: v[:n] for k, v in p.train_data.items()}
        runs.append(supervised.MemberRun(name=f"m{i}", params=params, train_data=data,
                                                 rng=m["rng"]))
    with pytest.raises(ValueError, match=r"reward members 'm0' and 'm1': their training data "
                                         r"differ"):
        supervised.run_members(p.loop, runs, loss_fn=p.loss_fn,
                                       dp=DataParallel("pmap"), num_train_field="labels.num_train")


def test_pipeline_reward_stage_as_members_equals_separate_runs(tmp_path):
    """The offline default's reward stage (runlocal size, its own labels per seed,
    normalisation on policy samples) for two seeds with two learning rates."""
    from rlhf_jax import members as members_lib, pipeline
    from tests.test_pipeline import TIMING, shrunk_config

    cfgs = []
    for seed, lr_scale in ((0, 1.0), (1, 2.0)):
        cfg = shrunk_config()
        with cfg.unlocked():
            cfg.stages, cfg.seed = "labels,reward", seed
            cfg.reward.lr *= lr_scale
            cfg.log.tensorboard = False
        cfgs.append(cfg)
    group = [str(tmp_path / "group" / f"s{i}") for i in range(2)]
    alone = [str(tmp_path / "alone" / f"s{i}") for i in range(2)]
    for cfg, d in zip(cfgs, group):
        pipeline.run(cfg, d, until="reward")
    done = members_lib.run_reward_members(cfgs, group)
    for cfg, d in zip(cfgs, alone):
        pipeline.run(cfg, d)
    for i in range(2):
        assert done[i]["members"] == 2
        for d in (group[i], alone[i]):
            assert os.path.exists(os.path.join(d, "models", "reward"))
        rows = [read_metrics(d, stage="reward") for d in (group[i], alone[i])]
        assert len(rows[0]) == len(rows[1]) > 0
        for got, want in zip(*rows):
            assert got.keys() == want.keys()
            for k, v in want.items():
                if isinstance(v, float) and not TIMING.search(k):
                    assert got[k] == pytest.approx(v, rel=1e-4, abs=ATOL), (i, k)
    # The seeds' labels and reward models differ: the members are not one run twice.
    accs = [read_metrics(d, stage="reward")[-1] for d in group]
    assert accs[0] != accs[1]
    # A relaunch of the group finds both finished and trains nothing.
    assert members_lib.run_reward_members(cfgs, group) == done
